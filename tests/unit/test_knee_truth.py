"""Knee truth on ground truth we control: SLO decisions, their level on correlated samples, window energy,
the knee search with undecided probes, and the sequential probe monitor on a fake clock."""

import math

import numpy as np
import pytest

from bench import stats
from bench.config import AutoSearch, ProbeRule, parse_slos
from bench.probe import ProbeMonitor
from bench.records import RequestRecord
from bench.sweep import knee_search
from bench.telemetry import attach_to_summary, window_energy
from bench.verdict import FAIL, INCONCLUSIVE, PASS

MS = 1_000_000


def test_pass_needs_368_clean_samples_for_p99_and_matches_the_order_statistic_interval():
    assert stats.samples_to_pass(99) == 368
    assert stats.percentile_decision([367], [0], 99)[0] == "undecided"
    assert stats.percentile_decision([368], [0], 99)[0] == "pass"
    # for independent samples the decision is the order-statistic interval of the percentile
    rng = np.random.default_rng(1)
    for _ in range(200):
        x = rng.exponential(10, int(rng.integers(300, 1500)))
        thr = float(np.quantile(x, rng.uniform(0.97, 0.999)))
        d, _ = stats.percentile_decision([x.size], [int((x > thr).sum())], 99)
        lo, hi = stats.quantile_ci(x, 99)
        expect = "pass" if not math.isnan(hi) and hi < thr else "fail" if not math.isnan(lo) and lo > thr else "undecided"
        assert d == expect


def _bursty(rng, bursts=80, per_burst=20, base_frac=0.0, burst_frac=0.6, p_burst=0.07):
    """Exceedances that come in bursts (a queue after a burst of arrivals): most short stretches clean,
    a few mostly over — then counted in the 20 time blocks a decision uses. Returns per-block (n, k)."""
    burst = rng.random(bursts) < p_burst
    k = rng.binomial(per_burst, np.where(burst, burst_frac, base_frac))
    t = np.repeat(np.arange(bursts), per_burst) + 0.5
    over = np.concatenate([[1] * x + [0] * (per_burst - x) for x in k]).astype(bool)
    return stats.block_counts(t, over, 0, bursts)


def test_design_effect_keeps_the_false_pass_rate_at_its_level_on_bursty_samples():
    """True exceedance 0.07 × 0.6 = 4.2%: a p97 SLO (3% allowed) truly fails. Count how often it is
    wrongly passed with the time-block design effect, and with a plain binomial interval."""
    rng = np.random.default_rng(7)
    wrong_with_deff = wrong_binomial = 0
    trials = 400
    for _ in range(trials):
        n_b, k_b = _bursty(rng)
        if stats.percentile_decision(n_b, k_b, 97)[0] == "pass":
            wrong_with_deff += 1
        if stats.percentile_decision([n_b.sum()], [k_b.sum()], 97)[0] == "pass":  # one block: binomial
            wrong_binomial += 1
    assert wrong_with_deff / trials <= 0.05
    assert wrong_binomial / trials > 0.08  # treating them as independent does not hold its level (measured 11.5% vs 0.25%)


def test_window_energy_equals_the_hand_computed_value():
    # one GPU: 100 W for t < 5 s, then 300 W; counter in mJ sampled every 0.1 s; a second GPU at 50 W
    t = np.arange(0, 10.01, 0.1)
    e1 = np.where(t < 5, 100 * t, 500 + 300 * (t - 5)) * 1000
    rows = [{"t": float(a), "gpu": 0, "energy_mj": float(b), "power_avg_w": 0.0} for a, b in zip(t, e1)]
    rows += [{"t": float(a), "gpu": 1, "energy_mj": float(50 * a * 1000), "power_avg_w": 0.0} for a in t]
    w = window_energy(rows, 2.05, 7.05)  # edges between samples: interpolated
    hand = 100 * (5 - 2.05) + 300 * (7.05 - 5) + 50 * 5.0
    assert w["energy_j"] == pytest.approx(hand, rel=1e-9) and w["source"] == "energy_counter_window"
    # the same from power alone (no counter): trapezoid over the window
    prow = [{"t": float(a), "gpu": 0, "power_instant_w": 100.0 if a < 5 else 300.0} for a in t]
    assert window_energy(prow, 2.0, 7.0)["energy_j"] == pytest.approx(100 * 3 + 300 * 2 + 0.1 * 200 / 2, rel=1e-6)


