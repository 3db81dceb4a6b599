"""③ The client's hands: pacing (sleep_until), loop health (LoopStalls), and worker processes on one host.

One process reading every stream is the client's ceiling: each SSE chunk costs a socket read, a parse
and a timestamp under one GIL (a 16-core Xeon kept TTFT bias under 1 ms to ~11 k chunks/s at OSL 32 and
~26 k at OSL 256, and lost it beyond). `WorkerPool` moves that per-chunk work into N worker processes
while everything that *decides* stays in the scheduling process: the absolute schedule, the in-flight
cap, warmup, the probe monitor (its early stop sees every request), multi-turn follow-ups and saving.
The scheduler hands each request to the least-loaded worker `HANDOFF_NS` before its intended time; the
worker sleeps until that time and sends, so a request leaves on schedule to the worker's own pacing
precision, not the hand-off's. The worker sends back the first byte's time as it arrives (a probe may
stop on a TTFT already over) and the filled record when the request ends.

Every process on a Linux host reads the same CLOCK_MONOTONIC through time.perf_counter_ns, so intended,
sent and chunk times from different workers are on one clock and need no offset.

Faults: workers ignore SIGINT (the terminal sends it to the whole process group; the scheduler cancels
what is in flight and each worker returns the partial record of what it was reading), exit when the
scheduling process is gone (kill -9 keeps what the scheduler had flushed, as with one process), and a
worker that dies loses only its own in-flight requests, which are recorded as failed with the reason.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import fields
from typing import Any

from bench import client as cl
from bench.records import Columns, RequestRecord
from bench.warn import warning

perf_ns = time.perf_counter_ns
HANDOFF_NS = 20_000_000  # a request reaches its worker 20 ms before it is due
# the fields a worker fills; the scheduler owns the rest (index, intended time, warmup, stage, model, ...)
_SCHEDULER_FIELDS = {"index", "intended_ns", "slot_ns", "warmup", "isl", "osl", "prompt_tokens_local", "prefix_group",
                     "source", "conversation", "turn", "stage", "model", "worker", "endpoint"}
FILLED = tuple(f.name for f in fields(RequestRecord) if f.name not in _SCHEDULER_FIELDS)
# one process's safe chunk rate when this host has not been calibrated (`trilemma calibrate` caches its own):
# the lower of the two bias-free figures measured on a 16-core Xeon (11 k chunks/s at OSL 32)
DEFAULT_SAFE_CHUNKS_PER_S = 10_000.0


async def sleep_until(t_ns: int, spin: bool) -> None:
    """Sleep to an absolute perf_counter time. The event loop wakes up to ~1 ms late (epoll's ms
    timeout), so when `spin` the last ~1.2 ms is spent yielding (sleep(0)) to land within ~50 µs."""
    d = t_ns - perf_ns()
    if d > 1_200_000 or not spin:
        if d > 0:
            await asyncio.sleep((d - (1_200_000 if spin else 0)) / 1e9)
        # never early: the loop may run a timer up to its clock resolution before its time (measured: a closed
        # loop's first send 124 µs before t0 was flagged warmup, and a 1-request run had nothing measured)
    while perf_ns() < t_ns:
        await asyncio.sleep(0)


class LoopStalls:
    """Watches the client's event loop: a 20 ms sleep that wakes more than 50 ms late is a stall, during
    which no request could be sent on time. The process's CPU time over each stall tells the two causes
    apart: near 100% — the client itself was busy (too much work per event: lower the rate); near 0% —
    the process was not running (other processes held the cores: move the client or the server)."""

    PERIOD_S, LIMIT_MS = 0.02, 50.0

    def __init__(self) -> None:
        self.n, self.max_ms, self.total_ms, self.cpu_ms = 0, 0.0, 0.0, 0.0

    async def watch(self) -> None:
        while True:
            t, c = perf_ns(), time.process_time_ns()
            await asyncio.sleep(self.PERIOD_S)
            late = (perf_ns() - t) / 1e6 - self.PERIOD_S * 1e3
            if late > self.LIMIT_MS:
                self.n += 1
                self.max_ms = max(self.max_ms, late)
                self.total_ms += late
                self.cpu_ms += (time.process_time_ns() - c) / 1e6

    @property
    def cpu_share(self) -> float | None:
        """Process CPU time over stall time: ~1 busy client, ~0 client not running."""
        return self.cpu_ms / self.total_ms if self.total_ms else None

    def report(self) -> dict:
        share = self.cpu_share
        return {"over_ms": self.LIMIT_MS, "n": self.n, "max_ms": round(self.max_ms, 1), "total_ms": round(self.total_ms, 1),
                "process_cpu_share": None if share is None else round(share, 3)}

    def warning(self, who: str = "the event loop") -> dict:
        share = self.cpu_share or 0.0
        busy = share > 0.5
        cause = ("the client process was busy" if busy else
                 "the client process was not running: other processes held the cores")
        remedy = "lower the rate, cap --max-concurrency, or add --workers" if busy else "give the client its own cores or machine"
        return warning("client_stalls", f"client stalls: {who} was blocked {self.n} times for > {self.LIMIT_MS:g} ms (max "
                       f"{self.max_ms:.0f} ms, {100 * share:.0f}% process CPU during them): {cause}", remedy,
                       n=self.n, max_ms=self.max_ms, cpu_share=share, who=who)

    @classmethod
    def from_report(cls, rep: dict) -> "LoopStalls":
        s = cls()
        s.n, s.max_ms, s.total_ms = int(rep.get("n", 0)), float(rep.get("max_ms", 0.0)), float(rep.get("total_ms", 0.0))
        s.cpu_ms = float(rep.get("process_cpu_share") or 0.0) * s.total_ms
        return s


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (lower per-event overhead: less timing bias), else asyncio's."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# ---- worker count ---------------------------------------------------------------------------------------

def _cache_file():
    import socket
    from pathlib import Path

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trilemma" / "calibrate" / f"{socket.gethostname()}.json"


def cached_safe_rate() -> tuple[float, str]:
    """This host's per-process safe chunk rate: `trilemma calibrate`'s figure where it has run here, else the default."""
    import json

    try:
        doc = json.loads(_cache_file().read_text())
        return float(doc["safe_chunks_per_s"]), f"`trilemma calibrate` on this host, {doc.get('measured_at', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_SAFE_CHUNKS_PER_S, "no calibration on this host: default for one process"


def save_safe_rate(chunks_per_s: float, detail: dict) -> None:
    import json

    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps({"safe_chunks_per_s": chunks_per_s, "measured_at": time.strftime("%Y-%m-%d %H:%M"), **detail}))
    except OSError:
        pass


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(chunks_per_s: float | None) -> tuple[int, str]:
    """How many worker processes a load needs: its expected chunk rate over one process's safe rate,
    at most one per core but one (the scheduler's). One when the rate is unknown (a closed loop)."""
    safe, source = cached_safe_rate()
    if not chunks_per_s:
        return 1, "the load's chunk rate is unknown before it runs (closed loop): 1 process"
    n = max(1, min(math.ceil(chunks_per_s / safe), max(1, cpu_count() - 1)))
    why = f"expected {chunks_per_s:,.0f} chunks/s over a safe {safe:,.0f} per process ({source}); {cpu_count()} cores"
    return n, why


# ---- worker process -------------------------------------------------------------------------------------

def _worker_main(w: int, urls: list[str], api_key: str | None, timeout_s: float, headers: dict[str, str],
                 jobs: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler decides when to stop; it tells us
    ppid = os.getppid()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(w, urls, api_key, timeout_s, headers, jobs, results, ppid))
    finally:
        loop.close()


async def _serve(w: int, urls: list[str], api_key: str | None, timeout_s: float, headers: dict[str, str],
                 jobs: Any, results: Any, ppid: int) -> None:
    import gc

    loop = asyncio.get_running_loop()
    https = [cl.make_client(u, api_key, timeout_s, extra_headers=headers) for u in urls]  # one per endpoint
    tasks: dict[int, asyncio.Task] = {}
    stop = asyncio.Event()
    stalls = LoopStalls()

    async def one(key: int, due_ns: int, path: str, body: bytes, endpoint: int) -> None:
        rec = RequestRecord(index=key, intended_ns=due_ns)
        try:
            await sleep_until(due_ns, True)
            await cl.send_streaming(https[endpoint], cl.Prepared(path, body), rec, lambda t: results.put(("fb", key, t)))
        except asyncio.CancelledError:
            rec.end_ns = rec.end_ns or perf_ns()
        finally:
            tasks.pop(key, None)
            results.put(("done", key, tuple(getattr(rec, f) for f in FILLED)))

    def on_msg(msg: tuple) -> None:
        if msg[0] == "send":
            _, key, due_ns, path, body, endpoint = msg
            tasks[key] = loop.create_task(one(key, due_ns, path, body, endpoint))
        elif msg[0] == "cancel":
            t = tasks.get(msg[1])
            if t is not None:
                t.cancel()
        elif msg[0] == "stop":
            stop.set()

    def reader() -> None:
        while True:
            try:
                msg = jobs.get(timeout=0.5)
            except queue.Empty:
                if os.getppid() != ppid:  # the scheduler is gone (killed): nothing will collect our records
                    os._exit(0)
                continue
            loop.call_soon_threadsafe(on_msg, msg)
            if msg[0] == "stop":
                return

    threading.Thread(target=reader, daemon=True, name=f"trilemma-worker-{w}-jobs").start()
    watch = asyncio.ensure_future(stalls.watch())
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    results.put(("ready", w, os.getpid()))
    await stop.wait()
    for t in list(tasks.values()):
        t.cancel()
    await asyncio.gather(*list(tasks.values()), return_exceptions=True)
    await asyncio.sleep(0)  # let the cancelled requests' finally blocks post their records
    watch.cancel()
    for h in https:
        await h.aclose()
    results.put(("bye", w, stalls.report()))


# ---- the scheduler's side -------------------------------------------------------------------------------

def worker_health(c: Columns, w: int, stalls: dict | None, died: str | None, **where: Any) -> dict:
    """One worker's share of a point and how it kept time: requests, send lag p50/p99 (measured requests), loop stalls."""
    import numpy as np

    mine = c.worker == w
    sent = mine & (c.sent_ns != 0) & ~c.warmup
    lag = (c.sent_ns[sent] - c.intended_ns[sent]) / 1e6
    return {"worker": w, **where, "requests": int(mine.sum()),
            "send_lag_ms": {"p50": float(np.percentile(lag, 50)) if lag.size else None,
                            "p99": float(np.percentile(lag, 99)) if lag.size else None},
            "loop_stalls": stalls, **({"died": died} if died else {})}


class Spreader:
    """Which of a target's endpoints (replicas) gets the next request: the one with the fewest requests in
    flight (ties taken in turn), or each in turn. A conversation stays on the replica of its first turn
    (session affinity, as a serving router keeps it, so its history can be served from that replica's prefix cache)."""

    def __init__(self, n: int, mode: str = "least"):
        self.n, self.mode = n, mode
        self.in_flight = [0] * n
        self._next = 0
        self._sticky: dict[int, int] = {}

    def pick(self, conversation: int = -1) -> int:
        e = self._sticky.get(conversation, -1) if conversation >= 0 else -1
        if e < 0:
            e = self._next
            if self.mode != "round-robin":  # the fewest in flight; ties in turn, so an idle fleet is still spread
                lo = min(self.in_flight)
                e = next(x for k in range(self.n) if self.in_flight[x := (self._next + k) % self.n] == lo)
            self._next = (e + 1) % self.n
            if conversation >= 0:
                self._sticky[conversation] = e
        self.in_flight[e] += 1
        return e

    def done(self, e: int) -> None:
        self.in_flight[e] -= 1


class WorkerPool:
    """N worker processes that send requests for the scheduler. `send` has `cl.send_streaming`'s contract:
    it fills `rec` and never raises for a request's failure; cancelling it cancels the request in its worker
    and keeps the partial record."""

    def __init__(self, n: int, urls: list[str], api_key: str | None, timeout_s: float, headers: dict[str, str] | None = None):
        ctx = mp.get_context("spawn")  # no fork under a running event loop and its threads
        self.n = n
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker_main, args=(w, list(urls), api_key, timeout_s, dict(headers or {}), self.jobs[w], self.results),
                                  daemon=True, name=f"trilemma-worker-{w}") for w in range(n)]
        self.in_flight = [0] * n
        self.sent = [0] * n
        self.pids: list[int | None] = [None] * n
        self.stalls: list[dict | None] = [None] * n
        self._pending: dict[int, tuple[RequestRecord, asyncio.Future, int]] = {}
        self._seq = 0
        self._ready = 0
        self._bye = 0
        self._closing = False  # a worker that exits after close() asked it to stop has not died
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_ev: asyncio.Event | None = None
        self._bye_ev: asyncio.Event | None = None
        self._reader: threading.Thread | None = None
        self._watch: asyncio.Task | None = None
        self.dead: dict[int, str] = {}

    async def start(self, timeout_s: float = 60.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready_ev, self._bye_ev = asyncio.Event(), asyncio.Event()
        for p in self.procs:
            p.start()
        self._reader = threading.Thread(target=self._read, daemon=True, name="trilemma-pool-results")
        self._reader.start()
        try:
            await asyncio.wait_for(self._ready_ev.wait(), timeout_s)
        except asyncio.TimeoutError:
            await self.close()
            raise RuntimeError(f"{self.n - self._ready} of {self.n} worker processes did not start within {timeout_s:.0f} s") from None
        self._watch = asyncio.ensure_future(self._watch_procs())

    def _read(self) -> None:
        while True:
            msg = self.results.get()
            if msg is None:
                return
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._on_msg, msg)
            except RuntimeError:  # the loop is closed
                return

    def _on_msg(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "fb":
            got = self._pending.get(msg[1])
            if got is not None and not got[0].first_byte_ns:
                got[0].first_byte_ns = msg[2]
        elif kind == "done":
            got = self._pending.pop(msg[1], None)
            if got is None:
                return
            rec, fut, w = got
            for name, v in zip(FILLED, msg[2]):
                setattr(rec, name, v)
            self.in_flight[w] -= 1
            if not fut.done():
                fut.set_result(None)
        elif kind == "ready":
            self._ready += 1
            self.pids[msg[1]] = msg[2]
            if self._ready == self.n and self._ready_ev is not None:
                self._ready_ev.set()
        elif kind == "bye":
            self.stalls[msg[1]] = msg[2]
            self._bye += 1
            if self._bye >= self.n - len(self.dead) and self._bye_ev is not None:
                self._bye_ev.set()

    async def _watch_procs(self) -> None:
        """A worker that exits while requests are in its hands: those requests fail with the reason."""
        while True:
            await asyncio.sleep(0.5)
            for w, p in enumerate(self.procs):
                if w in self.dead or p.exitcode is None or self._closing:
                    continue
                self.dead[w] = f"worker process {w} (pid {p.pid}) exited with code {p.exitcode} while sending"
                for key, (rec, fut, ww) in list(self._pending.items()):
                    if ww == w:
                        del self._pending[key]
                        rec.end_ns = rec.end_ns or perf_ns()
                        rec.ok, rec.error_kind, rec.error = False, "client", self.dead[w]
                        if not fut.done():
                            fut.set_result(None)

    def _pick(self) -> int | None:
        alive = [w for w in range(self.n) if w not in self.dead]
        return min(alive, key=self.in_flight.__getitem__) if alive else None

    async def send(self, req: cl.Prepared, rec: RequestRecord, due_ns: int | None = None, endpoint: int = 0) -> None:
        """Send `req` at `due_ns` (default: now) to the target's `endpoint` from the least-loaded worker, filling `rec`."""
        assert self._loop is not None
        w = self._pick()
        if w is None:  # like a request whose connection failed: recorded, never raised
            rec.sent_ns = rec.end_ns = perf_ns()
            rec.ok, rec.error_kind, rec.error = False, "client", "every worker process has exited: " + "; ".join(self.dead.values())
            return
        self._seq += 1
        key = self._seq
        fut = self._loop.create_future()
        self._pending[key] = (rec, fut, w)
        rec.worker = w
        self.in_flight[w] += 1
        self.sent[w] += 1
        self.jobs[w].put(("send", key, due_ns or perf_ns(), req.path, req.body, endpoint))
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if key in self._pending:  # the worker stops reading it and returns the partial record
                self.jobs[w].put(("cancel", key))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), 5.0)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            raise

    def per_worker(self, cols: Columns) -> list[dict]:
        """Per-worker client health: requests, send lag, loop stalls."""
        return [worker_health(cols, w, self.stalls[w], self.dead.get(w), pid=self.pids[w]) for w in range(self.n)]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker (after its in-flight requests were cancelled or ended) and wait for them."""
        self._closing = True
        if self._bye_ev is not None and self._bye >= self.n - len(self.dead):
            self._bye_ev.set()
        for w, q in enumerate(self.jobs):
            if w not in self.dead:
                q.put(("stop",))
        if self._bye_ev is not None and self._ready == self.n:
            try:
                await asyncio.wait_for(self._bye_ev.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        if self._watch is not None:
            self._watch.cancel()
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            if p.pid is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2)
        self.results.put(None)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
        for q in (*self.jobs, self.results):
            q.close()
            q.cancel_join_thread()
