"""runner.drive, the scheduler core, against a fake streaming client (no HTTP, no server): schedule
offsets, warmup by time and by count, the concurrency cap, the closed loop, multi-turn follow-ups and
cancellation. The fake answers each request in a fixed time, so what is checked is the scheduler's own
bookkeeping, exactly."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from bench import client as cl
from bench import metrics, runner, schedule
from bench.config import RunSpec, WorkloadSpec
from bench.prompts import PromptBuilder, WordTokenizer
from bench.records import IncrementalWriter, read_records
from bench.workload import Workload

TTFT_S, GAP_S, TOKENS = 0.02, 0.004, 4


class FakeServer:
    """Stands in for client.send_streaming: TTFT_S to the first token, then TOKENS - 1 gaps of GAP_S."""

    def __init__(self) -> None:
        self.in_flight = self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.sent_after_end: list[tuple[int, int]] = []  # (send, last end before it) for the closed loop
        self.last_end = 0

    async def send(self, http, prepared: cl.Prepared, rec) -> None:
        rec.sent_ns = runner.perf_ns()
        self.sent_after_end.append((rec.sent_ns, self.last_end))
        self.bodies.append(json.loads(prepared.body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(TTFT_S)
            rec.first_byte_ns = runner.perf_ns()
            for k in range(TOKENS):
                if k:
                    await asyncio.sleep(GAP_S)
                rec.chunk_ns.append(runner.perf_ns())
                rec.chunk_tokens.append(1)
            rec.end_ns = runner.perf_ns()
            rec.ok, rec.status, rec.output_tokens, rec.output_text = True, 200, TOKENS, f"answer {rec.index}"
            self.last_end = rec.end_ns
        finally:
            self.in_flight -= 1


def _drive(tmp_path, monkeypatch, load: dict, workload: dict | None = None, api: str = "completions", after_s: float | None = None,
           how: str = "stop"):
    fake = FakeServer()
    monkeypatch.setattr(cl, "send_streaming", fake.send)
    spec = RunSpec(workload=workload or {"isl": 16, "osl": TOKENS}, load=load, seed=3, target={"model": "m", "api": api})
    wl = Workload(WorkloadSpec(**(workload or {"isl": 16, "osl": TOKENS})), PromptBuilder(WordTokenizer()), seed=3, api=api)
    items = [wl.item(i) for i in range(8)]
    writer = IncrementalWriter(tmp_path)
    progress = runner.Progress()
    stop = asyncio.Event()

    def prepare(it):
        return cl.build_body(api, "m", it.prompt, it.osl, ignore_eos=True, continuous_usage=True)

    mon = runner.ProbeMonitor(None, [], "qps" if spec.load.qps else "concurrency", spec.load.warmup if spec.load.warmup_unit == "s" else 0.0,
                              int(spec.load.warmup) if spec.load.warmup_unit == "r" else 0, spec.load.duration_s)

    async def main():
        task = asyncio.ensure_future(runner.drive(spec, wl, items, None, prepare, writer, progress, stop=stop, monitor=mon))
        if after_s is not None:
            asyncio.get_running_loop().call_later(after_s, stop.set if how == "stop" else task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    writer.close()
    recs = sorted(read_records(tmp_path), key=lambda r: (r.intended_ns, r.index))
    return fake, mon, recs, spec


def test_open_loop_sends_on_the_schedule_and_flags_warmup_by_time(tmp_path, monkeypatch):
    fake, mon, recs, spec = _drive(tmp_path, monkeypatch, {"qps": 40, "duration_s": 1.0, "warmup": 0.25})
    ld = spec.load
    offsets = schedule.open_loop_offsets_ns(ld.arrival, ld.qps, spec.seed, duration_s=ld.duration_s + ld.warmup)
    assert [r.intended_ns - mon.t0 for r in recs] == offsets.tolist()  # every scheduled send, at its offset
    assert all(r.warmup == (r.intended_ns < mon.t0 + 250_000_000) for r in recs)
    assert all(r.ok and len(r.chunk_ns) == TOKENS for r in recs)
    lag_ms = np.array([(r.sent_ns - r.intended_ns) / 1e6 for r in recs])
    assert np.median(lag_ms) < 5  # sent on time (the loop is otherwise idle)


def test_warmup_by_count_and_the_concurrency_cap(tmp_path, monkeypatch):
    fake, _, recs, _ = _drive(tmp_path, monkeypatch, {"qps": 400, "requests": 30, "warmup": 5, "warmup_unit": "r", "max_concurrency": 3})
    assert len(recs) == 35 and sum(r.warmup for r in recs) == 5
    assert sorted(r.index for r in recs if r.warmup) == [0, 1, 2, 3, 4]
    assert fake.max_in_flight == 3  # 400 req/s against ~32 ms requests would hold ~13 without the cap
    # the wait for a slot is queueing, not client lag: latencies still count from the intended send
    assert max((r.chunk_ns[0] - r.intended_ns) / 1e9 for r in recs) > 5 * TTFT_S
    waited = [r for r in recs if r.slot_ns]
    assert len(waited) >= 10 and all(r.slot_ns > r.intended_ns and r.sent_ns >= r.slot_ns for r in waited)
    assert max(metrics.slot_wait_ms(r) for r in recs) > 5 * TTFT_S * 1e3
    assert np.median([metrics.send_lag_ms(r) for r in recs]) < 5  # the client itself sent each as soon as it could


def test_an_open_loop_past_the_server_holds_at_most_the_default_cap_in_flight(tmp_path, monkeypatch):
    """Without --max-concurrency an open loop still caps what it holds in flight (its memory and sockets):
    past the cap the scheduler waits, creating nothing for the requests that wait, and sends them in
    schedule order as slots free; every scheduled request is still sent, none lost."""
    monkeypatch.setattr(runner, "DEFAULT_MAX_IN_FLIGHT", 4)
    fake, _, recs, spec = _drive(tmp_path, monkeypatch, {"qps": 500, "requests": 60})
    assert fake.max_in_flight == 4 and len(recs) == 60 and all(r.ok for r in recs)
    assert sum(1 for r in recs if r.slot_ns) > 40
    by_send = sorted(recs, key=lambda r: r.sent_ns)
    assert [r.index for r in by_send] == sorted(r.index for r in recs)  # FIFO: schedule order kept


def test_closed_loop_keeps_n_in_flight_and_sends_after_each_end(tmp_path, monkeypatch):
    fake, _, recs, _ = _drive(tmp_path, monkeypatch, {"concurrency": 2, "requests": 12})
    assert len(recs) == 12 and fake.max_in_flight == 2 and all(r.ok for r in recs)
    # after the first two, every send follows an end (a worker sends when its request ends)
    assert all(end > 0 and sent >= end for sent, end in fake.sent_after_end[2:])


def test_multi_turn_sends_the_follow_up_with_the_real_answer(tmp_path, monkeypatch):
    fake, _, recs, _ = _drive(tmp_path, monkeypatch, {"qps": 20, "requests": 2}, workload={"dataset": "mt-bench", "osl": TOKENS}, api="chat")
    turns = [r for r in recs if r.turn == 1]
    assert len(turns) == 2 and len(recs) == 4
    follow = [b for b in fake.bodies if len(b["messages"]) == 3]
    assert len(follow) == 2 and all(b["messages"][1] == {"role": "assistant", "content": b["messages"][1]["content"]} for b in follow)
    assert {b["messages"][1]["content"] for b in follow} == {f"answer {r.index}" for r in recs if r.turn == 0}
    for r in turns:  # the follow-up is sent right after its first turn ended, not on the schedule
        first = next(x for x in recs if x.conversation == r.conversation and x.turn == 0)
        assert 0 <= r.intended_ns - first.end_ns < 200_000_000


@pytest.mark.parametrize("load", [{"qps": 50, "duration_s": 5.0}, {"concurrency": 4, "duration_s": 5.0}])
def test_stop_ends_sending_and_drains(tmp_path, monkeypatch, load):
    fake, mon, recs, _ = _drive(tmp_path, monkeypatch, load, after_s=0.5, how="stop")
    assert (max(r.intended_ns for r in recs) - mon.t0) / 1e9 < 0.6  # nothing is sent after the stop
    assert recs and all(r.ok for r in recs) and fake.in_flight == 0  # what was in flight was answered


@pytest.mark.parametrize("load", [{"qps": 50, "duration_s": 5.0}, {"concurrency": 4, "duration_s": 5.0}])
def test_interrupt_cancels_what_is_in_flight_and_keeps_it_recorded(tmp_path, monkeypatch, load):
    """Ctrl-C cancels the drive task: requests in flight end as `cancelled`, written with what they measured."""
    fake, _, recs, _ = _drive(tmp_path, monkeypatch, load, after_s=0.5, how="cancel")
    cancelled = [r for r in recs if r.error_kind == "cancelled"]
    assert cancelled and all(not r.ok and r.end_ns > 0 for r in cancelled)
    assert all(r.ok for r in recs if r.error_kind != "cancelled") and fake.in_flight == 0
    assert len(recs) == len(fake.bodies)  # every request sent is on disk
