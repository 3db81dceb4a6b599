"""③ Drive a schedule through the client: open loop (absolute schedule, optional concurrency cap),
closed loop (N workers), warmup flagging, incremental saving, draining and clean interruption.

`execute_run` is the one library call behind `trilemma run` (and each sweep point): it discovers the
target, builds the workload, runs, and leaves `run.json` + `requests.parquet` whatever happens.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from bench import client as cl
from bench.config import RunSpec, SpecError
from bench.datasets import WorkItem
from bench.probe import ProbeMonitor
from bench.prompts import PromptBuilder, PromptCache, make_tokenizer
from bench.records import IncrementalWriter, RequestRecord
from bench.summary import IdleCheck, ServerStats
from bench.warn import warning
from bench.wire import ServerInfo
from bench.workers import HANDOFF_NS, LoopStalls, Spreader, WorkerPool, new_event_loop, sleep_until
from bench.workload import Workload

if TYPE_CHECKING:
    from bench.raypool import RayPool

perf_ns = time.perf_counter_ns
LEAD_NS = 100_000_000  # t0 is 100 ms after scheduling starts, so the first sends are not late
# An open loop without --max-concurrency still holds at most this many requests in flight: past a server's
# capacity its backlog otherwise grows without end (~10 KB of client memory and a socket each; a 5-minute run
# at twice a server's capacity holds ~27 k). A request past the cap waits at the client, in schedule order, and
# its latencies still count from its scheduled send, so the cap never flatters a result; the run says how many waited.
DEFAULT_MAX_IN_FLIGHT = 4096


class RunFailed(Exception):
    """The run could not start or produced nothing; message is one line for the user."""


@dataclass
class Progress:
    sent: int = 0
    done: int = 0
    failed: int = 0
    planned: int | None = None
    not_sent: int = 0  # scheduled, due, but still waiting for an in-flight slot when the run stopped
    started_ns: int = 0
    end_ns_planned: int = 0


async def drive(spec: RunSpec, wl: Workload, items_hint: list[WorkItem], http, prepare: Callable[[WorkItem], cl.Prepared],
                writer: IncrementalWriter, progress: Progress, stop: asyncio.Event | None = None,
                monitor: ProbeMonitor | None = None, pool: WorkerPool | RayPool | None = None) -> ProbeMonitor:
    """Run the load point. Records go to `writer` as each request ends. The monitor (probe.py) decides
    when warmup and the window end; without a probe rule that is the fixed --warmup and --duration.
    With a worker pool, requests are sent and read by its processes (each handed over HANDOFF_NS before
    it is due); the schedule, the cap, the monitor and saving stay here. `http`: the client, or one per
    endpoint when the target is several replicas (each request goes to one, by target.spread)."""
    from bench import schedule

    load = spec.load
    warm_s = load.warm_seconds()  # a ramp is sent as warmup
    warm_n = int(load.warmup) if load.warmup_unit == "r" else 0
    mode = "qps" if load.open_loop else "concurrency"
    mon = monitor or ProbeMonitor(spec.probe, spec.slos, mode, warm_s, warm_n, load.duration_s if not spec.probe else None)
    dur_ns: int | None
    if spec.probe is not None:  # the schedule runs to the rule's maximum; the monitor ends it sooner
        dur_ns = int((warm_s + spec.probe.max_duration_s * 1.5 + 1) * 1e9)
    else:
        dur_ns = int((load.duration_s + warm_s) * 1e9) if load.duration_s else None
    if load.stages:  # the first stage's start is the warmup: the schedule is the ramp and the stages
        dur_ns = int((load.ramp_up_s + sum(s.duration_s for s in load.stages)) * 1e9)
    n_req = (load.requests + warm_n) if load.requests else None
    staged = bool(load.stages or load.ramp_up_s)
    tasks: set[asyncio.Task] = set()
    cap = load.max_concurrency or (DEFAULT_MAX_IN_FLIGHT if load.open_loop else None)
    sem = asyncio.Semaphore(cap) if cap else None
    t0 = perf_ns() + LEAD_NS
    mon.begin(t0)
    progress.started_ns = t0
    if dur_ns:
        progress.end_ns_planned = t0 + dur_ns

    def stopped(t_ns: int) -> bool:
        return (stop is not None and stop.is_set()) or (mon.stop_at is not None and t_ns >= mon.stop_at)

    async def take_slot(intended: int) -> bool:
        """The scheduler waits here for an in-flight slot (no task or record exists for a request that
        waits); False when the run is stopped or aborted meanwhile. A request due inside the window is sent
        when a slot frees, also after the window's end, as it would have queued at the server."""
        assert sem is not None
        acq = asyncio.ensure_future(sem.acquire())
        while True:
            done, _ = await asyncio.wait({acq}, timeout=0.2)
            if done:
                return True
            if stopped(intended) or mon.aborted:
                acq.cancel()
                try:
                    await acq
                except asyncio.CancelledError:
                    return False
                sem.release()  # acquired as it was cancelled
                return False

    async def one(it: WorkItem, intended: int, prepared: cl.Prepared, warm: bool, held: int | None = None) -> None:
        """Send one request. `held`: the scheduler already took its in-flight slot (the time the slot freed,
        0 if there was no wait); a follow-up turn (None) waits for its own."""
        rec = RequestRecord(index=it.index, intended_ns=intended, warmup=warm, isl=it.isl, osl=it.osl,
                            prefix_group=it.prefix_group, source=it.source, conversation=it.conversation, turn=it.turn,
                            stage=load.stage_at((intended - t0) / 1e9) if staged else 0, slot_ns=held or 0, model=prepared.model)
        rec.prompt_tokens_local = it.isl if wl.builder is not None else -1
        progress.sent += 1
        slot = mon.started(rec)
        try:
            if sem is not None:
                if held is None:
                    waits = sem.locked()
                    await sem.acquire()
                    rec.slot_ns = perf_ns() if waits else 0
                try:
                    await send(prepared, rec, intended)
                finally:
                    sem.release()
            else:
                await send(prepared, rec, intended)
        except asyncio.CancelledError:
            rec.end_ns = perf_ns()
            rec.error_kind, rec.error, rec.ok = "cancelled", "run interrupted before the response ended", False
            mon.finished(slot, rec)
            writer.add(rec)
            raise
        mon.finished(slot, rec)
        progress.done += 1
        progress.failed += not rec.ok
        answer = rec.output_text
        if not it.followups:
            rec.output_text = ""  # kept only where it becomes the next turn's history
        writer.add(rec)
        if it.followups and rec.ok and not mon.aborted:  # multi-turn: next turn right after this one, with the real answer
            await next_turn(it, answer, warm)

    async def next_turn(it: WorkItem, answer: str, warm: bool) -> None:
        msgs = list(it.prompt) + [{"role": "assistant", "content": answer}]
        nxt_text, nxt_isl, nxt_osl, *traced = it.followups[0]
        think = traced[0] if traced and traced[0] is not None else it.think_s  # the trace's own pause, else --think-time
        msgs.append({"role": "user", "content": nxt_text})
        nxt = WorkItem(index=it.index + 1, prompt=msgs, isl=nxt_isl, osl=nxt_osl, source=f"{it.source.rsplit(':turn', 1)[0]}:turn{it.turn + 1}",
                       conversation=it.conversation, turn=it.turn + 1, followups=it.followups[1:], think_s=it.think_s)
        if wl.builder is not None:  # the history's real token count (a /tokenize call: off the event loop)
            nxt.isl = await asyncio.to_thread(wl.builder.tok.count_chat, msgs)
        if think > 0:  # the user reads the answer before the next turn
            await asyncio.sleep(think)
        t = perf_ns()
        await one(nxt, t, prepare(nxt), warm)

    spreader = Spreader(len(http), spec.target.spread) if isinstance(http, list) and len(http) > 1 else None

    async def send(prepared: cl.Prepared, rec: RequestRecord, due_ns: int) -> None:
        e = spreader.pick(rec.conversation) if spreader is not None else 0
        rec.endpoint = e
        try:
            if pool is not None:
                await pool.send(prepared, rec, due_ns, e)
            else:
                await cl.send_streaming(http[e] if isinstance(http, list) else http, prepared, rec)
        finally:
            if spreader is not None:
                spreader.done(e)

    def spawn(coro) -> None:
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    watch = asyncio.ensure_future(mon.watch())
    try:
        if load.open_loop:
            # open loop: absolute schedule from the seed (or the trace's own offsets)
            if load.stages or load.ramp_up_s:
                offsets = [o for o in schedule.profile_offsets_ns(load.arrival, load.rate_pieces(), spec.seed).tolist()
                           if dur_ns is None or o < dur_ns]
            elif load.replay:
                offsets = [o for it in items_hint if (o := it.offset_ns) is not None and (dur_ns is None or o < dur_ns)]
            else:
                assert load.qps is not None
                offsets = schedule.open_loop_offsets_ns(load.arrival, load.qps, spec.seed, duration_s=dur_ns / 1e9 if dur_ns else None,
                                                        count=n_req).tolist()
            progress.planned = len(offsets) if spec.probe is None else None
            peak = max(s.qps for s in load.stages) if load.stages else 0.0
            rate = load.qps or peak or (len(offsets) / max(1e-9, (offsets[-1] - offsets[0]) / 1e9) if len(offsets) > 1 else 1.0)
            spin = rate <= 400
            released = 0  # when the scheduler last got a slot it had to wait for
            for i, off in enumerate(offsets):
                target = t0 + off
                if stopped(target):
                    break
                it = items_hint[i] if i < len(items_hint) else wl.item(i)
                prepared = prepare(it)
                if pool is not None:  # its worker waits out the rest
                    await sleep_until(target - HANDOFF_NS, False)
                else:
                    await sleep_until(target, spin)
                if stopped(target):
                    break
                held = None
                if sem is not None:
                    waits = sem.locked()
                    if not await take_slot(target):
                        now = perf_ns()
                        progress.not_sent = sum(1 for o in offsets[i:] if t0 + o <= now)
                        break
                    if waits:
                        released = perf_ns()
                    # it waited for a slot itself, or queued behind one that did (its time passed meanwhile)
                    held = released if released > target else 0
                spawn(one(it, target, prepared, mon.is_warm(i, target), held))
        else:
            progress.planned = n_req
            counter = iter(range(10**12))

            async def worker() -> None:
                while True:
                    i = next(counter)
                    if n_req is not None and i >= n_req:
                        return
                    now = perf_ns()
                    if stopped(now) or (dur_ns is not None and now - t0 >= dur_ns):
                        return
                    it = items_hint[i] if i < len(items_hint) else wl.item(i)
                    prepared = prepare(it)
                    now = perf_ns()
                    await one(it, now, prepared, mon.is_warm(i, now))

            assert load.concurrency is not None
            await sleep_until(t0, False)
            await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        end = perf_ns()
        if mon.stop_at is None:  # the schedule ran out before the monitor stopped it
            mon._stop(t0 + dur_ns if dur_ns and spec.probe is None else end, "schedule", "")
        watch.cancel()
        if tasks and mon.aborted:  # decided FAIL: what is still in flight is cancelled, not waited for
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*list(tasks), return_exceptions=True)
        elif tasks:  # drain the window's requests, then cancel whatever outlives the drain timeout
            _, pending = await asyncio.wait(list(tasks), timeout=mon.drain_timeout_s(perf_ns()) if spec.probe else None)
            for t in pending:
                t.cancel()
            if pending:
                mon.why = (mon.why + "; " if mon.why else "") + f"{len(pending)} requests still in flight after the drain were cancelled"
                await asyncio.gather(*pending, return_exceptions=True)
    except asyncio.CancelledError:
        mon.interrupt(perf_ns())
        watch.cancel()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*list(tasks), return_exceptions=True)
        raise
    finally:
        watch.cancel()
    return mon


