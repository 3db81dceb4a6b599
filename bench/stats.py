"""⑤ Percentiles, their confidence intervals, attainment intervals and significance.

Estimator (pinned): numpy's default linear interpolation between order statistics, the same as
`vllm bench serve`, so p50/p99 compare like for like. Confidence intervals for a quantile are
distribution-free, from order statistics (B ~ Bin(n, p)); attainment uses Clopper-Pearson.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


class _LazyScipyStats:
    """scipy.stats, imported on first use: the import costs ~1.4 s, which every CLI command and the
    simulator process would otherwise pay at start-up whether or not they compute an interval."""

    def __getattr__(self, name: str) -> Any:
        from scipy import stats

        return getattr(stats, name)


_st = _LazyScipyStats()


def percentile(x: ArrayLike, p: float) -> float:
    """p-th percentile (0-100), linear interpolation; nan for an empty sample."""
    a = np.asarray(x, dtype=np.float64)
    return float(np.percentile(a, p)) if a.size else math.nan


def percentile_sorted(a: np.ndarray, p: float) -> float:
    """`percentile` of an already sorted sample (numpy's linear interpolation, without numpy's copy)."""
    if a.size == 0:
        return math.nan
    h = (a.size - 1) * p / 100.0
    lo = int(math.floor(h))
    hi = min(lo + 1, a.size - 1)
    return float(a[lo] + (a[hi] - a[lo]) * (h - lo))


def percentile_inf(x: ArrayLike, p: float) -> float:
    """p-th percentile (linear interpolation, as `percentile`) of a sample that may hold +inf (failed
    requests: infinitely slow). inf once the interpolation touches an inf; never a huge finite number."""
    a = np.sort(np.asarray(x, dtype=np.float64))
    if a.size == 0:
        return math.nan
    h = (a.size - 1) * p / 100.0
    lo, hi = int(math.floor(h)), int(math.ceil(h))
    if math.isinf(a[hi]) and (hi == lo or h > lo):
        return math.inf
    return percentile_sorted(a, p)


def quantile_ci(x: ArrayLike, p: float, conf: float = 0.95, presorted: bool = False) -> tuple[float, float]:
    """Distribution-free CI for the p-th percentile from order statistics.

    With B ~ Bin(n, q), q = p/100, choose 1-based ranks l = F⁻¹(α/2), u = F⁻¹(1−α/2)+1 so that
    P(x_(l) ≤ Q_q ≤ x_(u)) ≥ conf. Returns (nan, nan) when n is too small to bound the quantile
    on that side (e.g. p99 with n < ~300 has no upper bound at 95%)."""
    a = np.asarray(x, dtype=np.float64) if presorted else np.sort(np.asarray(x, dtype=np.float64))
    n = a.size
    if n == 0:
        return math.nan, math.nan
    lo_rank, hi_rank = quantile_ci_ranks(n, p, conf)
    lo = float(a[lo_rank - 1]) if lo_rank >= 1 else math.nan
    hi = float(a[hi_rank - 1]) if hi_rank <= n else math.nan
    return lo, hi


def quantile_ci_ranks(n: int, p: float, conf: float = 0.95) -> tuple[int, int]:
    """1-based order-statistic ranks (l, u) of quantile_ci's interval; l < 1 or u > n: unbounded on that side."""
    q, alpha = p / 100.0, 1.0 - conf
    return int(_st.binom.ppf(alpha / 2, n, q)), int(_st.binom.ppf(1 - alpha / 2, n, q)) + 1


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

    def __init__(self, values: ArrayLike, cluster: ArrayLike | None = None, run: ArrayLike | None = None) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.cluster = np.arange(self.values.size) if cluster is None else np.asarray(cluster, dtype=np.int64)
        n_cl = int(self.cluster.max()) + 1 if self.cluster.size else 0
        self.run = np.zeros(n_cl, dtype=np.int64) if run is None else np.asarray(run, dtype=np.int64)
        if self.run.size < n_cl:  # more run ids than clusters with values: the last requests failed (no values)
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


