"""The client's event-loop stall watch tells a busy client from a starved one."""

import asyncio
import time

from bench.runner import LoopStalls


def _watch_while(block) -> LoopStalls:
    async def main():
        st = LoopStalls()
        mon = asyncio.ensure_future(st.watch())
        await asyncio.sleep(0.05)
        block()  # holds the event loop
        await asyncio.sleep(0.05)
        mon.cancel()
        await asyncio.gather(mon, return_exceptions=True)
        return st

    return asyncio.run(main())


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_busy_client_stall_is_counted_with_its_cpu():
    st = _watch_while(lambda: _spin(0.2))
    r = st.report()
    assert r["n"] == 1 and 120 <= r["max_ms"] <= 400 and r["process_cpu_share"] > 0.5
    w = st.warning()
    assert w["code"] == "client_stalls" and "client process was busy" in w["message"] and "--workers" in w["remedy"]


def test_stall_without_cpu_reads_as_not_running():
    st = _watch_while(lambda: time.sleep(0.2))  # the process is off the CPU, like a starved client
    r = st.report()
    assert r["n"] == 1 and r["process_cpu_share"] < 0.5
    w = st.warning()
    assert "other processes held the cores" in w["message"] and "own cores" in w["remedy"] and w["values"]["n"] >= 1


def test_no_stall_no_warning_data():
    async def main():
        st = LoopStalls()
        mon = asyncio.ensure_future(st.watch())
        await asyncio.sleep(0.15)
        mon.cancel()
        await asyncio.gather(mon, return_exceptions=True)
        return st

    assert asyncio.run(main()).report() == {"over_ms": 50.0, "n": 0, "max_ms": 0.0, "total_ms": 0.0, "process_cpu_share": None}