def one_line(e: BaseException) -> str:
    """An exception as one line for run.json and the console: its type and first line."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (RunFailed, SpecError, cl.TargetError)):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def run_async(spec: RunSpec, run_dir: Path, api_key: str | None, on_progress: Callable[[Progress], None] | None = None,
                    telemetry=None, extra: dict | None = None, prompts: PromptCache | None = None) -> dict:
    """Discover the target, build the workload, drive it, save. Returns the run.json document.

    Status rule: `complete` only when the point was measured as planned; any exception leaves `failed`
    with its reason (one line, secrets redacted) and raises RunFailed; Ctrl-C leaves `interrupted`.
    `prompts`: the caller's cache of tokenizers and prompt pieces, shared by its points (None: this run's own)."""
    from bench import results

    run_dir.mkdir(parents=True, exist_ok=True)
    doc = results.new_run_doc(spec, run_dir.name)
    doc.update(extra or {})
    results.write_run_doc(run_dir, doc)
    try:
        if prompts is not None:
            return await _run_point(spec, run_dir, doc, api_key, on_progress, telemetry, prompts)
        with PromptCache() as own:
            return await _run_point(spec, run_dir, doc, api_key, on_progress, telemetry, own)
    except asyncio.CancelledError:
        if doc["status"] == "running":
            doc.update(status="interrupted", error="interrupted (Ctrl-C or signal) before the load started", ended_at=time.time())
            results.write_run_doc(run_dir, doc)
        raise
    except Exception as e:
        msg = cl.redact(one_line(e), [api_key, *cl.url_secrets(spec.target.url)])
        if doc["status"] in ("running", "complete"):
            doc.update(status="failed", error=msg, ended_at=time.time())
            results.write_run_doc(run_dir, doc)
        if isinstance(e, RunFailed):
            raise
        raise RunFailed(msg) from e


def resolve_workers(spec: RunSpec, items: list[WorkItem]) -> tuple[int, str]:
    """The number of client processes and why: --workers N, or `auto` from the load's expected chunk rate
    (request rate × mean output tokens: one chunk a token when streaming) and this host's safe rate."""
    from bench.workers import auto_workers

    if spec.workers != "auto":
        return int(spec.workers), f"--workers {spec.workers}"
    load = spec.load
    rate = load.qps or max((st.qps for st in load.stages or []), default=0.0)
    osl = sum(it.osl for it in items) / len(items) if items else 0.0
    n, why = auto_workers(rate * osl if rate and osl else None)
    return n, f"auto: {n} ({why})"


