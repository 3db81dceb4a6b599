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