def test_j_per_token_divides_window_energy_by_window_tokens(tmp_path):
    import pandas as pd

    t = np.arange(0, 20.01, 0.5)
    pd.DataFrame({"t": t, "gpu": 0, "energy_mj": 200 * t * 1000}).to_parquet(tmp_path / "gpu.parquet")
    summary = {"output_tokens": 9999, "input_tokens": 9999, "window_tokens": {"output": 1000, "input": 4000}}
    # the whole run (warmup and drain: 0-20 s) used 4000 J; the window 5-15 s used 2000 J
    attach_to_summary(summary, {"gpu": {"energy_j": 4000.0, "source": "energy_counter", "window_s": 20.0}}, tmp_path, (5.0, 15.0))
    e = summary["energy"]
    assert e["energy_j"] == pytest.approx(2000.0) and e["run_energy_j"] == 4000.0
    assert e["j_per_output_token"] == pytest.approx(2.0) and e["j_per_token"] == pytest.approx(0.4)


def _search(verdict_of):
    gen = knee_search(AutoSearch(precision=0.05, max_probes=20))
    probe, seen = next(gen), []
    while True:
        mode, value, role, _ = probe
        seen.append((value, role))
        v = PASS if mode == "concurrency" else verdict_of(value, role)
        try:
            probe = gen.send((v, {"request_throughput": 1.0 if mode == "concurrency" else value}))
        except StopIteration as e:
            return e.value, seen


def test_search_climbs_past_undecided_screening_probes_and_returns_a_decided_knee():
    knee = 20.0

    def server(load, role):
        if load >= knee:
            return FAIL
        if role in ("ladder", "bracket") or load < 5:  # screening probes and slow rates cannot decide a p99
            return INCONCLUSIVE
        return PASS if load < 0.9 * knee else INCONCLUSIVE  # near the knee the sample cannot decide

    res, seen = _search(server)
    assert res["feasible"] and res["knee_qps"] < 0.9 * knee and res["bracket"][1] >= knee
    assert server(res["knee_qps"], "confirm") == PASS  # the knee is a load decided PASS, never an undecided one


def test_search_reports_no_knee_when_nothing_can_be_decided():
    res, _ = _search(lambda load, role: FAIL if load > 50 else INCONCLUSIVE)
    assert not res["feasible"] and res["knee_qps"] is None and "decided PASS" in res["note"]


class FakeServer:
    """Requests with a fixed TTFT and lifetime (or a growing queue), driven through the monitor on a fake clock."""

    def __init__(self, rate, ttft_ms, life_ms, growth=0.0):
        self.rate, self.ttft, self.life, self.growth = rate, ttft_ms, life_ms, growth

    def run(self, mon, max_s=200.0):
        t, i, live = 0, 0, []
        mon.begin(0)
        step = int(1e9 / self.rate)
        while mon.stop_at is None and t < max_s * 1e9:
            extra = int(self.growth * t)  # queueing delay grows with time when overloaded
            rec = RequestRecord(index=i, intended_ns=t, sent_ns=t, warmup=mon.is_warm(i, t), osl=8, output_tokens=8, ok=True)
            rec.chunk_ns = [t + self.ttft * MS + extra + k * 10 * MS for k in range(8)]
            rec.chunk_tokens = [1] * 8
            rec.end_ns = t + self.life * MS + extra
            live.append((mon.started(rec), rec))
            for _, r in live:  # the client stamps the first byte as it arrives
                if not r.first_byte_ns and r.chunk_ns[0] <= t:
                    r.first_byte_ns = r.chunk_ns[0]
            for slot, r in [x for x in live if x[1].end_ns <= t]:
                mon.finished(slot, r)
            live = [x for x in live if x[1].end_ns > t]
            if t % int(mon.CHECK_S * 1e9) < step:
                mon.check(t)
            t += step
            i += 1
        return t / 1e9


