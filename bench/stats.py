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


class Sample:
    """Per-request latency values grouped for resampling: `values` (ms), `cluster` (the request each value
    belongs to, 0..n_requests−1; TTFT/TPOT/E2E have one value per request, ITL one per token gap) and `run`
    (the run of each request, 0..R−1; repeats of one load point are separate runs)."""

    def __init__(self, values, cluster=None, run=None):
        self.values = np.asarray(values, dtype=np.float64)
        self.cluster = np.arange(self.values.size) if cluster is None else np.asarray(cluster, dtype=np.int64)
        n_cl = int(self.cluster.max()) + 1 if self.cluster.size else 0
        self.run = np.zeros(n_cl, dtype=np.int64) if run is None else np.asarray(run, dtype=np.int64)
        if self.run.size != n_cl:
            raise ValueError(f"run ids: {self.run.size} given for {n_cl} requests")

    @property
    def n_requests(self) -> int:
        return int(self.run.size)

    @property
    def n_measured(self) -> int:
        """Requests that contribute at least one value (a failed request has none)."""
        return int(np.unique(self.cluster).size)

    @property
    def n_runs(self) -> int:
        return int(np.unique(self.run).size)


def _uniform_counts(rng, n: int, m: int) -> np.ndarray:
    """(m, n) counts of n draws with replacement from n items, per row (= multinomial(n, 1/n), but vectorised)."""
    idx = rng.integers(0, n, (m, n)) + (np.arange(m, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=m * n).reshape(m, n)


def _cluster_counts(rng, run: np.ndarray, m: int) -> np.ndarray:
    """(m, n_requests) resampling counts. One run: requests drawn with replacement. R ≥ 2 runs: two stages —
    R runs drawn with replacement, then within each drawn run its requests with replacement — so the interval
    includes run-to-run variance (a run shares one queue; its requests are not independent)."""
    n = run.size
    runs = np.unique(run)
    if runs.size == 1:
        return _uniform_counts(rng, n, m)
    members = [np.flatnonzero(run == u) for u in runs]
    counts = np.zeros((m, n), dtype=np.int64)
    picks = rng.integers(0, runs.size, (m, runs.size))
    for j in range(runs.size):
        for u, idx in enumerate(members):
            rows = np.flatnonzero(picks[:, j] == u)
            if rows.size:
                counts[np.ix_(rows, idx)] += _uniform_counts(rng, idx.size, rows.size)
    return counts


def _chunk(max_bytes: int, n_boot: int, *samples: Sample) -> int:
    return int(max(1, min(n_boot, max_bytes // (32 * max(max(s.values.size, s.n_requests) for s in samples)))))


def bootstrap_percentiles(sample: Sample, p: float, n_boot: int = 1000, seed: int = 0,
                          max_bytes: int = 64 * 2**20, chunk: int | None = None) -> np.ndarray:
    """n_boot bootstrap replicates of the p-th percentile (numpy's linear estimator) of `sample`, resampling
    whole requests (and runs, when there are several): a request's ITL gaps share its batch and its level, so
    resampling gaps one by one understates the spread.

    A replicate never materialises the resampled values: values are sorted once; a resample is a vector of
    per-request counts, each value weighted by its request's count; the k-th order statistic of the resample is
    found on the cumulative weights. Work goes in chunks of replicates whose arrays stay under `max_bytes`
    (~32 bytes per value and replicate), so memory is O(values) whatever n_boot is."""
    rng = np.random.default_rng(seed)
    order = np.argsort(sample.values, kind="stable")
    v = sample.values[order]
    cl = sample.cluster[order]
    g = v.size
    out = np.empty(n_boot)
    if g == 0:
        out.fill(math.nan)
        return out
    chunk = chunk or _chunk(max_bytes, n_boot, sample)
    q = p / 100.0
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        counts = _cluster_counts(rng, sample.run, m)
        small = np.int32 if sample.values.size * sample.n_requests < 2**31 else np.int64  # resample sizes fit: half the bandwidth
        cw = np.cumsum(counts.astype(small)[:, cl], axis=1, dtype=np.int64 if small is np.int64 else np.int32)  # (m, g) sizes up to each value
        del counts
        total = cw[:, -1]
        h = (total - 1) * q
        k = np.floor(h).astype(np.int64)
        frac = h - k
        j0 = np.empty(m, dtype=np.int64)
        j1 = np.empty(m, dtype=np.int64)
        for i in range(m):  # order statistics k and k+1 of replicate i (0-based) on its cumulative weights
            j0[i], j1[i] = np.searchsorted(cw[i], (k[i], min(k[i] + 1, total[i] - 1)), side="right")
        del cw
        out[start:start + m] = v[j0] + frac * (v[j1] - v[j0])
    return out


def bootstrap_ratio_ci(base: Sample, new: Sample, p: float, n_boot: int = 1000, conf: float = 0.95, seed: int = 0,
                       max_bytes: int = 64 * 2**20, paired: bool = False) -> tuple[float, tuple[float, float]]:
    """Point estimate and percentile-bootstrap CI of P_p(new)/P_p(base) − 1, resampling requests (and runs),
    memory bounded (bootstrap_percentiles). Independent sides by default. `paired`: request i of base and
    request i of new had the same scheduled send and prompt (same spec and seed, open loop), so both sides
    take the same resample of request indices — the schedule's own noise cancels and the interval measures
    the server's difference. Needs identical request/run layout on both sides."""
    if base.values.size == 0 or new.values.size == 0:
        return math.nan, (math.nan, math.nan)
    if paired and (base.n_requests != new.n_requests or not np.array_equal(base.run, new.run)):
        raise ValueError("paired bootstrap needs the same requests and runs on both sides")
    pb, pn = np.percentile(base.values, p), np.percentile(new.values, p)
    point = float(pn / pb - 1) if pb else math.nan
    chunk = _chunk(max_bytes, n_boot, base, new)
    rb = bootstrap_percentiles(base, p, n_boot, seed, max_bytes, chunk)
    rn = bootstrap_percentiles(new, p, n_boot, seed if paired else seed + 1, max_bytes, chunk)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = rn / rb - 1
    r = r[np.isfinite(r)]
    if r.size < n_boot // 2:
        return point, (math.nan, math.nan)
    a = (1 - conf) / 2
    return point, (float(np.quantile(r, a)), float(np.quantile(r, 1 - a)))


def newcombe_diff_ci(k_base: int, n_base: int, k_new: int, n_new: int, conf: float = 0.95) -> tuple[float, float, float]:
    """Difference of two proportions p_new − p_base with Newcombe's hybrid score interval (method 10: the
    two Wilson intervals combined), which keeps its level near 0 and 1 where the Wald interval collapses.
    Returns (difference, lo, hi); nan when a side has no trials."""
    if n_base == 0 or n_new == 0:
        return math.nan, math.nan, math.nan
    pb, pn = k_base / n_base, k_new / n_new
    lb, ub = _st.binomtest(k_base, n_base).proportion_ci(conf, method="wilson")
    ln, un = _st.binomtest(k_new, n_new).proportion_ci(conf, method="wilson")
    d = pn - pb
    return d, d - math.sqrt((pn - ln) ** 2 + (ub - pb) ** 2), d + math.sqrt((un - pn) ** 2 + (pb - lb) ** 2)


def mean_ratio_ci(base, new, conf: float = 0.95) -> tuple[float, float, float]:
    """Relative change of the mean of per-run values (e.g. throughput of R repeats): mean(new)/mean(base) − 1
    with a Welch t interval of the difference, divided by mean(base). Needs ≥ 2 runs per side, else nans."""
    b, c = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if b.size < 2 or c.size < 2 or not b.mean():
        return math.nan, math.nan, math.nan
    mb = b.mean()
    if np.ptp(b) == 0 and np.ptp(c) == 0:
        d = c.mean() / mb - 1
        return float(d), float(d), float(d)
    ci = _st.ttest_ind(c, b, equal_var=False).confidence_interval(conf)
    return float(c.mean() / mb - 1), float(ci.low / mb), float(ci.high / mb)


def trend_slope(t, y) -> tuple[float, float]:
    """Least-squares slope of y over t and its two-sided p-value (for saturation detection)."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if t.size < 8 or np.ptp(t) == 0:
        return 0.0, 1.0
    r = _st.linregress(t, y)
    return float(r.slope), float(r.pvalue)
