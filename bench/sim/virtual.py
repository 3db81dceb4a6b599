"""Virtual-time runs of the engine model: the served simulator's admission, chunked prefill, batch cap, KV
reservation and prefix cache (bench/sim/engine.py), stepped on a virtual clock instead of sleeping.

A load point that takes a minute on the served simulator takes milliseconds here, with the same engine code,
so a profile can be held against published measurements (`trilemma sim --validate`), fitted to a real server's
probes (`trilemma sim fit`) and swept for a predicted knee. There is no HTTP, tokenizer or client in the loop:
what comes out is the engine's own timing — the figures a client measures less its network and front end.

Loads: a closed loop of `concurrency` requests (`vllm bench serve --max-concurrency C --request-rate inf`: each
finished request is replaced at once) or Poisson arrivals at `rate` req/s. Figures follow vllm bench serve's
definitions: throughput over the whole run (first arrival to last completion), TPOT per request =
(E2E − TTFT)/(OSL − 1), ITL = every gap between consecutive tokens of a request.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from bench.sim.engine import Engine, Profile, SimRequest


@dataclass
class VirtualResult:
    requests: int
    duration_s: float
    output_tps: float
    request_tps: float
    ttft_ms: list[float] = field(repr=False)
    tpot_ms: list[float] = field(repr=False)
    itl_ms: list[float] = field(repr=False)
    e2e_ms: list[float] = field(repr=False)
    steps: int = 0
    mean_batch: float = 0.0  # decoding sequences per step
    prefill_step_share: float = 0.0  # share of steps that carry prompt tokens
    max_waiting: int = 0  # the longest queue seen (admission blocked by max_num_seqs or KV)
    kv_blocked_steps: int = 0  # steps where a waiting request did not fit in the KV cache
    preemptions: int = 0
    kv_peak: int = 0  # the most KV tokens held at once (never above the profile's capacity)
    seq_capped_steps: int = 0  # steps where max_num_seqs held a waiting request back
    queue_ms: list[float] = field(default_factory=list, repr=False)  # vLLM's request_queue_time: arrival to first scheduled
    prefill_ms: list[float] = field(default_factory=list, repr=False)  # vLLM's request_prefill_time: first scheduled to first token

    @staticmethod
    def _q(xs: list[float], q: float) -> float:
        if not xs:
            return math.nan
        s = sorted(xs)
        k = (len(s) - 1) * q
        lo, hi = math.floor(k), math.ceil(k)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    def pct(self, metric: str, q: float) -> float:
        return self._q(getattr(self, f"{metric}_ms"), q)

    def figures(self) -> dict[str, float]:
        return {"output_tps": self.output_tps, "request_tps": self.request_tps,
                "ttft_ms_median": self.pct("ttft", 0.5), "ttft_ms_p99": self.pct("ttft", 0.99),
                "tpot_ms_median": self.pct("tpot", 0.5), "itl_ms_median": self.pct("itl", 0.5),
                "itl_ms_p99": self.pct("itl", 0.99)}


def simulate(profile: Profile, isl: int, osl: int, *, concurrency: int | None = None, rate: float | None = None,
             n_requests: int | None = None, seed: int = 0, max_steps: int = 5_000_000) -> VirtualResult:
    """Run one load point in virtual time. Exactly one of `concurrency` and `rate`."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency and rate")
    if isl < 1 or osl < 1:
        raise ValueError("isl and osl must be at least 1")
    n = n_requests or (max(20 * concurrency, 200) if concurrency else max(200, int(rate * 60)))  # type: ignore[operator]
    rng = random.Random(seed)
    eng = Engine(profile)
    if concurrency is not None:
        arrivals = [0.0] * min(concurrency, n)
    else:
        t, arrivals = 0.0, []
        for _ in range(n):
            arrivals.append(t)
            t += rng.expovariate(rate)  # type: ignore[arg-type]
    next_i = 0  # next request to arrive (index into arrivals, then replacements for a closed loop)
    tokens: dict[int, list[float]] = {}
    reqs: dict[int, SimRequest] = {}
    done_t: dict[int, float] = {}
    now, steps, batch_sum, pre_steps, max_wait, kv_blocked, seq_capped, kv_peak = 0.0, 0, 0, 0, 0, 0, 0, 0

    def arrive(t: float) -> None:
        nonlocal next_i
        r = SimRequest(prompt_tokens=isl, max_tokens=osl)
        eng.submit(r, now=t)
        reqs[id(r)] = r
        tokens[id(r)] = []
        next_i += 1

    pending = sorted(arrivals)  # a heap of arrival times
    while len(done_t) < n and steps < max_steps:
        while pending and pending[0] <= now + 1e-12 and next_i < n:
            arrive(heapq.heappop(pending))
        if not eng.running and not eng.waiting:
            if not pending or next_i >= n:
                break
            now = pending[0]
            continue
        decoders, prefills, ctx, n_pre = eng._plan_step(now)
        if eng.waiting:
            if len(eng.running) >= profile.max_num_seqs:
                seq_capped += 1
            else:
                kv_blocked += 1
        max_wait = max(max_wait, len(eng.waiting))
        now += eng.step_cost(decoders, prefills, ctx, n_pre)
        steps += 1
        batch_sum += len(decoders)
        pre_steps += bool(prefills)
        emitted = list(decoders) + [r for r, take in prefills if r.prefilled + take >= r.prefill_target]
        finished = eng.finish_step(decoders, prefills, now)
        kv_peak = max(kv_peak, eng.kv_reserved)
        for r in emitted:
            tokens[id(r)].append(now)
        for r in finished:
            done_t[id(r)] = now
            if concurrency is not None and next_i + len(pending) < n:
                heapq.heappush(pending, now)
    ttft: list[float] = []
    tpot: list[float] = []
    itl: list[float] = []
    e2e: list[float] = []
    queue: list[float] = []
    prefill: list[float] = []
    for k, r in reqs.items():
        ts = tokens[k]
        if k not in done_t or not ts:
            continue
        sched = r.scheduled_t if r.scheduled_t is not None else r.arrived
        queue.append((sched - r.arrived) * 1e3)
        prefill.append((ts[0] - sched) * 1e3)
        ttft.append((ts[0] - r.arrived) * 1e3)
        e2e.append((ts[-1] - r.arrived) * 1e3)
        if len(ts) > 1:
            tpot.append((ts[-1] - ts[0]) / (len(ts) - 1) * 1e3)
            itl.extend((b - a) * 1e3 for a, b in zip(ts, ts[1:]))
    start = min((r.arrived for r in reqs.values()), default=0.0)
    dur = max(done_t.values(), default=start) - start
    m = len(done_t)
    return VirtualResult(requests=m, duration_s=dur, output_tps=m * osl / dur if dur else math.nan,
                         request_tps=m / dur if dur else math.nan, ttft_ms=ttft, tpot_ms=tpot, itl_ms=itl, e2e_ms=e2e, steps=steps,
                         mean_batch=batch_sum / max(1, steps), prefill_step_share=pre_steps / max(1, steps),
                         max_waiting=max_wait, kv_blocked_steps=kv_blocked, seq_capped_steps=seq_capped,
                         preemptions=eng.preemptions, kv_peak=kv_peak, queue_ms=queue, prefill_ms=prefill)
