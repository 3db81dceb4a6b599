"""The adaptive knee search on synthetic servers (no HTTP): it brackets and confirms the true knee."""

import numpy as np
import pytest

from bench.config import AutoSearch
from bench.sweep import knee_search
from bench.verdict import FAIL, PASS, knee_rule


def drive(true_knee: float, noise: float = 0.0, seed: int = 0, **auto):
    rng = np.random.default_rng(seed)
    gen = knee_search(AutoSearch(**auto))
    probe = next(gen)
    seen = []
    while True:
        mode, value, role, _ = probe
        seen.append((mode, value, role))
        if mode == "concurrency":
            v, s = PASS, {"request_throughput": 1.0}
        else:
            ok = value * (1 + rng.normal(0, noise)) <= true_knee
            v, s = (PASS if ok else FAIL), {"request_throughput": min(value, true_knee)}
        try:
            probe = gen.send((v, s))
        except StopIteration as e:
            return e.value, seen


@pytest.mark.parametrize("true_knee", [3.3, 17.0, 140.0])
def test_brackets_the_knee_to_the_precision(true_knee):
    res, seen = drive(true_knee, precision=0.05, max_probes=20)
    lo, hi = res["bracket"]
    assert res["feasible"] and lo <= true_knee < hi and hi / lo - 1 <= 0.05
    assert seen[0][0] == "concurrency" and any(r == "confirm" for _, _, r in seen)
    # far fewer probes than a 5% grid over the same range
    rates = [v for m, v, _ in seen if m == "qps"]
    assert len(seen) < np.log(max(rates) / min(rates)) / np.log(1.05)


def test_knee_is_always_a_measured_pass_under_noise():
    for seed in range(20):
        res, seen = drive(10.0, noise=0.05, seed=seed, precision=0.05, max_probes=14)
        measured = {v for m, v, _ in seen if m == "qps"}
        assert res["knee_qps"] in measured
        assert 8.0 < res["knee_qps"] < 11.5


def test_infeasible_when_single_request_fails():
    gen = knee_search(AutoSearch())
    next(gen)
    with pytest.raises(StopIteration) as e:
        gen.send((FAIL, {"request_throughput": 0.5}))
    assert e.value.value["feasible"] is False and "no load" in e.value.value["note"]


def test_knee_from_history_needs_every_repeat_to_pass():
    def rule(h):
        return knee_rule({x: [(v, True) for v in vs] for x, vs in h.items()})

    assert rule({1: [PASS], 2: [PASS, FAIL], 3: [PASS]}) == (1, 2, [])
    assert rule({1: [FAIL]}) == (None, 1, [])
    assert rule({1: [PASS], 2: [PASS]}) == (2, None, [])
    assert rule({1: [PASS], 2: ["INCONCLUSIVE"], 3: [FAIL]}) == (1, 3, [2])  # an undecided full probe is the knee's uncertainty
    assert knee_rule({1: [(PASS, True)], 2: [("INCONCLUSIVE", False), (PASS, True)], 3: [(FAIL, True)]}) == (2, 3, [])  # a screen does not


def _summary_with_lags(lags_ms) -> dict:
    from bench.metrics import latency_stats

    return {"n_measured": len(lags_ms), "n_failed": 0, "latency_ms": {"send_lag": latency_stats(lags_ms)}, "slos": []}


def test_one_send_lag_hiccup_in_a_short_probe_is_not_an_unhealthy_client():
    from bench.config import parse_slos
    from bench.verdict import INVALID, verdict

    slos = parse_slos("ttft_p99=500ms")
    rng = np.random.default_rng(0)
    short = list(rng.uniform(0.1, 0.5, 99)) + [6.5]  # p99 ~ the single largest lag
    assert verdict(_summary_with_lags(short), slos)[0] == PASS
    long = list(rng.uniform(0.1, 0.5, 950)) + list(rng.uniform(7, 9, 50))  # 5% of sends 7–9 ms late
    v, why = verdict(_summary_with_lags(long), slos)
    assert v == INVALID and "client fell behind" in why
