"""③ Client workers across hosts on Ray (the optional extra `trilemma[ray]`; Ray is the distributed engine
vLLM itself runs on).

`RayPool` has `WorkerPool`'s contract (bench/workers.py): the schedule, the in-flight cap, the probe monitor,
multi-turn and saving stay in the driver (the process `trilemma run`/`sweep` runs in); each request is handed
to an async actor, `HANDOFF_NS` before it is due, and the actor sends it at that time and reads the stream.
Actors are dealt round-robin over the cluster's alive nodes, each pinned to its node (a hard node affinity:
Ray's SPREAD strategy is best effort and zero-CPU actors were seen placed together on one node; a soft affinity
fell back to the head when the scheduler's view of a just-joined node lagged, on a loaded machine).

Clocks: an actor on another host reads another CLOCK_MONOTONIC. Before the load starts, the driver measures
each actor's clock offset by a ping exchange (16 round trips; the one with the smallest round trip gives
offset = actor time − midpoint of the driver's send and receive, good to half that round trip). Due times
are sent in the actor's clock and every time an actor records (sent, first byte, chunks, end) is brought back
to the driver's, so intended and measured times are on one clock; offsets and round trips are recorded.

Faults: an actor (or its node) that dies fails only the requests it held, recorded as failed with the reason;
the others go on. Ctrl-C cancels what is in flight: each actor stops reading and returns the partial record.
"""

from __future__ import annotations

import asyncio
import socket
import time
from array import array
from typing import Any

from bench import client as cl
from bench.records import Columns, RequestRecord
from bench.workers import FILLED, LoopStalls, sleep_until, worker_health

perf_ns = time.perf_counter_ns
_CLIENT_TIMES = ("sent_ns", "first_byte_ns", "end_ns")  # scalars in the client's clock; chunk_ns is the one array
_IDX = {f: i for i, f in enumerate(FILLED)}


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install 'trilemma[ray]' (or pip install ray) on every host") from None
    return ray


