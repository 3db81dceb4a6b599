"""⑤ Records -> point summary. One pure function per metric; formulas (vLLM/MLPerf names) here.

All per-request latencies are in milliseconds and measured from the *intended* send time (the
schedule), so a client that falls behind cannot hide queueing (coordinated omission). The from-send
variants are kept for comparison with tools that measure from the actual send.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from bench import stats
from bench.config import SLO
from bench.records import MAX_TURNS, Columns, RequestRecord
from bench.summary import Latency
from bench.warn import warning

NS_MS = 1e-6

Ints = Sequence[int] | np.ndarray  # a record's chunk times or tokens: int64 array, numpy view or tuple


def ttft_ms(r: RequestRecord) -> float:
    """TTFT = arrival of the first token-bearing chunk − intended send."""
    return (r.chunk_ns[0] - r.intended_ns) * NS_MS if len(r.chunk_ns) else math.nan


def ttft_from_send_ms(r: RequestRecord) -> float:
    """TTFT from the actual send = first token chunk − actual send (what vllm bench serve reports)."""
    return (r.chunk_ns[0] - r.sent_ns) * NS_MS if len(r.chunk_ns) else math.nan


def e2e_ms(r: RequestRecord) -> float:
    """E2E = last byte − intended send."""
    return (r.end_ns - r.intended_ns) * NS_MS


def tpot_ms(r: RequestRecord) -> float:
    """TPOT = (E2E − TTFT) / (output_tokens − 1), per request; nan for fewer than 2 output tokens."""
    if r.output_tokens < 2 or not len(r.chunk_ns):
        return math.nan
    return (e2e_ms(r) - ttft_ms(r)) / (r.output_tokens - 1)


_NONE = np.empty(0, dtype=np.float64)


def _tokens_after_first(r: RequestRecord) -> np.ndarray:
    return np.maximum(1, np.asarray(r.chunk_tokens[1:len(r.chunk_ns)], dtype=np.int64))


def itl_ms(r: RequestRecord) -> np.ndarray:
    """ITL = gaps between token arrivals. A chunk carrying k tokens, arriving g ms after the previous
    chunk, contributes k gaps of g/k. Extra tokens of the first chunk contribute none (no earlier chunk)."""
    return _itl(r.chunk_ns, r.chunk_tokens)


def _itl(chunk_ns: Ints, chunk_tokens: Ints) -> np.ndarray:
    if len(chunk_ns) < 2:
        return _NONE
    k = np.maximum(1, np.asarray(chunk_tokens[1:len(chunk_ns)], dtype=np.int64))
    return np.repeat(np.diff(np.asarray(chunk_ns, dtype=np.int64)) * NS_MS / k, k)


def chunk_gaps_ms(r: RequestRecord) -> np.ndarray:
    """Raw gaps between consecutive token-bearing chunks (no per-token split)."""
    return np.diff(np.asarray(r.chunk_ns, dtype=np.int64)) * NS_MS


def send_lag_ms(r: RequestRecord) -> float:
    """Send lag = actual send − when it could be sent: the intended time, or the moment an in-flight slot
    freed for it (how late the client itself was; waiting for a slot is queueing, counted in its latency)."""
    return (r.sent_ns - max(r.intended_ns, r.slot_ns)) * NS_MS


def slot_wait_ms(r: RequestRecord) -> float:
    """Time a request waited at the client for one of the in-flight cap's slots (0: none)."""
    return max(0, r.slot_ns - r.intended_ns) * NS_MS if r.slot_ns else 0.0


def interactivity(tpot: float) -> float:
    """Interactivity = 1000 / TPOT_ms (tokens/s seen by one user)."""
    return 1000.0 / tpot if tpot and tpot > 0 else math.nan


def column_metric(c: Columns, metric: str) -> np.ndarray:
    """A per-request metric of every row in ms (nan where it has none): ttft_ms, ttft_from_send_ms, e2e_ms
    and tpot_ms over columns."""
    e2e: np.ndarray = (c.end_ns - c.intended_ns) * NS_MS
    if metric == "e2e":
        return e2e
    has = c.n_chunks > 0
    ttft = np.where(has, (c.first_ns - (c.sent_ns if metric == "ttft_from_send" else c.intended_ns)) * NS_MS, math.nan)
    if metric in ("ttft", "ttft_from_send"):
        return ttft
    if metric != "tpot":
        raise ValueError(f"no per-request column for metric '{metric}'")
    tpot: np.ndarray = np.where((c.output_tokens >= 2) & has, (e2e - ttft) / np.maximum(c.output_tokens - 1, 1), math.nan)
    return tpot


def _prompt_tokens(c: Columns) -> np.ndarray:
    """The server's prompt token count, else the requested ISL."""
    pt: np.ndarray = np.where(c.prompt_tokens >= 0, c.prompt_tokens, c.isl)
    return pt


def measurement_window_ns(c: Columns) -> tuple[int, int, str]:
    """Fallback window for results that do not record one (runs before the runner stored its window):
    [first, last] intended send of measured requests ("send"), or [first send, last end] ("full") when
    the sends span under 1 s."""
    w = ~c.warmup
    if not w.any():
        return 0, 0, "none"
    sends = c.intended_ns[w]
    t0, t1 = int(sends.min()), int(sends.max())
    if t1 - t0 >= 1_000_000_000:
        return t0, t1, "send"
    return t0, int(np.maximum(c.end_ns[w], c.sent_ns[w]).max()), "full"


def window_throughput(c: Columns, t0: int, t1: int, out_tok: int) -> dict[str, Any]:
    """Departures: requests completed, output tokens arrived (`out_tok`: what TokenStats counted), and prompt
    tokens of requests whose first token arrived, inside [t0, t1) — successful requests, warmup ones included
    (work done in the window). Rates are these counts / (t1 − t0): the server's completion rate, right past saturation."""
    ok = c.where(c.ok)
    done = int(((ok.end_ns >= t0) & (ok.end_ns < t1)).sum())
    first_in = (ok.n_chunks > 0) & (ok.first_ns >= t0) & (ok.first_ns < t1)
    return {"requests": done, "output_tokens": out_tok, "input_tokens": int(_prompt_tokens(ok)[first_in].sum())}


