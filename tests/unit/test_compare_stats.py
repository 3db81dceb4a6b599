"""The statistics behind `trilemma compare`: they hold their level on identical servers, resample requests
(not token gaps), stay in bounded memory, and intervals for error rates and repeated throughput are right."""

import math
import tracemalloc

import numpy as np
import pytest

from bench import stats
from bench.compare import latency_verdict
from bench.stats import Sample, bootstrap_percentiles, bootstrap_ratio_ci


def _server(rng, n=300, gaps=16):
    """One run of a synthetic server: each request has its own level (batch size, context length) shared by its
    TTFT and all its token gaps, plus per-gap noise — so gaps of one request are correlated."""
    level = rng.lognormal(0.0, 0.3, n)
    ttft = 50.0 * level * rng.lognormal(0.0, 0.2, n)
    itl = 10.0 * level[:, None] * rng.lognormal(0.0, 0.15, (n, gaps))
    return ttft, itl


def test_identical_servers_are_called_worse_in_at_most_5_percent_of_100_pairs():
    """A/A: 100 pairs drawn from one distribution, threshold 2%. 'worse' (interval wholly above +2%) must come
    out in ≤ 5% of pairs for TTFT, TPOT and ITL. The gap-by-gap bootstrap that treats ITL gaps as independent
    is run beside it to show the correlation is strong enough to matter (it misfires far more often)."""
    worse = {k: 0 for k in ("ttft_p50", "ttft_p99", "tpot_p50", "itl_p50", "itl_p99", "itl_p50 gaps-independent")}
    excludes_zero = dict.fromkeys(worse, 0)
    for i in range(100):
        rng = np.random.default_rng(1000 + i)
        (tb, gb), (tn, gn) = _server(rng), _server(rng)
        req = np.repeat(np.arange(gb.shape[0]), gb.shape[1])
        cases = {"ttft_p50": (Sample(tb), Sample(tn), 50), "ttft_p99": (Sample(tb), Sample(tn), 99),
                 "tpot_p50": (Sample(gb.mean(axis=1)), Sample(gn.mean(axis=1)), 50),
                 "itl_p50": (Sample(gb.ravel(), req), Sample(gn.ravel(), req), 50),
                 "itl_p99": (Sample(gb.ravel(), req), Sample(gn.ravel(), req), 99),
                 "itl_p50 gaps-independent": (Sample(gb.ravel()), Sample(gn.ravel()), 50)}
        for name, (b, n, p) in cases.items():
            _, (lo, hi) = bootstrap_ratio_ci(b, n, p, n_boot=400, seed=i)
            worse[name] += latency_verdict(lo, hi, 0.02)[0] == "worse"
            excludes_zero[name] += lo > 0 or hi < 0
    print("A/A 'worse' at 2% of 100:", worse, "interval excludes 0:", excludes_zero)
    for name in ("ttft_p50", "ttft_p99", "tpot_p50", "itl_p50", "itl_p99"):
        assert worse[name] <= 5, (name, worse)
        assert excludes_zero[name] <= 10, (name, excludes_zero)  # nominal 5%, binomial spread over 100 trials
    assert excludes_zero["itl_p50 gaps-independent"] > 30, excludes_zero


def test_a_replicate_is_numpys_percentile_of_the_resampled_requests():
    """The weighted order-statistic shortcut gives exactly np.percentile of the materialised resample
    (whole requests repeated with their gaps), for the pinned linear estimator."""
    rng = np.random.default_rng(3)
    gaps = [rng.lognormal(0, 0.5, k) for k in rng.integers(1, 20, 50)]
    vals, req = np.concatenate(gaps), np.concatenate([[i] * len(g) for i, g in enumerate(gaps)])
    s = Sample(vals, req)
    for p in (50, 90, 99):
        got = bootstrap_percentiles(s, p, n_boot=1, seed=11)[0]
        counts = stats._cluster_counts(np.random.default_rng(11), s.run, 1)[0]
        expanded = np.concatenate([np.tile(g, c) for g, c in zip(gaps, counts)])
        assert got == pytest.approx(np.percentile(expanded, p), rel=1e-12)


