"""Worker count: --workers N|auto parsing, and auto's choice from the load's chunk rate and this host's safe rate."""

import pytest

from bench import workers
from bench.config import RunSpec, SpecError, parse_workers


def test_parse_workers_takes_a_count_or_auto_and_names_a_bad_value():
    assert parse_workers("auto") == "auto" and parse_workers(" AUTO ") == "auto"
    assert parse_workers("4") == 4 and parse_workers(2) == 2
    for bad in ("0", "-1", "2.5", "two", ""):
        with pytest.raises(SpecError, match=f"--workers '{bad}': give a whole number"):
            parse_workers(bad, "--workers")
    assert RunSpec(load={"qps": 1, "requests": 2}, workers="auto").workers == "auto"


def test_auto_uses_the_calibrated_safe_rate_of_this_host_and_leaves_a_core_to_the_scheduler(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(workers, "cpu_count", lambda: 16)
    n, why = workers.auto_workers(25_000)  # not calibrated here: the default per-process rate
    assert n == 3 and "default" in why  # ceil(25 000 / 10 000)
    workers.save_safe_rate(4_000, {"osl": 32})
    n, why = workers.auto_workers(25_000)
    assert n == 7 and "trilemma calibrate" in why  # ceil(25 000 / 4 000)
    assert workers.auto_workers(1e9)[0] == 15  # one core stays with the scheduling process
    assert workers.auto_workers(None)[0] == 1  # a closed loop's rate is not known up front
    monkeypatch.setattr(workers, "cpu_count", lambda: 2)
    assert workers.auto_workers(1e9)[0] == 1


def test_scaling_efficiency_is_measured_only_below_the_ladders_top():
    from bench.calibrate import scaling_table

    rows = {r["workers"]: r for r in scaling_table({1: 200.0, 2: 360.0, 4: 400.0}, osl=32, top=400.0)}
    assert rows[1]["efficiency"] == 1.0 and rows[2]["efficiency"] == 0.9 and rows[2]["safe_chunks_per_s"] == 360 * 32
    assert rows[4]["capped"] and rows[4]["efficiency"] == 0.5 and rows[4]["efficiency_is_lower_bound"]  # ≥ 400/(4×200)
    capped = {r["workers"]: r for r in scaling_table({1: 400.0, 2: 400.0}, osl=32, top=400.0)}
    assert capped[2]["efficiency"] is None  # one process already at the top: scaling cannot be told


def test_spreader_least_in_flight_breaks_ties_in_turn_and_keeps_a_conversation_on_its_replica():
    sp = workers.Spreader(3)
    assert [sp.pick() for _ in range(3)] == [0, 1, 2]  # all idle: in turn
    sp.done(1)
    assert sp.pick() == 1  # the only one with nothing in flight
    sp.done(0), sp.done(2)
    assert sp.pick(conversation=7) == 2 and sp.pick(conversation=7) == 2  # ties resume after the last pick; turn 2 follows turn 1
    rr = workers.Spreader(2, "round-robin")
    assert [rr.pick() for _ in range(5)] == [0, 1, 0, 1, 0]