def _uniform_counts(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """(m, n) counts of n draws with replacement from n items, per row (= multinomial(n, 1/n), but vectorised)."""
    idx = rng.integers(0, n, (m, n)) + (np.arange(m, dtype=np.int64) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=m * n).reshape(m, n)


def _cluster_counts(rng: np.random.Generator, run: np.ndarray, m: int) -> np.ndarray:
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


def mean_ratio_ci(base: ArrayLike, new: ArrayLike, conf: float = 0.95) -> tuple[float, float, float]:
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


# ------------------------------------------------------------------ SLO decisions (sequential probes)
def look_confidence(conf: float, looks: int) -> float:
    """Per-look confidence when a probe may stop at any of `looks` looks (Bonferroni alpha spending):
    the chance that any look decides wrongly stays at or below 1 − conf."""
    return 1.0 - (1.0 - conf) / max(1, looks)


def planned_looks(first_s: float, max_s: float, growth: float = 1.25) -> int:
    """Looks at first_s, first_s·growth, … up to max_s, plus the final one after the drain."""
    if max_s <= first_s:
        return 1
    return 1 + int(math.ceil(math.log(max_s / first_s) / math.log(growth)))


def block_counts(t: ArrayLike, over: ArrayLike, t0: float, t1: float, blocks: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Samples (n) and exceedances (k) per time block: `blocks` equal blocks over [t0, t1]; samples
    outside fall into the edge blocks."""
    t = np.asarray(t, dtype=np.float64)
    o = np.asarray(over, dtype=bool)
    if t.size == 0:
        return np.zeros(0), np.zeros(0)
    span = max(t1 - t0, 1e-9)
    b = np.clip(((t - t0) / span * blocks).astype(np.int64), 0, blocks - 1)
    return np.bincount(b, minlength=blocks).astype(np.float64), np.bincount(b, weights=o, minlength=blocks)


def autocorr_time(x: ArrayLike, clip_at: float | None = None) -> float:
    """Integrated autocorrelation time τ ≥ 1 of a series in time order: n/τ samples carry the information
    of independent ones. Geyer's initial monotone sequence estimator (Geyer 1992, "Practical Markov chain
    Monte Carlo", the estimator behind MCMC effective sample sizes) on the values clipped at `clip_at` (an
    SLO's threshold): a value past the threshold (a failed request: ∞) counts as at it, so the series is what
    the exceedance indicator is a function of, and its excursions toward the threshold (a queue building) weigh
    by their size — a rank transform would drown a few clustered slow TTFTs in the step-phase noise of the rest.

    1 for fewer than 8 values, and when the estimate is within what independent samples give by chance: the
    95th percentile of τ over 1,000 iid series (exponential and lognormal σ=1, clipped at their p90) is
    1.9 / 1.9 / 1.8 / 1.5 / 1.4 / 1.24 at n = 10 / 50 / 96 / 200 / 400 / 1000; the band used here, 1 + 7.5/√n
    (3.4 / 2.1 / 1.77 / 1.53 / 1.38 / 1.24), sits at that percentile from n ≈ 100 and above it below (10 TTFTs
    of an idle server gave τ ≈ 1.9: noise, not a queue)."""
    y = np.asarray(x, dtype=np.float64)
    y = np.minimum(y, clip_at) if clip_at is not None else y[np.isfinite(y)]
    n = y.size
    if n < 8:
        return 1.0
    y = y - y.mean()
    if not y.any():
        return 1.0
    f = np.fft.rfft(y, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    ac /= ac[0]
    m = (n - 1) // 2
    pairs = ac[0:2 * m:2] + ac[1:2 * m:2]
    neg = np.flatnonzero(pairs <= 0)
    pairs = pairs[: neg[0]] if neg.size else pairs
    if not pairs.size:
        return 1.0
    tau = float(-1.0 + 2.0 * np.minimum.accumulate(pairs).sum())
    return tau if tau > 1.0 + 7.5 / math.sqrt(n) else 1.0  # within independent samples' 95% band: no evidence


def exceedance_interval(n_b: ArrayLike, k_b: ArrayLike, conf: float = 0.95, tau: float = 1.0) -> dict[str, Any]:
    """Fraction of samples above a threshold with a Clopper-Pearson interval on the effective sample size.

    Samples close in time are correlated (the token gaps of one engine step, a burst of arrivals that
    queues), so the binomial variance understates the real one. The design effect deff = var_blocks /
    var_binomial is estimated from the per-block counts (ratio estimator over time blocks, as in batch
    means), floored at 1, and the interval is Clopper-Pearson on n/deff samples with k/deff exceedances
    (Korn & Graubard 1998, "Confidence intervals for proportions with small expected number of positive
    counts estimated from survey data").

    Time blocks see only correlation shorter than a block, and nothing at all in a window with no
    exceedance yet. Near capacity the queue wanders for longer than a whole short window: a window that
    happened to see no queue passes with a block deff of 1. `tau`, the metric's own autocorrelation time
    (autocorr_time, from the values, so it sees the wandering queue before any sample crosses the
    threshold), floors the design effect: deff = max(tau, block deff)."""
    n_b = np.asarray(n_b, dtype=np.float64)
    k_b = np.asarray(k_b, dtype=np.float64)
    n, k = float(n_b.sum()), float(k_b.sum())
    if n <= 0:
        return {"n": 0, "k": 0, "frac": math.nan, "lo": 0.0, "hi": 1.0, "deff": 1.0, "n_eff": 0.0, "tau": tau}
    p = k / n
    deff = max(1.0, float(tau))
    used = n_b > 0
    m = int(used.sum())
    if 0 < k < n and m >= 2:
        var_cl = m / (m - 1) * float(((k_b[used] - p * n_b[used]) ** 2).sum()) / n**2
        var_bin = p * (1 - p) / n
        deff = max(deff, var_cl / var_bin)
    n_eff, k_eff = n / deff, k / deff
    a = 1.0 - conf
    lo = 0.0 if k_eff <= 0 else float(_st.beta.ppf(a / 2, k_eff, n_eff - k_eff + 1))
    hi = 1.0 if k_eff >= n_eff else float(_st.beta.ppf(1 - a / 2, k_eff + 1, n_eff - k_eff))
    return {"n": int(n), "k": int(round(k)), "frac": p, "lo": lo, "hi": hi, "deff": deff, "n_eff": n_eff, "tau": tau}


def percentile_decision(n_b: ArrayLike, k_b: ArrayLike, pct: float, conf: float = 0.95, tau: float = 1.0) -> tuple[str, dict[str, Any]]:
    """Does the pct-th percentile lie at or below the threshold that split the samples into n − k under
    and k over? It does exactly when the exceedance fraction is ≤ 1 − pct/100. 'pass' when the
    exceedance interval lies below that, 'fail' when above, else 'undecided'. For independent samples
    this is the order-statistic interval of the percentile, and MLPerf's early-stopping test."""
    iv = exceedance_interval(n_b, k_b, conf, tau)
    limit = 1.0 - pct / 100.0
    if iv["n"] == 0:
        return "undecided", iv
    if iv["hi"] <= limit:
        return "pass", iv
    if iv["lo"] > limit:
        return "fail", iv
    return "undecided", iv


def samples_to_pass(pct: float, conf: float = 0.95) -> int:
    """Fewest independent samples, none over the threshold, that let a percentile pass at `conf`
    (two-sided interval): p99 at 95% → 368."""
    return int(math.ceil(math.log((1 - conf) / 2) / math.log(pct / 100.0)))


def rate_ratio_interval(d: int, a: int, conf: float = 0.95) -> tuple[float, float, float]:
    """Ratio of two Poisson counts d/a with its exact conditional interval (d | d + a is binomial):
    used for completions vs arrivals. Conservative when the counts are positively correlated."""
    if a <= 0:
        return math.nan, math.nan, math.nan
    lo_p, hi_p = clopper_pearson(d, d + a, conf)
    r = d / a
    lo = lo_p / (1 - lo_p) if lo_p < 1 else math.inf
    hi = hi_p / (1 - hi_p) if hi_p < 1 else math.inf
    return r, lo, hi


def block_trend(t: ArrayLike, y: ArrayLike, t0: float, t1: float, blocks: int = 6) -> dict[str, Any]:
    """Trend of a time series by block means: the series (e.g. requests in flight, sampled on a grid) is
    averaged over `blocks` equal time blocks, and the slope of block means over block centres is tested
    (t-test, blocks − 2 df). Averaging over blocks absorbs the short-range autocorrelation that makes a
    per-sample regression find 'significant' trends in noise. Returns slope (units/s), its p-value
    (one-sided, rising), the rise over [t0, t1] and the residual SD of the block means."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    span = t1 - t0
    out = {"slope": 0.0, "p_rising": 1.0, "rise": 0.0, "resid_sd": math.nan, "mean": float(y.mean()) if y.size else math.nan}
    if y.size < 2 * blocks or span <= 0:
        return out
    b = np.clip(((t - t0) / span * blocks).astype(np.int64), 0, blocks - 1)
    cnt = np.bincount(b, minlength=blocks)
    if (cnt == 0).any():
        return out
    means = np.bincount(b, weights=y, minlength=blocks) / cnt
    centres = t0 + (np.arange(blocks) + 0.5) * span / blocks
    r = _st.linregress(centres, means)
    resid = means - (r.intercept + r.slope * centres)
    sd = float(np.sqrt((resid**2).sum() / (blocks - 2)))
    if r.stderr > 0:
        tstat = r.slope / r.stderr
        p = float(_st.t.sf(tstat, blocks - 2))
    else:
        p = 0.0 if r.slope > 0 else 1.0
    out.update(slope=float(r.slope), p_rising=p, rise=float(r.slope * span), resid_sd=sd)
    return out
