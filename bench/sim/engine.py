"""Continuous-batching engine model (vLLM-like), driven in real time (served) or in virtual time (virtual.py).

Every engine step serves the running decode batch plus a chunked-prefill budget of new prompt tokens
(`max_num_batched_tokens`, shared with the decode tokens). Step time is a roofline:

    t_step = t_overhead + t_seq · n_sampled + max(t_mem, t_compute)    (t_seq: per-sequence CPU work left unhidden)
    t_mem     = (W_s + C · b_kv) / (BW · η_mem)        W_s = (params − embedding) · dtype bytes (weights read once/step;
                                                             of the input embedding only the batch's rows are read)
                                                       C = total context tokens of the batch, b_kv = KV bytes/token
    t_compute = 2 · (P_body · (n_decode + n_prefill) + P_head · n_sampled) / (F · η_flop)
                P_body = params − embedding − lm_head; lm_head only for sampled tokens (decodes, completed prefills)

    b_kv = 2 · layers · kv_heads · head_dim · dtype bytes
    KV capacity (tokens) = (HBM · util − W) / b_kv

Admission is FIFO while running < max_num_seqs and the KV cache can hold the request's prompt plus its
max_tokens (reserved up front, so there is no preemption; with `kv_preemption`, vLLM V1's paged KV: room for the
prompt at admission, one slot per decoded token, the newest request preempted and recomputed when full); otherwise requests wait — the latency
"hockey stick" past saturation. With prefix caching, 16-token prompt blocks already seen (LRU, bounded
by free KV) skip prefill compute.

Analytic capacity at saturation for ISL/OSL (all slots busy, B = min(max_num_seqs, KV cap/(ISL+OSL))):
each request occupies the batch for OSL steps (prefill step emits token 1), so per step B/OSL requests
prefill (B·ISL/OSL tokens) and the rest decode; mean context per request ≈ ISL + OSL/2;
capacity = B / (OSL · t_step). This assumes staggered arrivals (Poisson load past saturation); a closed
loop that starts B requests at once runs in lockstep waves whose prefill-only steps are not hidden
under the decode memory time, and reads lower. It is also an upper bound where one prompt's prefill makes its step compute-bound
(long ISL, short OSL: 512/64 on tiny-test reads 0.6x of it); `virtual.simulate` steps the engine itself.
Power: idle + (TDP − idle) · (0.5 + 0.5 · t_compute/max(t_mem, t_compute))
while stepping, idle otherwise (a stand-in so telemetry code has a source; not a power model).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

PROFILE_DIR = Path(__file__).parent / "profiles"
BLOCK = 16
HOST_WINDOW_S = 1.0  # the streamed-token rate behind host_ms_per_token is taken over the last second


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    gpu: str
    model: str
    params_b: float
    dtype_bytes: float = 2
    n_layers: int
    n_kv_heads: int
    head_dim: int
    hbm_gbps: float
    peak_tflops: float
    mem_eff: float = 0.8
    flop_eff: float = 0.5
    step_overhead_ms: float = 3.0
    seq_overhead_ms: float = 0.0  # CPU time per sampled sequence per step not hidden under the GPU's (V0 scheduler/sampler)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    gpu_mem_gib: float = 80
    gpu_mem_util: float = 0.9
    max_model_len: int = 8192
    prefix_cache: bool = True
    # False: a request's prompt + max_tokens are reserved at admission (never preempted). True: vLLM V1's paged KV —
    # admission needs room for the prompt, every decoded token takes one more slot, and when the cache is full the
    # last admitted request is preempted (its KV freed, it goes back to the head of the queue and recomputes)
    kv_preemption: bool = False
    tdp_w: float = 700
    idle_w: float = 90
    embed_params_b: float = 0.0  # input embedding: a lookup, never multiplied
    lm_head_params_b: float = 0.0  # output projection: multiplied only for sampled tokens
    api_overhead_ms: float = 0.0  # HTTP + tokenizer in front of the engine: added to TTFT (and E2E), not to ITL
    # CPU time per streamed token spent by the front end (detokenize, SSE) — and, where the load generator shares the
    # machine, the client — on the cores the engine's own loop needs. 0 for a GPU server with cores to spare. Non-zero,
    # the engine gets 1 − u of its core, u = streamed tokens/s × host_ms_per_token / 1000 (at most 0.95): every step
    # stretches by 1/(1 − u). A CPU-only server sharing two cores with its client (the vLLM CPU rig) is such a host.
    host_ms_per_token: float = 0.0
    fit: dict | None = None  # `trilemma sim fit`: what the coefficients were fitted to, and the fit error
    slowdown: float = 1.0  # multiply every step time (e.g. 1.1 to plant a 10% regression)

    @property
    def weight_bytes(self) -> float:
        """Resident weights (what the KV cache cannot use)."""
        return self.params_b * 1e9 * self.dtype_bytes

    @property
    def streamed_weight_bytes(self) -> float:
        """Weights read by every step: all but the input embedding, of which only the batch's rows are read."""
        return (self.params_b - self.embed_params_b) * 1e9 * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_capacity_tokens(self) -> int:
        return int((self.gpu_mem_gib * 2**30 * self.gpu_mem_util - self.weight_bytes) / self.kv_bytes_per_token)

    def step_parts(self, n_decode: int, ctx_tokens: float, n_prefill: int, n_sampled: int | None = None) -> tuple[float, float]:
        """(memory time, compute time) of one step. Every token in the step is multiplied by the body's weights
        (params − input embedding − lm_head); only sampled tokens (decodes and completed prefills; default: the
        decodes) go through lm_head; the input embedding is a lookup, never multiplied."""
        bw = self.hbm_gbps * 1e9 * self.mem_eff
        t_mem = (self.streamed_weight_bytes + ctx_tokens * self.kv_bytes_per_token) / bw
        body = self.params_b - self.embed_params_b - self.lm_head_params_b
        sampled = n_decode if n_sampled is None else n_sampled
        flops = 2e9 * (body * (n_decode + n_prefill) + self.lm_head_params_b * sampled)
        t_cmp = flops / (self.peak_tflops * 1e12 * self.flop_eff)
        return t_mem, t_cmp

    def step_time_s(self, n_decode: int, ctx_tokens: float, n_prefill: int, n_sampled: int | None = None) -> float:
        t_mem, t_cmp = self.step_parts(n_decode, ctx_tokens, n_prefill, n_sampled)
        sampled = n_decode if n_sampled is None else n_sampled
        cpu = (self.step_overhead_ms + self.seq_overhead_ms * sampled) / 1e3
        return (cpu + max(t_mem, t_cmp)) * self.slowdown

    def power_w(self, n_decode: int, ctx_tokens: float, n_prefill: int) -> float:
        t_mem, t_cmp = self.step_parts(n_decode, ctx_tokens, n_prefill)
        return self.idle_w + (self.tdp_w - self.idle_w) * (0.5 + 0.5 * t_cmp / max(t_mem, t_cmp))

    def batch_limit(self, isl: int, osl: int) -> int:
        return max(1, min(self.max_num_seqs, self.kv_capacity_tokens // (isl + osl)))

    def analytic_capacity(self, isl: int, osl: int) -> dict:
        """Saturation throughput for fixed ISL/OSL (see module docstring)."""
        b = self.batch_limit(isl, osl)
        n_pre = b / osl * isl
        n_dec = b - b / osl
        ctx = b * (isl + osl / 2)
        t = self.step_time_s(round(n_dec), ctx, round(n_pre), b)
        qps = b / (osl * t)
        if self.host_ms_per_token > 0:  # steps stretch by 1/(1 − qps·osl·c): qps = x(1 − qps·osl·c) → x / (1 + x·osl·c)
            c = self.host_ms_per_token / 1e3
            qps = qps / (1 + qps * osl * c)
            if qps * osl * c > 0.95:
                qps = 0.95 / (osl * c)
            t = b / (osl * qps)
        return {"batch": b, "step_ms": t * 1e3, "qps": qps, "output_tps": qps * osl, "total_tps": qps * (isl + osl),
                "tpot_ms": t * 1e3, "prefill_budget_ok": n_pre + n_dec <= self.max_num_batched_tokens}


def load_profile(name_or_path: str, slowdown: float = 1.0) -> Profile:
    p = Path(name_or_path)
    if not p.is_file():
        p = PROFILE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(q.stem for q in PROFILE_DIR.glob("*.yaml")))
        raise ValueError(f"sim profile '{name_or_path}' not found; use one of: {names}, or a YAML file path")
    prof = Profile(**yaml.safe_load(p.read_text()))
    if slowdown != 1.0:
        prof = prof.model_copy(update={"slowdown": prof.slowdown * slowdown})
    return prof


@dataclass(eq=False)
class SimRequest:
    prompt_tokens: int
    max_tokens: int
    blocks: list = field(default_factory=list)  # prefix block hashes
    cached: int = 0  # prompt tokens served from the prefix cache
    prefilled: int = 0
    generated: int = 0
    pending: int = 0  # tokens emitted but not yet written to the client
    done: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: float = 0.0
    first_token_t: float = 0.0
    aborted: bool = False  # the client went away (the server dropped it from waiting/running)
    kv_held: int = 0  # KV tokens this request holds (reserved up front, or grown per token with kv_preemption)
    recompute: int = 0  # generated tokens to prefill again after a preemption (vLLM's recompute policy)
    scheduled_t: float | None = None  # first admitted to the running batch (vLLM: queue time ends, prefill time starts)

    @property
    def prefill_target(self) -> int:
        return self.prompt_tokens + self.recompute


class Engine:
    """Runs the step loop on the event loop; requests are fed with `submit` and woken per step."""

    def __init__(self, profile: Profile):
        self.p = profile
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.kv_reserved = 0
        self.preemptions = 0
        self.prefix: OrderedDict[int, None] = OrderedDict()
        self._wake = asyncio.Event()
        self.power_w = profile.idle_w
        self.energy_j = 0.0
        self._energy_t = time.monotonic()
        # counters for /metrics
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.steps = 0
        self.observers: list = []  # callables(req, kind, value_s) for histograms
        self._streamed: deque = deque()  # (step end, tokens emitted): the host's streamed-token rate (host_ms_per_token)
        self._streamed_sum = 0
        self._last_step_end: float | None = None

    # -- energy (integrated at every power change)
    def _set_power(self, w: float) -> None:
        now = time.monotonic()
        self.energy_j += self.power_w * (now - self._energy_t)
        self._energy_t, self.power_w = now, w

    def energy_now_j(self) -> float:
        return self.energy_j + self.power_w * (time.monotonic() - self._energy_t)

    @property
    def kv_usage(self) -> float:
        return self.kv_reserved / max(1, self.p.kv_capacity_tokens)

    def submit(self, req: SimRequest, now: float | None = None) -> None:
        req.arrived = time.monotonic() if now is None else now
        if self.p.prefix_cache and req.blocks:
            self.prefix_queries += req.prompt_tokens
            hit = 0
            for b in req.blocks:
                if b in self.prefix:
                    self.prefix.move_to_end(b)
                    hit += BLOCK
                else:
                    break
            req.cached = min(hit, req.prompt_tokens - 1)
            self.prefix_hits += req.cached
        self.waiting.append(req)
        self._wake.set()

    def _remember_blocks(self, req: SimRequest) -> None:
        if not self.p.prefix_cache:
            return
        for b in req.blocks:
            self.prefix[b] = None
            self.prefix.move_to_end(b)
        free_blocks = max(0, (self.p.kv_capacity_tokens - self.kv_reserved) // BLOCK)
        while len(self.prefix) > free_blocks:
            self.prefix.popitem(last=False)

    def _plan_step(self, now: float | None = None) -> tuple[list, list, float, int]:
        """Choose this step's decode set and prefill chunks at `now` (monotonic seconds; virtual time in
        bench.sim.virtual); returns (decoders, prefills, ctx, n_prefill)."""
        p = self.p
        preempted = False
        if p.kv_preemption:  # each running request may take one more KV slot this step: make room by preempting the newest
            while len(self.running) > 1 and self.kv_reserved + len(self.running) > p.kv_capacity_tokens:
                v = self.running.pop()
                self.kv_reserved -= v.kv_held
                v.kv_held, v.recompute, v.prefilled = 0, v.generated, 0
                self.waiting.appendleft(v)
                self.preemptions += 1
                preempted = True
        while self.waiting and len(self.running) < p.max_num_seqs and not preempted:  # vLLM V1: no admission in a preempting step
            r = self.waiting[0]
            # paged KV: room for the prompt and its first token, on top of one more slot for every running request
            need = r.prefill_target if p.kv_preemption else r.prompt_tokens + r.max_tokens
            growth = len(self.running) + 1 if p.kv_preemption else 0
            if self.kv_reserved + need + growth > p.kv_capacity_tokens and self.running:
                break
            self.waiting.popleft()
            self.kv_reserved += need
            r.kv_held = need
            r.prefilled = r.cached if not r.recompute else 0
            self.running.append(r)
            if r.scheduled_t is None:  # vLLM's request_queue_time: arrival to first scheduled (a preempted request keeps it)
                r.scheduled_t = time.monotonic() if now is None else now
                for ob in self.observers:
                    ob("queue", r.scheduled_t - r.arrived)
        decoders = [r for r in self.running if r.prefilled >= r.prefill_target]
        budget = p.max_num_batched_tokens - len(decoders)
        prefills = []
        for r in self.running:
            if r.prefilled < r.prefill_target and budget > 0:
                take = min(budget, r.prefill_target - r.prefilled)
                prefills.append((r, take))
                budget -= take
        ctx = sum(r.prefilled + r.generated - r.recompute for r in self.running)
        return decoders, prefills, ctx, sum(t for _, t in prefills)

    def finish_step(self, decoders: list, prefills: list, now: float) -> list:
        """Apply one finished step at time `now`: a token for every decoder and every completed prefill.
        Returns the requests that finished. Shared by the real-time loop and virtual-time runs."""
        finished = []
        decoders = [r for r in decoders if not r.aborted]  # aborted while this step ran
        prefills = [(r, take) for r, take in prefills if not r.aborted]
        self.steps += 1
        grow = 1 if self.p.kv_preemption else 0
        for r in decoders:
            r.generated += 1
            r.pending += 1
            r.kv_held += grow
            self.kv_reserved += grow
            if r.generated >= r.max_tokens:
                finished.append(r)
            r.event.set()
        for r, take in prefills:
            r.prefilled += take
            self.prompt_tokens_total += take
            if r.prefilled >= r.prefill_target:
                r.generated += 1
                r.pending += 1
                r.kv_held += grow
                self.kv_reserved += grow
                if not r.recompute:  # a recomputed prefill resumes the stream: no new first token
                    r.first_token_t = now
                    for ob in self.observers:
                        ob("ttft", now - r.arrived)
                        ob("prefill", now - (r.scheduled_t if r.scheduled_t is not None else r.arrived))
                if r.generated >= r.max_tokens:
                    finished.append(r)
                r.event.set()
        emitted = len(decoders) + sum(1 for r, _ in prefills if r.prefilled >= r.prefill_target)
        self.generation_tokens_total += emitted
        if self.p.host_ms_per_token > 0:
            self._streamed.append((now, emitted))
            self._streamed_sum += emitted
            while self._streamed and self._streamed[0][0] < now - HOST_WINDOW_S:
                self._streamed_sum -= self._streamed.popleft()[1]
            self._last_step_end = now
        for r in finished:
            r.done = True
            self.running.remove(r)
            self.kv_reserved -= r.kv_held
            r.kv_held = 0
            self._remember_blocks(r)
            for ob in self.observers:
                ob("e2e", now - r.arrived)
                if r.max_tokens > 1:
                    ob("tpot", (now - r.first_token_t) / (r.max_tokens - 1))
        return finished

    def step_cost(self, decoders: list, prefills: list, ctx: float, n_pre: int) -> float:
        """This step's duration in seconds (the profile's roofline), counting the tokens sampled in it."""
        n_sampled = len(decoders) + sum(1 for r, take in prefills if r.prefilled + take >= r.prefill_target)
        return self.p.step_time_s(len(decoders), ctx, n_pre, n_sampled) * self.host_stretch()

    def host_stretch(self) -> float:
        """1/(1 − u): the share of the engine's core that streaming the last HOST_WINDOW_S of tokens took."""
        if self.p.host_ms_per_token <= 0 or not self._streamed:
            return 1.0
        u = self._streamed_sum / HOST_WINDOW_S * self.p.host_ms_per_token / 1e3
        return 1.0 / (1.0 - min(u, 0.95))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        t_next = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._set_power(self.p.idle_w)
                self._wake.clear()
                await self._wake.wait()
                t_next = loop.time()
            decoders, prefills, ctx, n_pre = self._plan_step(time.monotonic())
            dt = self.step_cost(decoders, prefills, ctx, n_pre)
            self._set_power(self.p.power_w(len(decoders), ctx, n_pre))
            t_end = max(t_next, loop.time() - 0.005) + dt  # keep the virtual timeline unless >5 ms behind
            delay = t_end - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t_next = t_end
            self.finish_step(decoders, prefills, time.monotonic())