def test_monitor_stops_a_stable_probe_once_decided_after_warmup_of_lifetimes():
    rule = ProbeRule(min_duration_s=5, max_duration_s=120)
    mon = ProbeMonitor(rule, parse_slos("ttft_p99=500ms"), "qps")
    FakeServer(rate=20, ttft_ms=50, life_ms=2000).run(mon)
    rep = mon.report()
    assert rep["stopped"] == "decided"
    assert rep["warmup_s"] >= 2 * 2.0 - 0.3  # two lifetimes of 2 s
    n = mon.looks[-1]["slos"]["ttft_p99"]["n"]
    assert n >= stats.samples_to_pass(99, mon.conf)  # the Bonferroni-spent level needs more than 368
    assert rep["window_s"] >= 3 * 2.0  # and several lifetimes


def test_monitor_aborts_an_overloaded_probe_early():
    rule = ProbeRule(min_duration_s=5, max_duration_s=120)
    mon = ProbeMonitor(rule, parse_slos("ttft_p99=500ms"), "qps")
    elapsed = FakeServer(rate=20, ttft_ms=50, life_ms=600, growth=0.3).run(mon)  # TTFT grows 0.3 s per s
    assert mon.report()["stopped"] in ("fail", "saturated") and elapsed < 60


def test_closed_loop_throughput_is_exact_where_counting_sends_is_off_by_a_burst():
    """16 clients in lockstep against a server whose every request lives exactly 1 s (plus 2 ms of client
    turnaround): the true rate is 16 / 1.002 req/s. Counting the sends in a 8.5 s window is off by one burst
    of 16; Little's law (time-average in flight / mean lifetime) is exact."""
    from bench.metrics import summarize

    life, gap, recs, i = 1_000_000_000, 2_000_000, [], 0
    for k in range(12):
        for c in range(16):
            t = k * (life + gap)
            recs.append(RequestRecord(index=i, intended_ns=t, sent_ns=t, first_byte_ns=t + 1, end_ns=t + life,
                                      chunk_ns=[t + life // 2, t + life], chunk_tokens=[1, 1], output_tokens=2, isl=8,
                                      prompt_tokens=8, ok=True, warmup=k < 2))
            i += 1
    t0 = 2 * (life + gap)
    t1 = t0 + int(8.5e9)
    s = summarize(recs, window_ns=(t0, t1), mode="concurrency")
    truth = 16 / ((life + gap) / 1e9)
    assert s["throughput"]["estimator"] == "little"
    assert s["request_throughput"] == pytest.approx(truth, rel=1e-3)
    assert s["output_tps"] == pytest.approx(2 * truth, rel=1e-3)
    counted = s["throughput"]["arrivals"]["request_throughput"]
    assert abs(counted / truth - 1) > 0.05, counted  # the estimator it replaces: 9 bursts in 8.5 s


def _ladder_search(screen_exceed):
    """Knee at 20 req/s; every undecided screen below it reports `screen_exceed(load)` = (k, n) for a ttft_p90."""
    gen = knee_search(AutoSearch(precision=0.1, max_probes=20))
    probe, seen = next(gen), []
    while True:
        mode, value, role, _ = probe
        seen.append((value, role))
        if mode == "concurrency":
            v, s = PASS, {"request_throughput": 1.0, "steady_state": {"lifetime_s": 1.0}}
        elif value >= 20.0:
            v, s = FAIL, {"request_throughput": 20.0}
        elif role == "ladder":
            k, n = screen_exceed(value)
            v, s = INCONCLUSIVE, {"request_throughput": value, "steady_state": {"lifetime_s": 1.0},
                                  "slos": [{"slo": "ttft_p90", "threshold_ms": 500.0, "exceed": {"k": k, "n": n}}]}
        else:
            v, s = PASS, {"request_throughput": value}
        try:
            probe = gen.send((v, s))
        except StopIteration as e:
            return e.value, seen


def test_ladder_climbs_past_a_screen_whose_exceedances_are_within_the_allowance():
    """2 of 60 over a p90 limit (3%, 10% allowed) is what a passing load shows in a short window: the ladder
    climbs on to a failing load and the knee lands near the true one, not below the first screen."""
    res, seen = _ladder_search(lambda load: (2, 60))
    assert res["bracket"][1] is not None and res["bracket"][1] >= 20.0
    assert res["knee_qps"] >= 20.0 / 1.1 / 1.1, (res, seen)
    # a screen that already leans to FAIL (30 of 60 over) stops the climb and bounds the bisection
    res, seen = _ladder_search(lambda load: (30, 60))
    assert res["bracket"][1] is None and max(v for v, r in seen if r == "ladder") < 20.0


def _ar1(rng, n: int, phi: float) -> np.ndarray:
    """Stationary Gaussian AR(1), unit variance: a latency that wanders like a queue near capacity."""
    e = rng.standard_normal(n) * math.sqrt(1 - phi**2)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8, 0.95])
