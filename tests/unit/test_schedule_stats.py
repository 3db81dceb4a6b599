"""Arrival schedules and the statistics behind percentiles and attainment."""

import numpy as np
import pytest

from bench import stats
from bench.config import Arrival
from bench.schedule import open_loop_offsets_ns, scaled_trace_offsets_ns


@pytest.mark.parametrize("arrival,cv", [("poisson", 1.0), ("gamma:2", 2.0), ("gamma:0.5", 0.5), ("constant", 0.0)])
def test_rate_and_cv_of_arrivals(arrival, cv):
    off = open_loop_offsets_ns(Arrival.parse(arrival), 50.0, seed=1, count=20000)
    gaps = np.diff(off) / 1e9
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.05)


def test_schedule_is_seeded_and_duration_bounded():
    a = open_loop_offsets_ns(Arrival(), 10, seed=3, duration_s=30)
    b = open_loop_offsets_ns(Arrival(), 10, seed=3, duration_s=30)
    assert (a == b).all() and a[0] == 0 and a[-1] < 30e9
    assert 250 < len(a) < 350


def test_trace_offsets_scale():
    off = scaled_trace_offsets_ns(np.array([10.0, 11.0, 14.0]), speedup=2)
    assert off.tolist() == [0, 500_000_000, 2_000_000_000]


def test_quantile_ci_brackets_true_quantile():
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, 2000)
    lo, hi = stats.quantile_ci(x, 99)
    assert lo < np.log(100) < hi
    assert np.isnan(stats.quantile_ci(x[:100], 99)[1])  # 100 samples cannot bound p99 from above


def test_sample_counts_match_mlperf():
    assert stats.min_samples_for_percentile(99) == 299
    assert stats.early_stopping_min_n(99, 0.99, 0) == 459
    assert stats.early_stopping_min_n(99, 0.99, 1) == 662


def test_clopper_pearson():
    lo, hi = stats.clopper_pearson(95, 100)
    assert lo == pytest.approx(0.8872, abs=1e-3) and hi == pytest.approx(0.9836, abs=1e-3)


@pytest.mark.parametrize("kind", ["poisson", "gamma:2", "constant"])
def test_ramp_and_stages_send_the_rate_asked_for_in_each_stretch(kind):
    """Ground truth: the expected count in a stretch is the integral of its rate (ramp 0→4 req/s over 10 s:
    20; then 4 req/s × 20 s: 80; then 12 req/s × 20 s: 240). Over 200 seeds the mean count per stretch is
    within 3 standard errors of it, and a constant schedule hits it to within one request every time."""
    from bench.config import Arrival
    from bench.schedule import profile_offsets_ns

    pieces = [(10.0, 0.0, 4.0), (20.0, 4.0, 4.0), (20.0, 12.0, 12.0)]
    edges, expect = [0, 10, 30, 50], np.array([20.0, 80.0, 240.0])
    counts = np.array([np.histogram(profile_offsets_ns(Arrival.parse(kind), pieces, seed) / 1e9, bins=edges)[0] for seed in range(200)])
    if kind == "constant":
        assert (np.abs(counts - expect) <= 1).all()
    else:
        se = counts.std(axis=0, ddof=1) / np.sqrt(len(counts))
        assert (np.abs(counts.mean(axis=0) - expect) < 3 * se + 1e-9).all(), (counts.mean(axis=0), se)
        if kind == "poisson":  # a Poisson count's variance is its mean, also when the rate varies
            assert counts.var(axis=0, ddof=1) == pytest.approx(expect, rel=0.3)


def test_stages_are_validated_with_one_line():
    from bench.config import LoadSpec

    ld = LoadSpec(stages="2:30,8:10", ramp_up_s=5)
    assert ld.duration_s == 40 and ld.rate_pieces() == [(5, 0.0, 2.0), (30.0, 2.0, 2.0), (10.0, 8.0, 8.0)]
    # each send's stretch: the ramp is -1, stage k is k, boundaries belong to the stretch they open
    assert [ld.stage_at(t) for t in (0, 4.99, 5, 34.99, 35, 44.9, 60)] == [-1, -1, 0, 0, 1, 1, 1]
    assert LoadSpec(qps=2, duration_s=10).stage_at(3) == 0 and LoadSpec(qps=2, duration_s=10, ramp_up_s=2).stage_at(1) == -1
    for bad, msg in ((dict(stages="2:30", qps=3), "drop --qps"), (dict(stages="2-30"), "QPS:SECONDS"),
                     (dict(stages="2:30", duration_s=10), "stages last 30 s"), (dict(concurrency=2, duration_s=5, ramp_up_s=3), "closed loop")):
        with pytest.raises(ValueError, match=msg):
            LoadSpec(**bad)