def arrival_throughput(m: Columns) -> dict[str, Any]:
    """Arrivals: the requests sent in the window that completed, with their tokens. Divided by the
    window this is the delivered rate of a stable server for any window length — every request sent
    in the window is drained, so no lifetime is cut at either edge."""
    ok = m.where(m.ok)
    return {"requests": len(ok), "output_tokens": int(np.maximum(0, ok.output_tokens).sum()), "input_tokens": int(_prompt_tokens(ok).sum())}


def time_avg_in_flight(starts: np.ndarray, ends: np.ndarray, t0: int, t1: int) -> float:
    """Exact time-average of requests in flight over [t0, t1) (each lifetime clipped to the window;
    end 0 = still in flight at t1)."""
    if t1 <= t0:
        return math.nan
    st = np.asarray(starts, dtype=np.int64)
    en = np.asarray(ends, dtype=np.int64)
    en = np.where(en > 0, en, t1)
    busy = np.clip(np.minimum(en, t1) - np.maximum(st, t0), 0, None)
    return float(busy.sum()) / (t1 - t0)


def in_flight_timeline(starts: np.ndarray, ends: np.ndarray, t0: int, t1: int, points: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Requests in flight (sent, not yet ended; end 0 = still in flight) at `points` instants over [t0, t1]."""
    st = np.sort(np.asarray(starts, dtype=np.int64))
    en = np.asarray(ends, dtype=np.int64)
    en = np.sort(np.where(en > 0, en, np.iinfo(np.int64).max))
    t = np.linspace(t0, t1, points).astype(np.int64)
    return t, np.searchsorted(st, t, side="right") - np.searchsorted(en, t, side="right")


def steady_state(starts: np.ndarray, ends: np.ndarray, measured: np.ndarray, t0: int, t1: int, mode: str, lifetimes_needed: float = 3.0,
                 conf: float = 0.95) -> dict[str, Any]:
    """Is the probe in steady state, and is the server keeping up (METHODS §3)? Inputs are arrays over
    every request sent (warmup included): intended send ns, end ns (0 = still in flight at t1, or
    cancelled), and whether it is measured (sent inside [t0, t1)).

    lifetime L = median over measured requests of (end, or t1 if still in flight) − send: a lower bound
    while requests are in flight. Keep-up: completions in [t0 + L, t1) against arrivals in [t0, t1 − L) —
    departures lag arrivals by a lifetime, so this compares like with like whatever the warmup was;
    saturated when the ratio's interval lies below 0.95. Queue growth: requests in flight over the window
    (from 1.5 L after the first send, at most half-way, so the ramp-up is left out), by block means (stats.block_trend);
    saturated when rising at p < 0.01 by more than max(2 residual SD, 20% of the mean, 2 requests) and
    corroborated by completions trailing arrivals (the ratio's interval below 1; without a keep-up window,
    a rise > 50% of the mean). Measured: no false positive at 5/50/80% of the simulator's capacity over 10 seeds.
    Steady = not saturated and the window spans >= `lifetimes_needed` L."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    measured = np.asarray(measured, dtype=bool)
    out: dict[str, Any] = {"lifetime_s": None, "window_lifetimes": None, "keep_up": None, "in_flight": None,
                 "saturated": False, "steady": False, "reason": ""}
    span_s = (t1 - t0) / 1e9
    if not measured.any() or span_s <= 0:
        out["reason"] = "no requests in the window"
        return out
    life = (np.where(ends[measured] > 0, ends[measured], t1) - starts[measured]) / 1e9
    lifetime = float(np.median(np.maximum(life, 0)))
    out["lifetime_s"] = lifetime
    out["window_lifetimes"] = span_s / lifetime if lifetime > 0 else math.inf
    reasons = []
    if mode == "qps":
        lt_ns = int(lifetime * 1e9)
        if t1 - t0 > 2 * lt_ns:
            a = int(((starts >= t0) & (starts < t1 - lt_ns) & measured).sum())
            d = int(((ends >= t0 + lt_ns) & (ends < t1)).sum())
            ratio, lo, hi = stats.rate_ratio_interval(d, a, conf)
            out["keep_up"] = {"arrivals": a, "completions": d, "ratio": ratio, "ci": [lo, hi]}
            if a and hi < 0.95:
                reasons.append(f"completions {d} vs arrivals {a} over the window (ratio {ratio:.2f}, 95% CI {lo:.2f}-{hi:.2f}): "
                               "the server is not keeping up")
        first = int(starts.min())
        ts = max(t0, first + min(int(1.5 * lt_ns), (t1 - first) // 2))  # past the ramp-up (a queue inflates L: cap it)
        if t1 - ts >= 1_000_000_000:
            t, n = in_flight_timeline(starts, ends, ts, t1)
            tr = stats.block_trend(t / 1e9, n, ts / 1e9, t1 / 1e9)
            out["in_flight"] = {k: tr[k] for k in ("slope", "p_rising", "rise", "resid_sd", "mean")}
            ku = out["keep_up"]
            # a growing queue means completions trail arrivals (arrivals − completions = the rise): a rise that
            # completions keep pace with is a queue excursion, common near the batch limit, not growth
            corroborated = ku["ci"][1] < 1.0 if ku and ku["arrivals"] else tr["rise"] > 0.5 * tr["mean"]
            if tr["p_rising"] < 0.01 and tr["rise"] > max(2 * tr["resid_sd"], 0.2 * tr["mean"], 2.0) and corroborated:
                reasons.append(f"requests in flight rose by {tr['rise']:.0f} (mean {tr['mean']:.0f}) over the window: the queue is growing")
    if reasons:
        out.update(saturated=True, reason="; ".join(reasons))
    elif out["window_lifetimes"] < lifetimes_needed:
        out["reason"] = (f"window {span_s:.1f} s is {out['window_lifetimes']:.1f} request lifetimes (E2E p50 {lifetime:.2f} s); "
                         f"steady state needs >= {lifetimes_needed:g}")
    else:
        out["steady"] = True
    return out


def _meets(m: Columns, slos: list[SLO], tokens: TokenStats) -> np.ndarray:
    """Per-request SLO test (for goodput and attainment), a row at a time: TTFT, TPOT and E2E compare directly
    (a request without a TPOT passes that one); ITL uses the request's own ITL at the SLO's percentile, read
    from `tokens`. A failed request meets nothing."""
    good: np.ndarray = m.ok.copy()
    for s in slos:
        if s.metric == "itl":
            good &= ~np.isin(m.row, np.fromiter(tokens.unmet[tokens.slo_index(s)], np.int64))
            continue
        v = column_metric(m, s.metric)
        good &= (v <= s.threshold_ms) | (np.isnan(v) if s.metric == "tpot" else False)
    return good


def latency_stats(values: ArrayLike, pcts: tuple[float, ...] = (50, 90, 95, 99)) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    a = np.sort(a[~np.isnan(a)])  # sorted once (in place below): one copy of a large ITL sample, not one per percentile
    d: dict[str, Any] = {"n": int(a.size), "mean": float(a.mean()) if a.size else math.nan}
    for p in pcts:
        d[f"p{p:g}"] = stats.percentile_sorted(a, p)
    lo, hi = stats.quantile_ci(a, 99, presorted=True)
    d["p99_ci"] = [lo, hi]
    d["max"] = float(a.max()) if a.size else math.nan
    return d


class GapStats:
    """Token gaps (ITL, ms) in bounded memory: held exactly up to EXACT_CAP values (every probe of a
    sweep, a run of a few thousand requests), then folded into a log histogram with bins 0.1% wide, so a
    run of any length summarises in the same memory. Past the cap, percentiles and their interval are
    read at bin centres (relative error <= 0.05%, `binned` in the stats says so); count, mean and max
    stay exact, and SLO tests never use the bins (exceedances are counted per request, exactly)."""

    EXACT_CAP = 1_000_000
    LO_MS, REL = 1e-3, 1e-3  # bin 0: below 1 µs; bin i >= 1: [LO (1+REL)^(i-1), LO (1+REL)^i)
    NBINS = int(math.ceil(math.log(1e10) / math.log1p(1e-3))) + 2  # to 1e7 ms

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, -math.inf
        self._parts: list[np.ndarray] = []
        self._hist: np.ndarray | None = None

    def add(self, g: np.ndarray) -> None:
        g = np.asarray(g, dtype=np.float64)
        g = g[~np.isnan(g)]
        if not g.size:
            return
        self.n += int(g.size)
        self.total += float(g.sum())
        self.max = max(self.max, float(g.max()))
        if self._hist is None:
            self._parts.append(g)
            if self.n > self.EXACT_CAP:
                self._hist = np.zeros(self.NBINS, dtype=np.int64)
                for part in self._parts:
                    self._bin(part)
                self._parts = []
        else:
            self._bin(g)

    def _bin(self, g: np.ndarray) -> None:
        assert self._hist is not None
        i = np.floor(np.log(np.maximum(g, self.LO_MS) / self.LO_MS) / math.log1p(self.REL)).astype(np.int64) + 1
        i[g < self.LO_MS] = 0
        self._hist += np.bincount(np.clip(i, 0, self.NBINS - 1), minlength=self.NBINS)

    def _centre(self, i: np.ndarray) -> np.ndarray:
        c = np.where(i == 0, 0.0, self.LO_MS * (1 + self.REL) ** (np.asarray(i, dtype=np.float64) - 0.5))
        return np.minimum(c, self.max)

    def stats(self) -> dict[str, Any]:
        """latency_stats' dict (n, mean, p50..p99, p99_ci, max)."""
        if self._hist is None:
            return latency_stats(np.concatenate(self._parts) if self._parts else _NONE)
        d: dict[str, Any] = {"n": self.n, "mean": self.total / self.n, **{f"p{p:g}": self.percentile(p) for p in (50, 90, 95, 99)}}
        lo_rank, hi_rank = stats.quantile_ci_ranks(self.n, 99)
        d["p99_ci"] = [self._at_rank(lo_rank - 1) if lo_rank >= 1 else math.nan,
                       self._at_rank(hi_rank - 1) if hi_rank <= self.n else math.nan]
        d["max"] = self.max
        d["binned"] = True
        return d

    def percentile(self, p: float) -> float:
        """As np.percentile (linear interpolation between order statistics), read at bin centres once binned."""
        if self._hist is None:
            return stats.percentile_inf(np.concatenate(self._parts) if self._parts else _NONE, p)
        h = (self.n - 1) * p / 100.0
        lo = int(math.floor(h))
        a, b = self._at_rank(lo), self._at_rank(int(math.ceil(h)))
        return a + (b - a) * (h - lo)

    def _at_rank(self, k: int) -> float:
        """The k-th smallest gap (0-based), at its bin's centre."""
        assert self._hist is not None
        return float(self._centre(np.array([np.searchsorted(np.cumsum(self._hist), k, side="right")]))[0])


class TokenStats:
    """Everything a summary needs from the per-token arrays, accumulated one request at a time — so a run's
    records can be streamed from disk and kept without their token arrays (summarize_run). Fed the same
    way for an in-memory list (summarize), so both paths compute the same numbers.

    - output tokens arriving in [t0, t1) from successful requests (departures throughput);
    - the measured token gaps (GapStats) of successful and partially measured requests;
    - per ITL SLO: exceedance counts per time block (the SLO test), gaps within the threshold, and the
      requests whose own ITL percentile misses it (goodput / attainment)."""

    def __init__(self, slos: list[SLO], t0: int, t1: int, departures: bool, blocks: int = 20) -> None:
        self.t0, self.t1, self.departures, self.blocks = t0, t1, departures, blocks
        self.itl_slos = [x for x in slos if x.metric == "itl"]
        self.win_out = 0
        self.gaps = GapStats()
        self.n_b = [np.zeros(blocks) for _ in self.itl_slos]
        self.k_b = [np.zeros(blocks) for _ in self.itl_slos]
        self.within = [0] * len(self.itl_slos)
        self.unmet: list[set[int]] = [set() for _ in self.itl_slos]  # rows whose own ITL percentile misses

    def add(self, row: int, ok: bool, cancelled: bool, chunk_ns: Ints, chunk_tokens: Ints, in_m: bool, in_mc: bool) -> None:
        """One request (its position `row` in the run): whether it succeeded or was cancelled, its token arrays
        and whether it is measured (in_m) or partially measured (in_mc: cancelled after its first token)."""
        if ok and self.departures and len(chunk_ns):
            c = np.asarray(chunk_ns, dtype=np.int64)
            self.win_out += int(np.asarray(chunk_tokens, dtype=np.int64)[(c >= self.t0) & (c < self.t1)].sum())
        if not in_mc:
            return
        g = _itl(chunk_ns, chunk_tokens)
        measured = ok or (cancelled and len(chunk_ns) > 0)
        if measured:
            self.gaps.add(g)
        if not self.itl_slos or not len(g):
            return
        k = np.maximum(1, np.asarray(chunk_tokens[1:len(chunk_ns)], dtype=np.int64))
        t = np.repeat(np.asarray(chunk_ns[1:], dtype=np.int64), k) / 1e9
        for j, slo in enumerate(self.itl_slos):
            over = g > slo.threshold_ms
            n_b, k_b = stats.block_counts(t, over, self.t0 / 1e9, self.t1 / 1e9, self.blocks)
            self.n_b[j] += n_b
            self.k_b[j] += k_b
            if measured:
                self.within[j] += int(g.size - np.count_nonzero(over))
            if in_m and ok and not stats.percentile(g, slo.pct) <= slo.threshold_ms:
                self.unmet[j].add(row)

    def slo_index(self, slo: SLO) -> int:
        return next(j for j, x in enumerate(self.itl_slos) if x.name == slo.name)


def _membership(c: Columns, t0: int, t1: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(measured, measured or partially measured) per row: sent inside the window after warmup; a cancelled
    request counts only for what it measured before the cancel (partial)."""
    return _measured_masks(_sent_in(c, t0, t1, kind), c.error_kind == "cancelled", c.n_chunks)


def _measured_masks(sent_in: np.ndarray, cancelled: np.ndarray, n_chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    in_m = sent_in & ~cancelled
    return in_m, in_m | (sent_in & cancelled & (n_chunks > 0))


def _sent_in(c: Columns, t0: int, t1: int, kind: str) -> np.ndarray:
    """Sent inside the measurement window, after the warmup."""
    out: np.ndarray = ~c.warmup & ((c.intended_ns >= t0) & (c.intended_ns < t1) if kind == "schedule" else True)
    return out


def metric_values(c: Columns, metric: str) -> np.ndarray:
    """Successful requests' values (TTFT, TTFT from send, TPOT, E2E; ITL comes from TokenStats); TTFT also takes
    what a cancelled request measured before it was cancelled (leaving out its TTFT would drop the longest waits
    of an interrupted probe)."""
    sel = c.ok | ((c.error_kind == "cancelled") & (c.n_chunks > 0)) if metric in ("ttft", "ttft_from_send") else c.ok
    a = column_metric(c, metric)[sel]
    out: np.ndarray = a[~np.isnan(a)]
    return out


def summarize(recs: Sequence[RequestRecord], slos: list[SLO] | None = None, *, window_ns: tuple[int, int] | None = None,
              **kw: Any) -> dict[str, Any]:
    """summarize_columns() of records in memory: their token arrays are fed to TokenStats here (summarize_run
    streams them from disk)."""
    slos = slos or []
    c = Columns.from_records(recs)
    window = _window(c, window_ns)
    in_m, in_mc = _membership(c, *window)
    tokens = TokenStats(slos, window[0], window[1], window[2] in ("send", "schedule"))
    for i, r in enumerate(recs):
        tokens.add(i, r.ok, r.error_kind == "cancelled", r.chunk_ns, r.chunk_tokens, bool(in_m[i]), bool(in_mc[i]))
    return summarize_columns(c, slos, tokens, window, **kw)


def _window(c: Columns, window_ns: tuple[int, int] | None) -> tuple[int, int, str]:
    """The runner's recorded measurement window ("schedule"), else the fallback from the sends."""
    if window_ns is None:
        return measurement_window_ns(c)
    return int(window_ns[0]), int(window_ns[1]), "schedule"


def summarize_columns(c: Columns, slos: list[SLO], tokens: TokenStats, window: tuple[int, int, str], *, offered_qps: float | None = None,
                      mode: str = "qps", expect_exact_osl: bool = True, conf: float = 0.95, lifetimes_needed: float = 3.0,
                      aborted: bool = False) -> dict[str, Any]:
    """Point summary over the measured requests: those sent inside the measurement window (the runner
    records it: [end of warmup, end of sending)), cancelled ones left out. `conf` is the confidence of
    each SLO decision (a sequential probe spends its 5% over its looks, see stats.look_confidence).

    Throughput: while the server keeps up, the offered rate × the share of requests completed, with their
    mean tokens ("offered"; for an open loop) or the requests sent in the window that completed per second
    of window ("arrivals") — both unbiased for any window length; for a closed loop (bursty sends), Little's
    law: time-average in flight / mean lifetime ("little"); the completion rate inside the window
    ("departures") once it does not keep up (saturated), where arrivals would overstate it."""
    t0, t1, kind = window
    in_m, in_mc = _membership(c, t0, t1, kind)
    m, mc = c.where(in_m), c.where(in_mc)  # mc: + what cancelled requests measured (TTFT, gaps so far)
    ok = m.where(m.ok)
    window_s = (t1 - t0) / 1e9 if t1 > t0 else math.nan
    out_tok = int(ok.output_tokens.sum())
    in_tok = int(_prompt_tokens(ok).sum())
    dep = window_throughput(c, t0, t1, tokens.win_out) if kind in ("send", "schedule") else {"requests": len(ok), "output_tokens": out_tok,
                                                                             "input_tokens": in_tok}
    arr = arrival_throughput(m)
    if kind == "send" and len(m) > 1:  # window = first..last send: n sends span n − 1 gaps
        scale = (len(m) - 1) / len(m)
        arr = {k: v * scale for k, v in arr.items()}
    full_s = (int(m.end_ns.max()) - t0) / 1e9 if len(m) else math.nan
    st, en = c.intended_ns, np.where(c.error_kind == "cancelled", 0, c.end_ns)  # every request sent: end 0 for a cancelled one
    ss = (steady_state(st, en, in_m, t0, t1, mode, lifetimes_needed) if window_s > 0 and len(c)
          else {"saturated": False, "steady": False, "reason": "empty window"})

    def rates(c: dict[str, Any]) -> dict[str, Any]:
        return {"request_throughput": c["requests"] / window_s if window_s > 0 else math.nan,
                "output_tps": c["output_tokens"] / window_s if window_s > 0 else math.nan,
                "input_tps": c["input_tokens"] / window_s if window_s > 0 else math.nan,
                "total_tps": (c["input_tokens"] + c["output_tokens"]) / window_s if window_s > 0 else math.nan}

    estimator = "departures" if ss["saturated"] or aborted else "arrivals"
    chosen = rates(dep if estimator == "departures" else arr)

    def at_rate(x: float) -> dict[str, Any]:  # a request rate, with the completed requests' mean tokens
        per = {k: arr[k] / arr["requests"] for k in ("output_tokens", "input_tokens")}
        return {"request_throughput": x, "output_tps": x * per["output_tokens"], "input_tps": x * per["input_tokens"],
                "total_tps": x * (per["output_tokens"] + per["input_tokens"])}

    if estimator == "arrivals" and mode == "concurrency" and len(ok) and window_s > 0:
        # a closed loop sends when a request ends, so its sends come in bursts (a whole batch ends together
        # at the batch limit): counting the sends that fall in a short window is off by up to one burst.
        # Little's law is not: rate = time-average in flight / mean lifetime, both over the window.
        ended = column_metric(m, "e2e")[m.end_ns > 0]
        life_s = float(ended.mean()) / 1e3 if ended.size else math.nan
        x = time_avg_in_flight(st, en, t0, t1) / life_s * len(ok) / len(m) if life_s > 0 else math.nan
        if math.isfinite(x):
            chosen, estimator = at_rate(x), "little"
    if estimator == "arrivals" and mode == "qps" and offered_qps and len(m) and len(ok):
        # a stable open loop delivers what it is offered: offered rate × share completed, with each completed
        # request's mean tokens — the realized arrival count only adds Poisson noise (±7% at 200 requests)
        chosen, estimator = at_rate(offered_qps * len(ok) / len(m)), "offered"
    s: dict[str, Any] = {
        "n_total": len(c),
        "n_warmup": int(c.warmup.sum()),
        "n_measured": len(m),
        "n_ok": len(ok),
        "n_failed": len(m) - len(ok),
        "n_cancelled": int((c.error_kind == "cancelled").sum()),
        "n_cancelled_measured": len(mc) - len(m),  # cancelled after their first token: TTFT and gaps counted
        "errors": dict(Counter(k or "empty" for k in m.error_kind[~m.ok])),
        "window_s": window_s,
        "window_kind": kind,
        "window_ns": [t0, t1],
        "offered_qps": offered_qps,
        "mode": mode,
        **chosen,
        "throughput": {"estimator": estimator, "arrivals": rates(arr), "departures": rates(dep)},
        # vLLM bench serve's definition (all measured requests / first send → last end), for comparison
        "output_tps_incl_drain": out_tok / full_s if full_s > 0 else math.nan,
        "duration_incl_drain_s": full_s,
        "output_tokens": out_tok,
        "input_tokens": in_tok,
        "window_tokens": {"output": dep["output_tokens"], "input": dep["input_tokens"]},
    }
    sends = m.intended_ns.tolist()
    first, last = (min(sends), max(sends)) if sends else (0, 0)
    s["achieved_send_qps"] = (len(sends) / window_s if kind == "schedule" and window_s > 0 else
                              (len(sends) - 1) / ((last - first) / 1e9) if len(sends) > 1 and last > first else math.nan)
    lat = {k: latency_stats(metric_values(mc, k)) if k != "itl" else tokens.gaps.stats() for k in ("ttft", "ttft_from_send", "tpot", "itl", "e2e")}
    sent = m.sent_ns != 0
    lat["send_lag"] = latency_stats((m.sent_ns[sent] - np.maximum(m.intended_ns[sent], m.slot_ns[sent])) * NS_MS)
    slot = m.slot_ns != 0
    waited = np.maximum(0, m.slot_ns[slot] - m.intended_ns[slot]) * NS_MS
    s["client_queue"] = {"waited": int(waited.size), "wait_ms": latency_stats(waited)}
    s["latency_ms"] = lat
    s["interactivity_p50"] = interactivity(lat["tpot"]["p50"])
    s["mean_in_flight"] = time_avg_in_flight(st, en, t0, t1) if window_s > 0 and len(c) else math.nan
    n_good = int(_meets(m, slos, tokens).sum()) if slos else len(ok)
    s["goodput_rps"] = n_good / window_s if window_s > 0 else math.nan
    s["attainment"] = n_good / len(m) if len(m) else math.nan
    s["attainment_ci"] = list(stats.clopper_pearson(n_good, len(m), conf))
    s["slos"] = [slo_verdict(mc, slo, t0, t1, conf, tokens) for slo in slos]
    s["slo_met"] = all(v["met"] for v in s["slos"]) if slos else None
    s["slo_confidence"] = conf
    cache_reported = bool((ok.cached_tokens >= 0).any())  # the server says per request what its prefix cache served
    turns = sorted(set(m.turn[m.turn >= 0].tolist()))
    if turns:  # multi-turn datasets: latency per turn
        s["per_turn"] = {}
        for t in turns:
            mt = m.where(m.turn == t)
            pt = mt.prompt_tokens[mt.prompt_tokens >= 0]
            s["per_turn"][str(t)] = {"n": len(mt), "ttft": latency_stats(metric_values(mt, "ttft")),
                                     "prompt_tokens_mean": float(pt.mean()) if pt.size else math.nan,
                                     "cached_fraction": cached_fraction(ok.where(ok.turn == t), cache_reported)}
    reported = ok.where(ok.prompt_tokens > 0) if cache_reported else None
    if reported is not None and len(reported):  # the server's own count of prompt tokens served from its prefix cache
        s["prompt_cache"] = {"requests": len(reported), "cached_fraction": cached_fraction(reported, True),
                             "hit_requests": int((reported.cached_tokens > 0).sum())}
    conv = m.where(m.turn >= 0)
    if len(conv):  # conversations: first send to last byte, for sessions whose every measured turn succeeded
        keys, inv = np.unique(conv.index // MAX_TURNS, return_inverse=True)
        all_ok = np.ones(len(keys), bool)
        np.logical_and.at(all_ok, inv, conv.ok)
        last_end = np.full(len(keys), np.iinfo(np.int64).min)
        np.maximum.at(last_end, inv, conv.end_ns)
        first_send = np.full(len(keys), np.iinfo(np.int64).max)
        np.minimum.at(first_send, inv, conv.intended_ns)
        s["sessions"] = {"n": len(keys), "complete": int(all_ok.sum()), "turns_mean": float(np.bincount(inv).mean()),
                         "duration_s": latency_stats((last_end[all_ok] - first_send[all_ok]) / 1e9)}
    s["token_mismatch"] = token_mismatches(m, expect_exact_osl)
    s["steady_state"] = ss
    s["saturation"] = {"saturated": bool(ss["saturated"]), "reason": ss["reason"] if ss["saturated"] else "",
                       "completed_fraction": len(ok) / len(m) if m else None}
    s["warnings"] = warnings_for(s, m, slos)
    return s


def per_stage(c: Columns, pieces: list[tuple[float, float, float]], ramp: bool) -> list[dict[str, Any]]:
    """A staged (or ramped) open loop, stage by stage: the requests the schedule sent in each stretch (their
    realised rate beside the one asked for: the expected count is the rate's integral) and the latency of
    the measured ones among them (warmup excluded). ITL per stage is not split (the token arrays are
    summarised in one pass)."""
    out = []
    start = 0.0
    for k, (dur, r0, r1) in enumerate(pieces):
        sent = c.where(c.stage == (-1 if ramp and k == 0 else (k - 1 if ramp else k)))  # the send schedule's stretch of each request
        m = _measured(sent)
        ok = m.where(m.ok)
        expected = dur * (r0 + r1) / 2
        out.append({"stage": "ramp" if ramp and k == 0 else (k - 1 if ramp else k), "start_s": start, "duration_s": dur,
                    "qps": r1 if r0 == r1 else None, "qps_from_to": [r0, r1], "expected_requests": expected, "sent": len(sent),
                    "realised_qps": len(sent) / dur if dur > 0 else math.nan, "measured": len(m), "ok": len(ok),
                    "ttft": latency_stats(metric_values(m, "ttft")), "e2e": latency_stats(metric_values(ok, "e2e"))})
        start += dur
    return out


def _measured(c: Columns) -> Columns:
    return c.where(~c.warmup & (c.error_kind != "cancelled"))


def _share(m: Columns, mine: np.ndarray) -> dict[str, Any]:
    """One part of the measured requests (a model of a mix, a replica): its share, failures and latency."""
    part = m.where(mine)
    ok = part.where(part.ok)
    return {"measured": len(part), "share": len(part) / len(m) if len(m) else math.nan, "ok": len(ok), "failed": len(part) - len(ok),
            "ttft": latency_stats(metric_values(part, "ttft")), "tpot": latency_stats(metric_values(ok, "tpot")),
            "e2e": latency_stats(metric_values(ok, "e2e"))}


def per_model(c: Columns, mix: dict[str, float]) -> dict[str, dict[str, Any]]:
    """A model mix, model by model: the share of measured requests each name got (beside its weight's share)
    and their latency."""
    total_w = sum(mix.values())
    m = _measured(c)
    out = {}
    for name, w in mix.items():
        d = _share(m, m.model == name)
        del d["failed"]
        out[name] = {"weight": w / total_w, **d}
    return out


def per_endpoint(c: Columns, urls: list[str]) -> dict[str, dict[str, Any]]:
    """Several replicas behind one target, replica by replica: the share of measured requests each got,
    their failures and latency (a replica slower than the rest shows here before it moves the fleet's tail)."""
    m = _measured(c)
    return {url: {"endpoint": e, **_share(m, m.endpoint == e)} for e, url in enumerate(urls)}


# record fields no summary reads (identifiers for tracing a request back): left on disk by summarize_run
_NOT_SUMMARISED = ("response_id", "source", "prefix_group", "server_recv_ns", "retries", "finish_reason")


def summarize_run(run_dir: Path, slos: list[SLO] | None = None, *, window_ns: tuple[int, int] | None = None,
                  **kw: Any) -> tuple[dict[str, Any], Columns]:
    """summarize() of a run directory in bounded memory: the records' scalars are read as columns (~150 bytes a
    request), their token arrays streamed a batch at a time into TokenStats and dropped (each request keeps its
    first chunk's time: TTFT). Returns (summary, those columns). Memory does not grow with the tokens of a run."""
    from bench.records import iter_chunks, read_columns

    c = read_columns(run_dir, skip=_NOT_SUMMARISED)
    slos = slos or []
    window = _window(c, window_ns)
    tokens = TokenStats(slos, window[0], window[1], window[2] in ("send", "schedule"))
    n = len(c)
    n_chunks, first_ns = np.zeros(n, np.int64), np.zeros(n, np.int64)
    sent_in, ok, cancelled = _sent_in(c, *window), c.ok, c.error_kind == "cancelled"
    i = seen = 0
    for ns_views, tok_views in iter_chunks(run_dir):
        seen += len(ns_views)
        if seen > n:
            break
        j = i + len(ns_views)
        n_chunks[i:j] = [len(v) for v in ns_views]
        in_m, in_mc = _measured_masks(sent_in[i:j], cancelled[i:j], n_chunks[i:j])  # a batch's rows: each needs its chunk count
        for k, (cn, ct, ok_k, canc_k, m_k, mc_k) in enumerate(zip(ns_views, tok_views, ok[i:j].tolist(), cancelled[i:j].tolist(),
                                                                 in_m.tolist(), in_mc.tolist())):
            if len(cn):
                first_ns[i + k] = cn[0]
            tokens.add(i + k, ok_k, canc_k, cn, ct, m_k, mc_k)
        i = j
    if seen != n:
        raise RuntimeError(f"{run_dir}: {n} records but {seen}{'+' if seen > n else ''} token rows; the results files changed while being read")
    c.set_first_chunks(n_chunks, first_ns)
    return summarize_columns(c, slos, tokens, window, **kw), c


def over_samples(r: RequestRecord, slo: SLO) -> tuple[np.ndarray | list[int], np.ndarray | list[bool]]:
    """The samples one request adds to an SLO's test: (time ns, over the threshold?). TTFT, TPOT and E2E
    give one per request at its intended send (a failed request counts as over: infinitely slow); ITL
    gives one per token gap at its arrival (a failed request's gaps so far)."""
    if slo.metric == "itl":
        g = itl_ms(r)
        if not len(g):
            return [], []
        return np.repeat(np.asarray(r.chunk_ns[1:], dtype=np.int64), _tokens_after_first(r)), g > slo.threshold_ms
    v = request_value(r, slo)
    if v is None:
        return [], []
    return [r.intended_ns], [v > slo.threshold_ms]


# Per-request metrics whose own autocorrelation time floors an SLO decision's design effect (stats.exceedance_interval).
# TTFT only: a TTFT is a point observation of the queue, and its correlation is the queue's (what time blocks miss
# in a window that has not crossed the threshold yet). TPOT and E2E average over a request's whole lifetime, so
# neighbours share most of their decode steps and their autocorrelation is that overlap even far below the
# threshold: on the demo's H100 profile at 13.7 req/s, 0 of 406 TPOT samples over a 50 ms p90 stayed undecided
# for 30 s with it. They keep the time-block estimate.
SERIES_DEFF = ("ttft",)


def request_value(r: RequestRecord, slo: SLO) -> float | None:
    """The value one request adds to a per-request SLO's test (TTFT, TPOT, E2E in ms): inf when it
    failed (infinitely slow), None when it adds none (a cancel before its first token, no TPOT)."""
    if r.error_kind == "cancelled":  # censored: only a TTFT measured before the cancel is a sample
        if slo.metric != "ttft" or not len(r.chunk_ns):
            return None
    elif not r.ok:
        return math.inf
    v = {"ttft": ttft_ms, "tpot": tpot_ms, "e2e": e2e_ms}[slo.metric](r)
    return None if math.isnan(v) else v


def slo_verdict(m: Columns | Sequence[RequestRecord], slo: SLO, t0: int | None = None, t1: int | None = None, conf: float = 0.95,
                tokens: TokenStats | None = None) -> dict[str, Any]:
    """One SLO over the measured requests: the percentile's point value (failed requests count as
    infinitely slow, so it reads inf once they reach the tail), and the decision — 'pass' / 'fail' /
    'undecided' — from the exceedance count and its interval (stats.percentile_decision). An ITL SLO
    reads its counts from `tokens` (TokenStats over the same requests and window); records given without
    one are streamed into one here."""
    if not isinstance(m, Columns):
        if slo.metric == "itl" and tokens is None:
            t0, t1, tokens = _itl_tokens(m, slo, t0, t1)
        m = Columns.from_records(m)
    if slo.metric == "itl":
        if tokens is None or t0 is None or t1 is None:
            raise ValueError("an ITL SLO is decided from the token arrays: pass the TokenStats of the same requests and window")
        j = tokens.slo_index(slo)
        decision, iv = stats.percentile_decision(tokens.n_b[j], tokens.k_b[j], slo.pct, conf)
        v = tokens.gaps.percentile(slo.pct) if tokens.gaps.n else math.nan
        n = tokens.gaps.n
        return {"slo": slo.name, "threshold_ms": slo.threshold_ms, "value_ms": v, "met": bool(v <= slo.threshold_ms),
                "decision": decision, "exceed": iv, "fraction_within": tokens.within[j] / n if n else math.nan, "n": n}
    cancelled = m.error_kind == "cancelled"
    failed = ~m.ok & ~cancelled
    vals = np.concatenate([metric_values(m, slo.metric), np.full(int(failed.sum()), math.inf)])
    v = stats.percentile_inf(vals, slo.pct)
    # each request's sample at its intended send (request_value): inf when it failed; a cancelled one adds only a TTFT it measured
    per_req = np.where(failed, math.inf, column_metric(m, slo.metric))
    has = ~np.isnan(per_req) & (~cancelled if slo.metric != "ttft" else True)
    ts, x = m.intended_ns[has], per_req[has]
    if t0 is None or t1 is None or t1 <= t0:
        t0, t1 = (int(ts.min()), int(ts.max()) + 1) if ts.size else (0, 1)
    n_b, k_b = stats.block_counts(ts / 1e9, x > slo.threshold_ms, t0 / 1e9, t1 / 1e9)
    tau = 1.0
    if slo.metric in SERIES_DEFF:  # one value per request: their autocorrelation in send order floors the design effect
        tau = stats.autocorr_time(x[np.argsort(ts, kind="stable")], clip_at=slo.threshold_ms)
    decision, iv = stats.percentile_decision(n_b, k_b, slo.pct, conf, tau)
    within = int(np.count_nonzero(vals <= slo.threshold_ms))
    return {
        "slo": slo.name,
        "threshold_ms": slo.threshold_ms,
        "value_ms": v,
        "met": bool(v <= slo.threshold_ms),
        "decision": decision,
        "exceed": iv,
        "fraction_within": within / len(vals) if len(vals) else math.nan,
        "n": len(vals),
    }


def _itl_tokens(recs: Sequence[RequestRecord], slo: SLO, t0: int | None, t1: int | None) -> tuple[int, int, TokenStats]:
    """TokenStats of one ITL SLO over records in memory, every request measured; the window defaults to the span of their gaps."""
    if t0 is None or t1 is None or t1 <= t0:
        times = [int(r.chunk_ns[k]) for r in recs for k in (1, len(r.chunk_ns) - 1) if len(r.chunk_ns) > 1]
        t0, t1 = (min(times), max(times) + 1) if times else (0, 1)
    tokens = TokenStats([slo], t0, t1, False)
    for i, r in enumerate(recs):
        tokens.add(i, r.ok, r.error_kind == "cancelled", r.chunk_ns, r.chunk_tokens, False, True)
    return t0, t1, tokens


def cached_fraction(recs: Columns | Sequence[RequestRecord], absent_is_zero: bool = False) -> float | None:
    """Prompt tokens the server served from its prefix cache over its prompt tokens, over the requests that
    reported usage.prompt_tokens_details.cached_tokens (None: none did). `absent_is_zero`: the server reports
    the field only on a hit (vLLM and SGLang leave the details out when nothing was cached), so once any request
    of the run carried it, a request whose usage lacks it counts as 0 cached."""
    c = recs if isinstance(recs, Columns) else Columns.from_records(recs)
    rep = ((c.cached_tokens >= 0) | absent_is_zero) & (c.prompt_tokens > 0)
    return int(np.maximum(c.cached_tokens[rep], 0).sum()) / int(c.prompt_tokens[rep].sum()) if rep.any() else None


def token_mismatches(m: Columns, expect_exact_osl: bool) -> dict[str, Any]:
    ok = m.where(m.ok)
    served = ok.prompt_tokens >= 0
    return {
        "prompt": int((served & (ok.prompt_tokens_local >= 0) & (ok.prompt_tokens != ok.prompt_tokens_local)).sum()),
        "prompt_vs_requested": int((served & (ok.isl > 0) & (ok.prompt_tokens != ok.isl)).sum()),
        "output": int((ok.output_tokens != ok.osl).sum()) if expect_exact_osl else 0,
        "client_counted": int((~ok.tokens_from_usage).sum()),
    }


def send_lag_limit_ms(slos: list[SLO]) -> float:
    """Client-health limit on the send lag's p99: max(5 ms, 1% of the tightest TTFT SLO) (METHODS §3)."""
    ttft_slo = min((x.threshold_ms for x in slos if x.metric == "ttft"), default=math.inf)
    return max(5.0, 0.01 * ttft_slo) if math.isfinite(ttft_slo) else 5.0


def send_lag_confidently_over(lag: Latency | dict[str, Any], limit_ms: float) -> bool:
    """True when the send lag's p99 is above `limit_ms` beyond sampling noise: the lower end of its 95%
    order-statistic interval is above the limit.

    A short probe has ~100 sends, where the p99 is close to the single largest lag; one 6 ms scheduler hiccup
    on a 2-core box would otherwise mark a healthy client unhealthy. With thousands of sends the interval is
    tight and this is the plain p99 > limit test."""
    lat = lag if isinstance(lag, Latency) else Latency.model_validate(lag)
    if not lat.n:
        return False
    lo = lat.p99_ci[0]
    value = lo if lo is not None and not math.isnan(lo) else lat.p99
    return value is not None and value > limit_ms


def warnings_for(s: dict[str, Any], m: Columns, slos: list[SLO]) -> list[dict[str, Any]]:
    """The fixed set of warnings (bench.warn: code, message, remedy, values); each names its remedy."""
    w = []
    lag = s["latency_ms"]["send_lag"]
    lag_limit = send_lag_limit_ms(slos)
    if lag["n"] and lag["p99"] > lag_limit:
        w.append(warning("send_lag", f"send lag: the client sent p99 {lag['p99']:.1f} ms late (limit {lag_limit:g} ms); latencies still "
                         "count from the schedule", "lower the rate, cap --max-concurrency, add --workers, or run the client on a less "
                         "loaded machine (see `trilemma calibrate`)", p99_ms=lag["p99"], limit_ms=lag_limit))
    if s["n_measured"] and s["n_failed"] / s["n_measured"] > 0.01:
        kinds = ", ".join(f"{k}={v}" for k, v in s["errors"].items())
        w.append(warning("error_rate", f"error rate: {s['n_failed']}/{s['n_measured']} requests failed ({kinds})",
                         "check the server log by response id, lower the load, or raise --timeout",
                         failed=s["n_failed"], measured=s["n_measured"], errors=dict(s["errors"])))
    limited = int((~m.ok & (m.status == 429)).sum())
    if limited:  # a quota or gateway throttled the client: refused, not served slowly
        w.append(warning("rate_limited", f"rate limited: {limited} requests were refused with HTTP 429 (a rate limit or quota "
                         "of the server or a gateway in front of it), not served slowly", "raise the key's rate limit or quota, "
                         "lower --qps, or measure the engine directly rather than through the gateway", n=limited))
    undecided = [v for v in s["slos"] if v["decision"] == "undecided"]
    if undecided:
        v = undecided[0]
        iv = v["exceed"]
        limit = 100 - float(v["slo"].split("_p")[1])
        w.append(warning("slo_undecided", f"too few samples: {v['slo']} is undecided — {iv['k']} of {iv['n']} samples over "
                         f"{v['threshold_ms']:g} ms (exceedance 95% CI {100 * iv['lo']:.2f}-{100 * iv['hi']:.2f}%, limit {limit:g}%)",
                         "raise --duration or --requests", slo=v["slo"], k=iv["k"], n=iv["n"], lo=iv["lo"], hi=iv["hi"], limit_pct=limit))
    elif not slos and s["n_ok"] < stats.min_samples_for_percentile(99):
        need = stats.min_samples_for_percentile(99)
        w.append(warning("too_few_samples", f"too few samples: {s['n_ok']} requests cannot bound p99 (need >= {need})",
                         "raise --duration or --requests", n=s["n_ok"], need=need))
    tm = s["token_mismatch"]
    if tm["prompt"] or tm["output"] or tm["prompt_vs_requested"]:
        w.append(warning("token_mismatch", f"token-count mismatch: {tm['prompt_vs_requested']} prompts differ from the requested ISL, "
                         f"{tm['output']} outputs from the requested OSL", "pass --tokenizer for the served model, and check the server "
                         "honours ignore_eos (else use --no-ignore-eos and read OSL from usage)", **tm))
    if tm["client_counted"]:
        w.append(warning("client_counted_tokens", f"client-counted tokens: {tm['client_counted']} requests had no streamed usage; token "
                         "counts are client estimates", "use a server that supports stream_options.include_usage/continuous_usage_stats",
                         n=tm["client_counted"]))
    ss = s["steady_state"]
    if ss["saturated"]:
        w.append(warning("unstable", f"unstable run: {ss['reason']} — the server is past its capacity at this load",
                         "lower --qps/--concurrency (or find the knee with `trilemma sweep` and load: auto)", reason=ss["reason"]))
    elif ss["reason"]:
        w.append(warning("not_steady", f"not steady: {ss['reason']}; latencies and rates may not hold for a longer run",
                         "raise --duration and --warmup", reason=ss["reason"]))
    return w

