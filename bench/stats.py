"""⑤ Percentiles, their confidence intervals, attainment intervals and significance.

Estimator (pinned): numpy's default linear interpolation between order statistics, the same as
`vllm bench serve`, so p50/p99 compare like for like. Confidence intervals for a quantile are
distribution-free, from order statistics (B ~ Bin(n, p)); attainment uses Clopper-Pearson.
"""

from __future__ import annotations

import math

import numpy as np


class _LazyScipyStats:
    """scipy.stats, imported on first use: the import costs ~1.4 s, which every CLI command and the
    simulator process would otherwise pay at start-up whether or not they compute an interval."""

    def __getattr__(self, name):
        from scipy import stats

        return getattr(stats, name)


_st = _LazyScipyStats()


def percentile(x, p: float) -> float:
    """p-th percentile (0-100), linear interpolation; nan for an empty sample."""
    a = np.asarray(x, dtype=np.float64)
    return float(np.percentile(a, p)) if a.size else math.nan


def quantile_ci(x, p: float, conf: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI for the p-th percentile from order statistics.

    With B ~ Bin(n, q), q = p/100, choose 1-based ranks l = F⁻¹(α/2), u = F⁻¹(1−α/2)+1 so that
    P(x_(l) ≤ Q_q ≤ x_(u)) ≥ conf. Returns (nan, nan) when n is too small to bound the quantile
    on that side (e.g. p99 with n < ~300 has no upper bound at 95%)."""
    a = np.sort(np.asarray(x, dtype=np.float64))
    n = a.size
    if n == 0:
        return math.nan, math.nan
    q, alpha = p / 100.0, 1.0 - conf
    lo_rank = int(_st.binom.ppf(alpha / 2, n, q))  # number of samples below: rank l = lo_rank (1-based)
    hi_rank = int(_st.binom.ppf(1 - alpha / 2, n, q)) + 1
    lo = float(a[lo_rank - 1]) if lo_rank >= 1 else math.nan
    hi = float(a[hi_rank - 1]) if hi_rank <= n else math.nan
    return lo, hi


def min_samples_for_percentile(p: float, conf: float = 0.95) -> int:
    """Smallest n whose sample maximum bounds the p-th percentile from above at `conf`:
    1 − q^n ≥ conf  ⇒  n = ceil(ln(1 − conf)/ln q). p99 at 95%: 299."""
    q = p / 100.0
    return int(math.ceil(math.log(1 - conf) / math.log(q)))


def early_stopping_min_n(p: float, conf: float, t_over: int) -> int:
    """MLPerf early stopping: with t requests over the limit, the smallest n such that
    P[Bin(n, 1−q) ≤ t] ≤ 1 − conf; i.e. seeing ≤ t overs in n proves the p-th percentile passes.
    p = conf = 0.99: t=0 → 459, t=1 → 662."""
    q = p / 100.0
    n = t_over + 1
    while _st.binom.cdf(t_over, n, 1 - q) > 1 - conf:
        n += 1
    return n


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI for a proportion k/n."""
    if n == 0:
        return math.nan, math.nan
    a = 1 - conf
    lo = 0.0 if k == 0 else float(_st.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def bootstrap_ratio_ci(base, new, stat, n_boot: int = 2000, conf: float = 0.95, seed: int = 0):
    """CI for stat(new)/stat(base) − 1 by resampling each sample independently (percentile bootstrap)."""
    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(new, dtype=np.float64)
    if b.size == 0 or c.size == 0:
        return math.nan, (math.nan, math.nan)
    point = stat(c) / stat(b) - 1
    bi = rng.integers(0, b.size, (n_boot, b.size))
    ci_ = rng.integers(0, c.size, (n_boot, c.size))
    sb = np.apply_along_axis(stat, 1, b[bi])
    sc = np.apply_along_axis(stat, 1, c[ci_])
    r = sc / sb - 1
    a = (1 - conf) / 2
    return float(point), (float(np.quantile(r, a)), float(np.quantile(r, 1 - a)))


def trend_slope(t, y) -> tuple[float, float]:
    """Least-squares slope of y over t and its two-sided p-value (for saturation detection)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if t.size < 8 or np.ptp(t) == 0:
        return 0.0, 1.0
    r = _st.linregress(t, y)
    return float(r.slope), float(r.pvalue)