class _Sender:
    """The actor: sends requests at their due time and reads their streams (one asyncio loop per actor)."""

    def __init__(self, w: int, urls: list[str], api_key: str | None, timeout_s: float, headers: dict[str, str]):
        self.w, self.urls, self.api_key, self.timeout_s, self.headers = w, urls, api_key, timeout_s, headers
        self.https: list[cl.StreamClient] = []
        self.tasks: dict[int, asyncio.Task] = {}
        self.stalls = LoopStalls()
        self.watch: asyncio.Task | None = None

    async def start(self) -> dict:
        import os

        import ray

        self.https = [cl.make_client(u, self.api_key, self.timeout_s, extra_headers=self.headers) for u in self.urls]
        self.watch = asyncio.ensure_future(self.stalls.watch())
        return {"host": socket.gethostname(), "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    async def clock(self) -> int:
        return perf_ns()

    async def send(self, key: int, due_ns: int, path: str, body: bytes, endpoint: int) -> tuple:
        rec = RequestRecord(index=key, intended_ns=due_ns)
        task = asyncio.current_task()
        assert task is not None
        self.tasks[key] = task
        try:
            await sleep_until(due_ns, True)
            await cl.send_streaming(self.https[endpoint], cl.Prepared(path, body), rec)
        except asyncio.CancelledError:  # the driver's cancel: the partial record goes back
            rec.end_ns = rec.end_ns or perf_ns()
        finally:
            self.tasks.pop(key, None)
        return tuple(getattr(rec, f) for f in FILLED)

    async def cancel(self, key: int) -> None:
        t = self.tasks.get(key)
        if t is not None:
            t.cancel()

    async def stop(self) -> dict:
        for t in list(self.tasks.values()):
            t.cancel()
        if self.watch is not None:
            self.watch.cancel()
        for h in self.https:
            await h.aclose()
        return self.stalls.report()


class RayPool:
    """N sender actors on a Ray cluster, with `WorkerPool`'s interface."""

    def __init__(self, n: int, address: str, urls: list[str], api_key: str | None, timeout_s: float,
                 headers: dict[str, str] | None = None):
        self.ray = import_ray()
        self.n, self.address = n, address
        self._args = (list(urls), api_key, timeout_s, dict(headers or {}))
        self.actors: list[Any] = []
        self.in_flight = [0] * n
        self.sent = [0] * n
        self.pids: list[int | None] = [None] * n
        self.where: list[dict] = [{} for _ in range(n)]
        self.offset_ns = [0] * n
        self.rtt_ns = [0] * n
        self.stalls: list[dict | None] = [None] * n
        self.dead: dict[int, str] = {}
        self._seq = 0

    async def start(self, timeout_s: float = 120.0) -> None:
        ray = self.ray
        if not ray.is_initialized():
            try:
                local = {"include_dashboard": False} if self.address == "local" else {}
                ray.init(address=None if self.address == "local" else self.address, log_to_driver=False,
                         configure_logging=False, **local)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RuntimeError(f"--ray {self.address}: cannot reach a Ray cluster ({str(e).splitlines()[0][:200]}); start one with "
                                   "`ray start --head` and pass its address, or use --ray auto on a node of it") from None
        if self.n == 0:  # --workers auto: one actor per alive node
            self.n = max(1, sum(1 for nd in ray.nodes() if nd.get("Alive")))
            self.in_flight, self.sent, self.pids = [0] * self.n, [0] * self.n, [None] * self.n
            self.where, self.offset_ns, self.rtt_ns, self.stalls = [{} for _ in range(self.n)], [0] * self.n, [0] * self.n, [None] * self.n
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_cls = ray.remote(num_cpus=0, max_concurrency=100_000)(_Sender)
        nodes = sorted(nd["NodeID"] for nd in ray.nodes() if nd.get("Alive"))
        self.actors = [actor_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[w % len(nodes)], soft=False)
                                         if nodes else "SPREAD").remote(w, *self._args) for w in range(self.n)]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*(a.start.remote() for a in self.actors)), timeout_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"--ray {self.address}: the {self.n} sender actors did not start within {timeout_s:g} s on nodes "
                               f"{', '.join(n[:8] for n in nodes)} (a node that left the cluster?); check `ray status` and run again") from None
        for w, info in enumerate(infos):
            self.where[w], self.pids[w] = info, info["pid"]
        for w, a in enumerate(self.actors):  # clock offsets: min round trip of 16 pings
            best = None
            for _ in range(16):
                t1 = perf_ns()
                ta = await a.clock.remote()
                t2 = perf_ns()
                if best is None or t2 - t1 < best[0]:
                    best = (t2 - t1, ta - (t1 + t2) // 2)
            assert best is not None
            self.rtt_ns[w], self.offset_ns[w] = best

    def _pick(self) -> int | None:
        alive = [w for w in range(self.n) if w not in self.dead]
        return min(alive, key=self.in_flight.__getitem__) if alive else None

    def _fill(self, rec: RequestRecord, vals: tuple, off: int) -> None:
        for name, v in zip(FILLED, vals):
            setattr(rec, name, v)
        for name in _CLIENT_TIMES:  # the actor's clock -> the driver's
            if getattr(rec, name):
                setattr(rec, name, getattr(rec, name) - off)
        if off:
            rec.chunk_ns = array("q", (t - off for t in vals[_IDX["chunk_ns"]]))

    async def send(self, req: cl.Prepared, rec: RequestRecord, due_ns: int | None = None, endpoint: int = 0) -> None:
        w = self._pick()
        if w is None:
            rec.sent_ns = rec.end_ns = perf_ns()
            rec.ok, rec.error_kind, rec.error = False, "client", "every Ray worker actor has died: " + "; ".join(self.dead.values())
            return
        self._seq += 1
        key, off = self._seq, self.offset_ns[w]
        rec.worker = w
        self.in_flight[w] += 1
        self.sent[w] += 1
        ref = self.actors[w].send.remote(key, (due_ns or perf_ns()) + off, req.path, req.body, endpoint)
        try:
            try:
                vals = await ref
            except asyncio.CancelledError:
                self.actors[w].cancel.remote(key)
                try:
                    vals = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(self._get(ref))), 5.0)
                    self._fill(rec, vals, off)
                except (asyncio.TimeoutError, asyncio.CancelledError, self.ray.exceptions.RayError):
                    pass
                raise
            self._fill(rec, vals, off)
        except self.ray.exceptions.RayError as e:  # the actor or its node died: only its requests are lost
            where = self.where[w]
            self.dead.setdefault(w, f"Ray worker {w} (pid {where.get('pid')} on {where.get('host')}) died: {type(e).__name__}")
            rec.end_ns = rec.end_ns or perf_ns()
            rec.ok, rec.error_kind, rec.error = False, "client", self.dead[w]
        finally:
            self.in_flight[w] -= 1

    @staticmethod
    async def _get(ref: Any) -> Any:
        return await ref

    def per_worker(self, cols: Columns) -> list[dict]:
        """Per-actor client health (workers.worker_health) with where each ran and its clock offset."""
        return [worker_health(cols, w, self.stalls[w], self.dead.get(w), pid=self.pids[w], host=self.where[w].get("host"),
                              node_id=self.where[w].get("node_id"), clock_offset_ns=self.offset_ns[w], clock_rtt_ns=self.rtt_ns[w])
                for w in range(self.n)]

    async def close(self, timeout_s: float = 10.0) -> None:
        for w, a in enumerate(self.actors):
            if w in self.dead:
                continue
            try:
                self.stalls[w] = await asyncio.wait_for(self._get(a.stop.remote()), timeout_s)
            except (asyncio.TimeoutError, self.ray.exceptions.RayError):
                pass
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 — already gone with its node
                pass