def test_autocorrelation_time_matches_the_ar1_value(phi):
    """Ground truth: a Gaussian AR(1)'s lag-k correlation is φ^k, so τ = 1 + 2·Σ φ^k = (1+φ)/(1−φ).
    Median of 20 series of 5,000 within 10%."""
    rng = np.random.default_rng(3)
    est = np.median([stats.autocorr_time(_ar1(rng, 5000, phi)) for _ in range(20)])
    assert est == pytest.approx((1 + phi) / (1 - phi), rel=0.10)


def test_a_wandering_latency_is_not_passed_on_a_window_that_saw_little_queue():
    """p90 SLO; the latency is an AR(1) whose true exceedance is 15% (it fails). In 150-sample windows
    the queue often wanders below the threshold for the whole window: time blocks then see no
    correlation and pass it (measured 9%, 25%, 49% of windows for φ = 0.9, 0.97, 0.99 — up to ten times
    the 5% level). With the series' autocorrelation time flooring the design effect no window passes;
    a truly passing load (5% exceedance) with short memory still passes."""
    from scipy.stats import norm

    t = np.arange(150) + 0.5
    for phi in (0.9, 0.97, 0.99):
        rng = np.random.default_rng(5)
        blocks_only = with_tau = 0
        for _ in range(200):
            x = _ar1(rng, 150, phi)
            n_b, k_b = stats.block_counts(t, x > norm.isf(0.15), 0, 150)
            blocks_only += stats.percentile_decision(n_b, k_b, 90)[0] == "pass"
            with_tau += stats.percentile_decision(n_b, k_b, 90, tau=stats.autocorr_time(x, clip_at=norm.isf(0.15)))[0] == "pass"
        assert with_tau / 200 <= 0.05
        assert blocks_only / 200 > 0.05  # what the blocks alone let through
    rng = np.random.default_rng(6)
    passed = 0
    for _ in range(200):
        x = _ar1(rng, 1500, 0.3)
        n_b, k_b = stats.block_counts(np.arange(1500) + 0.5, x > norm.isf(0.05), 0, 1500)
        passed += stats.percentile_decision(n_b, k_b, 90, tau=stats.autocorr_time(x, clip_at=norm.isf(0.05)))[0] == "pass"
    assert passed / 200 >= 0.9


def test_independent_samples_are_not_inflated_by_chance():
    """Ground truth τ = 1: over 500 iid series of 10 and of 100, the estimate stays 1 in at least 95% of them
    (the white-noise band on the lag-1 correlation), so a small clean probe is not made undecided by noise."""
    rng = np.random.default_rng(11)
    for n in (10, 100):
        taus = np.array([stats.autocorr_time(rng.exponential(1.0, n)) for _ in range(500)])
        assert (taus == 1.0).mean() >= 0.95, (n, (taus == 1.0).mean())