def _replica(url: str, info: ServerInfo) -> dict:
    return {"url": cl.redact_url(url), "server_kind": info.server_kind, "server_version": info.server_version, "max_model_len": info.max_model_len}


def model_picker(mix: dict[str, float], seed: int) -> Callable[[WorkItem], str]:
    """Each request's model from a weighted mix, drawn from (seed, request) — the same names for the same seed,
    whatever the timing; every turn of a conversation goes to its first turn's model."""
    import bisect
    import random

    names = list(mix)
    cum = list(itertools.accumulate(mix[n] for n in names))

    def pick(it: WorkItem) -> str:
        u = random.Random(seed * 1_000_003 + (it.conversation if it.conversation >= 0 else it.index)).random() * cum[-1]
        return names[min(bisect.bisect_right(cum, u), len(names) - 1)]

    return pick


async def _run_point(spec: RunSpec, run_dir: Path, doc: dict, api_key: str | None, on_progress, telemetry, prompts: PromptCache) -> dict:
    from bench import results
    from bench.metrics import per_endpoint, per_model, per_stage, summarize_run

    tgt = spec.target
    if api_key and cl.url_secrets(tgt.url):
        raise cl.TargetError("--url carries a password and an API key is set: both would go in the Authorization header; "
                             "give only one (drop user:password@ from --url, or unset --api-key / the key's env var)")
    headers = {**tgt.headers, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    info = await cl.discover(tgt.url, headers)
    model = tgt.model or info.default_model
    if not model:
        msg = f"{tgt.url} serves {len(info.models)} models ({', '.join(info.models[:5])}); pick one with --model"
        doc.update(status="failed", error=msg)
        results.write_run_doc(run_dir, doc)
        raise RunFailed(msg)
    def must_serve(where: ServerInfo, url: str, which: str) -> None:
        missing = [m for m in (tgt.model_mix or [model]) if where.models and m not in where.models]
        if missing:
            msg = f"model '{missing[0]}' is not served at {url}{which}; it serves: {', '.join(where.models[:5])} (fix --model)"
            doc.update(status="failed", error=msg)
            results.write_run_doc(run_dir, doc)
            raise RunFailed(msg)

    must_serve(info, tgt.url, "")
    doc["target"] = {"url": cl.redact_url(tgt.url), "model": model, "api": tgt.api, **info.record()}
    endpoints = tgt.endpoints or [tgt.url]
    if len(endpoints) > 1:  # several replicas: each must serve the model(s); what each runs is recorded
        described = [_replica(tgt.url, info)]
        for k, u in enumerate(endpoints[1:], start=1):
            other = await cl.discover(u, headers)
            must_serve(other, u, f" (replica {k} of the target)")
            described.append(_replica(u, other))
        doc["target"]["endpoints"] = described
        doc["target"]["spread"] = tgt.spread
    idle_before: IdleCheck | None = None
    cache_reset = "off"
    if spec.scrape_metrics:  # never start behind an earlier point's queue (cancelled requests still being served)
        from bench.telemetry.prometheus import wait_idle

        waits = [await asyncio.to_thread(wait_idle, u, headers) for u in endpoints]
        idle_before = next((x for x in waits if x.idle is False), waits[0])
        doc["target"]["idle_before"] = idle_before.model_dump(exclude_none=True)
    if spec.reset_prefix_cache:
        resets = [await cl.reset_prefix_cache(u, headers) for u in endpoints]
        cache_reset = resets[0] if len(set(resets)) == 1 else "; ".join(resets)
        doc["target"]["prefix_cache_reset"] = cache_reset
    # workload
    key = (tgt.url, model, tgt.api, tgt.tokenizer, info.server_version)
    if key not in prompts.entries:  # a sweep's points share one server: find the prompt pieces once
        tok, tok_kind = await asyncio.to_thread(make_tokenizer, tgt.tokenizer, tgt.url, model, headers)
        prompts.entries[key] = (tok, tok_kind, await asyncio.to_thread(PromptBuilder, tok, tgt.api))
    tok, tok_kind, builder = prompts.entries[key]
    wspec = spec.workload
    if wspec.max_model_len is None:
        mx = info.max_model_len or getattr(tok, "max_model_len", None)
        if mx:
            wspec = wspec.model_copy(update={"max_model_len": int(mx)})
    wl = Workload(wspec, builder, spec.seed, tgt.api)
    if spec.load.replay and not (wl.source is not None and wl.source.timed):
        msg = f"dataset '{wspec.dataset}' has no arrival times to replay; give --qps or --concurrency"
        doc.update(status="failed", error=msg)
        results.write_run_doc(run_dir, doc)
        raise RunFailed(msg)
    load = spec.load
    planned = (load.requests + (int(load.warmup) if load.warmup_unit == "r" else 0) if load.requests else
               int(math.ceil((load.planned_requests() or 0) * 1.2)) + 64)
    if load.open_loop and not load.replay:
        n_pre = min(planned, 5000)  # a dataset shorter than the schedule wraps around (Workload.item); later items are built as sent
    elif wl.size is not None:
        n_pre = min(wl.size, planned) if load.requests else wl.size
    else:
        n_pre = min(64, load.requests or 64)
    items = [wl.item(i) for i in range(n_pre)]
    fixes = await asyncio.to_thread(wl.verify, items)
    doc["workload"] = {"tokenizer": tok_kind, "prompt_overhead_tokens": builder.overhead, "verified_fixes": fixes,
                       "clipped_to_max_model_len": wl.clipped, "max_model_len": wspec.max_model_len,
                       **(wl.source.describe() if wl.source else {})}

    pick = model_picker(tgt.model_mix, spec.seed) if tgt.model_mix else None

    def prepare(it: WorkItem) -> cl.Prepared:
        return cl.build_body(tgt.api, pick(it) if pick else model, it.prompt, it.osl, ignore_eos=tgt.ignore_eos,
                             continuous_usage=tgt.continuous_usage, extra=tgt.request)

    n_workers, workers_why = resolve_workers(spec, items)
    doc["client"] = {"workers": n_workers, "workers_from": "auto" if spec.workers == "auto" else "--workers", "why": workers_why}
    pool: WorkerPool | RayPool | None = None
    if spec.ray:  # actors on a Ray cluster; `auto` workers: one per alive node
        from bench.raypool import RayPool

        pool = RayPool(0 if spec.workers == "auto" else n_workers, spec.ray, endpoints, api_key, tgt.request_timeout_s, tgt.headers)
        await pool.start()
        n_workers = pool.n
        doc["client"].update(workers=n_workers, ray=spec.ray, why=workers_why if spec.workers != "auto" else "auto: one per Ray node",
                             actors=[{**pool.where[w], "clock_offset_ns": pool.offset_ns[w], "clock_rtt_ns": pool.rtt_ns[w]}
                                     for w in range(pool.n)])
        doc["client"]["pids"] = list(pool.pids)
    elif n_workers > 1:
        pool = WorkerPool(n_workers, endpoints, api_key, tgt.request_timeout_s, tgt.headers)
        await pool.start()
        doc["client"]["pids"] = list(pool.pids)
    writer = IncrementalWriter(run_dir)
    progress = Progress()
    doc["anchor"] = {"wall_ns": time.time_ns(), "perf_ns": perf_ns()}
    results.write_run_doc(run_dir, doc)
    http = cl.make_client(tgt.url, api_key, tgt.request_timeout_s, extra_headers=tgt.headers)
    https = [http] + [cl.make_client(u, api_key, tgt.request_timeout_s, extra_headers=tgt.headers) for u in endpoints[1:]]
    stop_flush = asyncio.Event()

    async def flusher() -> None:
        while not stop_flush.is_set():
            try:
                await asyncio.wait_for(stop_flush.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            await asyncio.to_thread(writer.flush)
            if on_progress:
                on_progress(progress)

    import gc

    import pyarrow.parquet  # noqa: F401  (imported now, not by the first flush mid-run: ~50 ms holding the GIL)

    gc.collect()
    gc.freeze()  # setup objects leave the collector's view: shorter GC pauses during the run
    gc_threshold = gc.get_threshold()
    gc.set_threshold(50_000, 50, 1000)
    ft = asyncio.ensure_future(flusher())
    stalls = LoopStalls()
    mon = asyncio.ensure_future(stalls.watch())
    status, error = "complete", None
    if telemetry is not None:
        await telemetry.start()
    doc["window_wall"] = {"start": time.time()}
    load = spec.load
    probe_mon = ProbeMonitor(spec.probe, spec.slos, "qps" if load.open_loop else "concurrency",
                             load.warm_seconds(), int(load.warmup) if load.warmup_unit == "r" else 0,
                             load.duration_s if not spec.probe else None)
    try:
        await drive(spec, wl, items, https if len(https) > 1 else http, prepare, writer, progress, monitor=probe_mon, pool=pool)
    except asyncio.CancelledError:
        status, error = "interrupted", "interrupted (Ctrl-C or signal); results up to that moment are saved"
    except Exception as e:  # the point was not measured as planned: never `complete`
        status, error = "failed", cl.redact(one_line(e), http.secrets)
    finally:
        mon.cancel()  # the watch covers the measurement, not the shutdown work below
        gc.set_threshold(*gc_threshold)
        gc.unfreeze()
        doc["window_wall"]["end"] = time.time()
        if telemetry is not None:
            doc["telemetry"] = await telemetry.stop(run_dir)
        stop_flush.set()
        await asyncio.gather(ft, mon, return_exceptions=True)
        for h in https:
            await h.aclose()
        if pool is not None:
            await pool.close()
        window = None
        if load.duration_s is not None and not load.replay and load.warmup_unit == "s" and probe_mon.t0:
            # the warmup's end is known only now (it grows with the request lifetime): the records are flagged
            # against it while the parts are compacted
            window = probe_mon.window_ns(perf_ns())
            doc["window_ns"] = list(window)
        await asyncio.to_thread(writer.close, window[0] if window else None)
        summary, cols = await asyncio.to_thread(
            summarize_run, run_dir, spec.slos, offered_qps=spec.load.qps,
            mode="qps" if load.open_loop else "concurrency",
            expect_exact_osl=tgt.ignore_eos, window_ns=window, conf=probe_mon.conf,
            lifetimes_needed=spec.probe.window_lifetimes if spec.probe else 3.0, aborted=probe_mon.aborted)
        def sent(idx: set[int]) -> int:  # requests sent, not prompts built
            return int(np.isin(np.fromiter(idx, np.int64, len(idx)), cols.index).sum())

        n_clipped, n_reused = sent(wl.clipped_idx), sent(wl.reused)
        doc["workload"]["clipped_to_max_model_len"] = n_clipped
        if wl.size is not None and not load.replay:
            doc["workload"]["dataset_rows_reused"] = n_reused
        if load.stages or load.ramp_up_s:
            summary["per_stage"] = per_stage(cols, load.rate_pieces(), bool(load.ramp_up_s))
        if tgt.model_mix:
            summary["per_model"] = per_model(cols, tgt.model_mix)
        if len(endpoints) > 1:
            summary["per_endpoint"] = per_endpoint(cols, [cl.redact_url(u) for u in endpoints])
            kinds = {(e["server_kind"], e["server_version"]) for e in doc["target"]["endpoints"]}
            if len(kinds) > 1:
                summary["warnings"].append(warning(
                    "replicas_differ", "replicas differ: " + ", ".join(f"{e['url']} {e['server_kind']} {e['server_version']}"
                                                                      for e in doc["target"]["endpoints"]) + "; the point mixes servers",
                    "measure one version at a time", replicas=doc["target"]["endpoints"]))
            if spec.scrape_metrics:
                summary["warnings"].append(warning(
                    "metrics_first_replica", f"server metrics: scraped from the first replica ({cl.redact_url(tgt.url)}) only",
                    "read the summary's server section as that replica's, not the fleet's", url=cl.redact_url(tgt.url)))
        cq = summary["client_queue"]
        cq["cap"] = load.max_concurrency or (DEFAULT_MAX_IN_FLIGHT if load.open_loop else None)
        cq["cap_from"] = "--max-concurrency" if load.max_concurrency else "default" if load.open_loop else None
        cq["not_sent"] = progress.not_sent
        if progress.not_sent:
            summary["warnings"].append(warning(
                "not_sent", f"not sent: {progress.not_sent} requests were due but still waited for an in-flight slot when the run "
                "stopped; they are in no figure", "raise --max-concurrency or lower the rate", n=progress.not_sent))
        if cq["waited"] and not load.max_concurrency:
            summary["warnings"].append(warning(
                "in_flight_cap", f"in-flight cap: {cq['waited']} requests waited at the client (p99 {cq['wait_ms']['p99']:,.0f} ms) "
                f"because {DEFAULT_MAX_IN_FLIGHT} were already in flight — the server was not keeping up with this rate; their "
                "latencies count from the scheduled send, so they include the wait", "set --max-concurrency to change the cap",
                waited=cq["waited"], wait_p99_ms=cq["wait_ms"]["p99"], cap=DEFAULT_MAX_IN_FLIGHT))
        doc["probe"] = probe_mon.report()
        summary["probe"] = {k: v for k, v in doc["probe"].items() if k not in ("looks", "rule")} | {"n_looks": len(probe_mon.looks)}
        doc["client_health"] = {"loop_stalls": stalls.report()}
        if stalls.n:
            summary["warnings"].append(stalls.warning("the scheduler's event loop" if pool else "the event loop"))
        summary["client"] = {"workers": n_workers, **({"auto_why": doc["client"]["why"]} if spec.workers == "auto" else {})}
        if pool is not None:  # each worker's health; the run is judged by the worst
            per = pool.per_worker(cols)
            doc["client_health"]["workers"] = per
            lags = [(x["send_lag_ms"]["p99"], x["worker"]) for x in per if x["send_lag_ms"]["p99"] is not None]
            summary["client"].update(per_worker_requests=[x["requests"] for x in per],
                                     worst_send_lag_p99_ms=max(lags)[0] if lags else None, worst_worker=max(lags)[1] if lags else None)
            for x in per:
                if x["loop_stalls"] and x["loop_stalls"]["n"]:
                    summary["warnings"].append(LoopStalls.from_report(x["loop_stalls"]).warning(f"worker {x['worker']}'s event loop"))
                if "died" in x:
                    summary["warnings"].append(warning("worker_died", f"worker died: {x['died']}; its in-flight requests are recorded "
                                                       "as failed", "measure the point again", worker=x["worker"]))
        summary["streams_without_done"] = int((cols.ok & ~cols.done_marker).sum())
        if n_clipped:
            summary["warnings"].append(warning(
                "clipped", f"clipped: {n_clipped} requests were shortened to fit max_model_len={wspec.max_model_len}",
                "serve a longer context or filter the trace", n=n_clipped, max_model_len=wspec.max_model_len))
        if n_reused:
            summary["warnings"].append(warning(
                "dataset_wrapped", f"dataset wrapped around: it has {wl.size} rows and {n_reused} requests reused rows from the start",
                "give a longer dataset or fewer --requests/--duration for distinct prompts", rows=wl.size, reused=n_reused))
        if telemetry is not None and "telemetry" in doc:
            from bench.telemetry import attach_to_summary

            attach_to_summary(summary, doc["telemetry"], run_dir, _wall_window(doc, summary))
        _prefix_cache_check(summary, spec, cache_reset)
        if idle_before is not None and idle_before.idle is False:
            summary["warnings"].append(warning(
                "server_busy", f"server busy: {idle_before.busy} requests still running/waiting from earlier work after "
                f"{idle_before.waited_s:.0f} s; this point started behind them", "rerun it when the server is idle",
                busy=idle_before.busy, waited_s=idle_before.waited_s))
        if len(cols) and summary["n_ok"] == 0 and status == "complete" and not probe_mon.aborted:
            status = "failed"
            kinds = summary["errors"]
            said = cols.error[cols.error != ""]
            first = said[0] if len(said) else ""
            error = f"all {len(cols)} requests failed ({', '.join(f'{k}={v}' for k, v in kinds.items())}): {first}"
        doc.update(status=status, error=error, summary=summary, ended_at=time.time())
        results.write_run_doc(run_dir, doc)
    return doc


def _wall_window(doc: dict, summary: dict) -> tuple[float, float] | None:
    """The measurement window in wall-clock seconds (telemetry timelines are stamped with time.time())."""
    a, w = doc["anchor"], summary["window_ns"]
    if not a or not w or w[1] <= w[0]:
        return None
    return tuple((a["wall_ns"] + (t - a["perf_ns"])) / 1e9 for t in w)


def _prefix_cache_check(summary: dict, spec: RunSpec, cache_reset: str) -> None:
    """Record the server's prefix-cache hit rate over the point, and warn when it is more than the
    workload's declared sharing explains (a cache serving an earlier probe's prompts inflates the knee)."""
    rate = ServerStats.model_validate(summary["server"]).prefix_cache_hit_rate if "server" in summary else None
    w = spec.workload
    expected = None
    if not w.dataset and w.isl.kind != "trace":
        expected = min(1.0, w.prefix_tokens / max(1.0, w.isl.mean)) if w.prefix_groups else 0.0
    summary["prefix_cache"] = {"hit_rate": rate, "declared_sharing": expected,
                               "reset": cache_reset}
    if rate is not None and expected is not None and rate > expected + 0.05:
        summary["warnings"].append(warning(
            "prefix_cache_reuse", f"prefix cache: the server served {100 * rate:.0f}% of prompt tokens from its cache, but the workload "
            f"shares {100 * expected:.0f}%: earlier prompts are being reused", "keep --reset-prefix-cache on (vLLM needs "
            "VLLM_SERVER_DEV_MODE=1 for /reset_prefix_cache) or use a new --seed", hit_rate=rate, declared_sharing=expected))


def execute_run(spec: RunSpec, run_dir: Path, api_key: str | None = None, on_progress=None, telemetry=None,
                extra: dict | None = None, prompts: PromptCache | None = None) -> dict:
    """Synchronous wrapper with clean Ctrl-C: the first SIGINT stops sending and saves what was measured."""
    import signal

    loop = new_event_loop()
    main = loop.create_task(run_async(spec, run_dir, api_key, on_progress, telemetry, extra, prompts))

    def _stop(*_):
        main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _stop)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        return loop.run_until_complete(main)
    except asyncio.CancelledError:  # interrupted during setup: run_async marked run.json `interrupted`
        from bench import results

        if not (run_dir / "run.json").is_file():  # before run_async wrote anything
            return {"run_id": run_dir.name, "status": "interrupted", "error": "interrupted (Ctrl-C or signal) before the run started"}
        return results.read_run_doc(run_dir)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        loop.close()


def env_api_key(spec: RunSpec, explicit: str | None) -> str | None:
    return explicit or os.environ.get(spec.target.api_key_env) or None


__all__ = ["execute_run", "run_async", "RunFailed", "SpecError"]