def test_repeats_widen_the_interval_by_the_run_to_run_spread():
    """Three runs whose levels differ (run-to-run variance): resampling runs then requests gives a wider
    interval than pooling the requests as if they were one run."""
    rng = np.random.default_rng(5)
    vals = np.concatenate([rng.lognormal(np.log(m), 0.2, 300) for m in (45, 50, 56)])
    runs = np.repeat([0, 1, 2], 300)
    pooled = np.ptp(np.quantile(bootstrap_percentiles(Sample(vals), 50, 400), [0.025, 0.975]))
    by_run = np.ptp(np.quantile(bootstrap_percentiles(Sample(vals, None, runs), 50, 400), [0.025, 0.975]))
    assert by_run > 2 * pooled, (by_run, pooled)


def test_bootstrap_of_2_million_values_stays_under_200_mb():
    """A big regression sweep's ITL: 2 M gaps in 20 k requests per side. The old n_boot × n index matrix would
    hold ~24 bytes × 2 M × resamples (≈ 1 GB at 20 resamples); chunked replicates stay bounded."""
    rng = np.random.default_rng(0)
    n_req, per = 20_000, 100
    req = np.repeat(np.arange(n_req), per)
    base = Sample(rng.lognormal(0, 0.3, n_req * per), req)
    new = Sample(rng.lognormal(0, 0.3, n_req * per), req)
    tracemalloc.start()
    tracemalloc.reset_peak()
    _, (lo, hi) = bootstrap_ratio_ci(base, new, 99, n_boot=20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"bootstrap peak over 2 x 2 M values: {peak / 2**20:.0f} MiB")
    assert math.isfinite(lo) and lo < hi
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_newcombe_interval_matches_the_published_example():
    """Newcombe (1998), Stat Med 17:873, Table II example (56/70 vs 48/80): difference 0.2000, hybrid
    score interval 0.0524 to 0.3339."""
    d, lo, hi = stats.newcombe_diff_ci(48, 80, 56, 70)
    assert d == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_thirty_percent_failures_are_a_significant_increase_and_one_in_200_is_not():
    assert stats.newcombe_diff_ci(0, 200, 60, 200)[1] > 0
    assert stats.newcombe_diff_ci(0, 200, 1, 200)[1] < 0


def test_throughput_interval_needs_two_runs_per_side():
    assert all(math.isnan(x) for x in stats.mean_ratio_ci([100.0], [90.0]))
    d, lo, hi = stats.mean_ratio_ci([100.0, 101.0, 99.0], [80.0, 81.0, 79.5])
    assert d == pytest.approx(-0.2, abs=0.01) and hi < -0.15 and lo < d < hi


def test_latency_verdict_never_passes_an_interval_that_reaches_past_the_threshold():
    assert latency_verdict(0.06, 0.12, 0.05)[0] == "worse"
    assert latency_verdict(0.01, 0.07, 0.05)[0] == "undecided"
    assert latency_verdict(-0.03, 0.04, 0.05)[0] == "within"
    assert latency_verdict(-0.12, -0.06, 0.05)[0] == "better"
    assert latency_verdict(math.nan, math.nan, 0.05)[0] == "undecided"


def test_a_sample_whose_last_requests_failed_resamples_them_as_requests_without_values():
    """Requests 8 and 9 of 10 failed (no values): they still count as requests of the run."""
    s = Sample(np.arange(8.0), np.arange(8), np.zeros(10, dtype=np.int64))
    assert s.n_requests == 10 and s.n_measured == 8
    reps = bootstrap_percentiles(s, 50, n_boot=50)
    assert reps.shape == (50,) and np.isfinite(reps).all()
