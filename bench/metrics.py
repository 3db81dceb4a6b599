"""⑤ Records -> point summary. One pure function per metric; formulas (vLLM/MLPerf names) here.

All per-request latencies are in milliseconds and measured from the *intended* send time (the
schedule), so a client that falls behind cannot hide queueing (coordinated omission). The from-send
variants are kept for comparison with tools that measure from the actual send.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from bench import stats
from bench.config import SLO
from bench.records import RequestRecord

NS_MS = 1e-6


def ttft_ms(r: RequestRecord) -> float:
    """TTFT = arrival of the first token-bearing chunk − intended send."""
    return (r.chunk_ns[0] - r.intended_ns) * NS_MS if r.chunk_ns else math.nan


def ttft_from_send_ms(r: RequestRecord) -> float:
    """TTFT from the actual send = first token chunk − actual send (what vllm bench serve reports)."""
    return (r.chunk_ns[0] - r.sent_ns) * NS_MS if r.chunk_ns else math.nan


def e2e_ms(r: RequestRecord) -> float:
    """E2E = last byte − intended send."""
    return (r.end_ns - r.intended_ns) * NS_MS


def tpot_ms(r: RequestRecord) -> float:
    """TPOT = (E2E − TTFT) / (output_tokens − 1), per request; nan for fewer than 2 output tokens."""
    if r.output_tokens < 2 or not r.chunk_ns:
        return math.nan
    return (e2e_ms(r) - ttft_ms(r)) / (r.output_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    """ITL = gaps between token arrivals. A chunk carrying k tokens, arriving g ms after the previous
    chunk, contributes k gaps of g/k. Extra tokens of the first chunk contribute none (no earlier chunk)."""
    out: list[float] = []
    for i in range(1, len(r.chunk_ns)):
        k = max(1, r.chunk_tokens[i])
        g = (r.chunk_ns[i] - r.chunk_ns[i - 1]) * NS_MS / k
        out.extend([g] * k)
    return out


def chunk_gaps_ms(r: RequestRecord) -> list[float]:
    """Raw gaps between consecutive token-bearing chunks (no per-token split)."""
    return [(b - a) * NS_MS for a, b in zip(r.chunk_ns, r.chunk_ns[1:])]


def send_lag_ms(r: RequestRecord) -> float:
    """Send lag = actual send − intended send (how late the client was)."""
    return (r.sent_ns - r.intended_ns) * NS_MS


def interactivity(tpot: float) -> float:
    """Interactivity = 1000 / TPOT_ms (tokens/s seen by one user)."""
    return 1000.0 / tpot if tpot and tpot > 0 else math.nan


def measurement_window_ns(recs: list[RequestRecord]) -> tuple[int, int, str]:
    """The steady-state window: [first, last] intended send of measured (non-warmup) requests, when that
    spans >= 1 s ("send"); else [first intended send, last end] ("full", includes the drain).

    Throughput counts what *happens* inside the window — tokens by chunk arrival time, requests by
    completion time, from any request — so neither ramp-up nor the drain after the last send dilutes it
    (a closed loop's drain, with the batch emptying, would read ~15-20% low)."""
    m = [r for r in recs if not r.warmup]
    if not m:
        return 0, 0, "none"
    t0, t1 = min(r.intended_ns for r in m), max(r.intended_ns for r in m)
    if t1 - t0 >= 1_000_000_000:
        return t0, t1, "send"
    return t0, max(max(r.end_ns, r.sent_ns) for r in m), "full"


def window_throughput(recs: list[RequestRecord], t0: int, t1: int) -> dict:
    """Requests completed, output tokens arrived, and prompt tokens of requests whose first token
    arrived, inside [t0, t1) — successful requests only. Rates are these counts / (t1 − t0)."""
    ok = [r for r in recs if r.ok]
    done = sum(1 for r in ok if t0 <= r.end_ns < t1)
    out_tok = sum(k for r in ok for t, k in zip(r.chunk_ns, r.chunk_tokens) if t0 <= t < t1)
    in_tok = sum((r.prompt_tokens if r.prompt_tokens >= 0 else r.isl) for r in ok if r.chunk_ns and t0 <= r.chunk_ns[0] < t1)
    return {"requests": done, "output_tokens": out_tok, "input_tokens": in_tok}


def request_meets(r: RequestRecord, slos: list[SLO]) -> bool:
    """Per-request SLO test (for goodput and attainment): TTFT, TPOT and E2E compare directly; ITL uses
    the request's own ITL at the SLO's percentile. A failed request meets nothing."""
    if not r.ok:
        return False
    for s in slos:
        if s.metric == "ttft":
            v = ttft_ms(r)
        elif s.metric == "tpot":
            v = tpot_ms(r)
            if math.isnan(v):
                continue
        elif s.metric == "e2e":
            v = e2e_ms(r)
        else:
            g = itl_ms(r)
            if not g:
                continue
            v = stats.percentile(g, s.pct)
        if not v <= s.threshold_ms:
            return False
    return True


def latency_stats(values, pcts=(50, 90, 95, 99)) -> dict:
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    d = {"n": int(a.size), "mean": float(a.mean()) if a.size else math.nan}
    for p in pcts:
        d[f"p{p:g}"] = stats.percentile(a, p)
    lo, hi = stats.quantile_ci(a, 99)
    d["p99_ci"] = [lo, hi]
    d["max"] = float(a.max()) if a.size else math.nan
    return d


def metric_values(recs: list[RequestRecord], metric: str) -> list[float]:
    ok = [r for r in recs if r.ok]
    if metric == "itl":
        return [g for r in ok for g in itl_ms(r)]
    fn = {"ttft": ttft_ms, "tpot": tpot_ms, "e2e": e2e_ms, "ttft_from_send": ttft_from_send_ms}[metric]
    return [v for v in map(fn, ok) if not math.isnan(v)]


def summarize(recs: list[RequestRecord], slos: list[SLO] | None = None, *, offered_qps: float | None = None,
              mode: str = "qps", expect_exact_osl: bool = True) -> dict:
    """Point summary over measured (non-warmup) requests. Throughputs use the measurement window."""
    slos = slos or []
    m = [r for r in recs if not r.warmup and r.error_kind != "cancelled"]
    ok = [r for r in m if r.ok]
    t0, t1, kind = measurement_window_ns(recs)
    window_s = (t1 - t0) / 1e9 if t1 > t0 else math.nan
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.prompt_tokens if r.prompt_tokens >= 0 else r.isl for r in ok)
    w = window_throughput(recs, t0, t1) if kind == "send" else {"requests": len(ok), "output_tokens": out_tok, "input_tokens": in_tok}
    full_s = (max(r.end_ns for r in m) - t0) / 1e9 if m else math.nan
    s: dict = {
        "n_total": len(recs),
        "n_warmup": len(recs) - len(m),
        "n_measured": len(m),
        "n_ok": len(ok),
        "n_failed": len(m) - len(ok),
        "errors": dict(Counter(r.error_kind or "empty" for r in m if not r.ok)),
        "window_s": window_s,
        "window_kind": kind,
        "offered_qps": offered_qps,
        "mode": mode,
        "request_throughput": w["requests"] / window_s if window_s > 0 else math.nan,
        "output_tps": w["output_tokens"] / window_s if window_s > 0 else math.nan,
        "input_tps": w["input_tokens"] / window_s if window_s > 0 else math.nan,
        "total_tps": (w["input_tokens"] + w["output_tokens"]) / window_s if window_s > 0 else math.nan,
        # vLLM bench serve's definition (all measured requests / first send → last end), for comparison
        "output_tps_incl_drain": out_tok / full_s if full_s > 0 else math.nan,
        "duration_incl_drain_s": full_s,
        "output_tokens": out_tok,
        "input_tokens": in_tok,
    }
    sends = sorted(r.intended_ns for r in m)
    s["achieved_send_qps"] = (len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9) if len(sends) > 1 and sends[-1] > sends[0] else math.nan
    lat = {k: latency_stats(metric_values(m, k)) for k in ("ttft", "ttft_from_send", "tpot", "itl", "e2e")}
    lat["send_lag"] = latency_stats([send_lag_ms(r) for r in m if r.sent_ns])
    s["latency_ms"] = lat
    s["interactivity_p50"] = interactivity(lat["tpot"]["p50"])
    # Little's law: mean in-flight = total time in system / window
    s["mean_in_flight"] = sum(e2e_ms(r) for r in ok) / 1e3 / full_s if full_s > 0 else math.nan
    good = [r for r in m if request_meets(r, slos)] if slos else ok
    s["goodput_rps"] = len(good) / full_s if full_s > 0 else math.nan
    s["attainment"] = len(good) / len(m) if m else math.nan
    s["attainment_ci"] = list(stats.clopper_pearson(len(good), len(m)))
    s["slos"] = [slo_verdict(m, slo) for slo in slos]
    s["slo_met"] = all(v["met"] for v in s["slos"]) if slos else None
    turns = sorted({r.turn for r in m if r.turn >= 0})
    if turns:  # multi-turn datasets: latency per turn
        s["per_turn"] = {str(t): {"n": sum(1 for r in m if r.turn == t),
                                  "ttft": latency_stats(metric_values([r for r in m if r.turn == t], "ttft")),
                                  "prompt_tokens_mean": float(np.mean([r.prompt_tokens for r in m if r.turn == t and r.prompt_tokens >= 0] or [math.nan]))}
                         for t in turns}
    s["token_mismatch"] = token_mismatches(m, expect_exact_osl)
    s["saturation"] = saturation(m, mode)
    s["warnings"] = warnings_for(s, m, slos)
    return s


def slo_verdict(m: list[RequestRecord], slo: SLO) -> dict:
    """Aggregate check: the SLO metric's percentile over measured requests ≤ threshold. Failed requests
    count as infinitely slow (they can only hurt the percentile)."""
    vals = metric_values(m, slo.metric)
    n_fail = sum(1 for r in m if not r.ok)
    if slo.metric != "itl":
        vals = vals + [math.inf] * n_fail
    v = stats.percentile([min(x, 1e30) for x in vals], slo.pct) if vals else math.nan
    # a percentile interpolated towards a failure (clamped to 1e30) is infinite, not e.g. 1e28 ms
    v = math.inf if v > max((x for x in vals if math.isfinite(x)), default=0.0) else v
    within = sum(1 for x in vals if x <= slo.threshold_ms)
    return {
        "slo": slo.name,
        "threshold_ms": slo.threshold_ms,
        "value_ms": v,
        "met": bool(v <= slo.threshold_ms),
        "fraction_within": within / len(vals) if vals else math.nan,
        "n": len(vals),
    }


def token_mismatches(m: list[RequestRecord], expect_exact_osl: bool) -> dict:
    ok = [r for r in m if r.ok]
    return {
        "prompt": sum(1 for r in ok if r.prompt_tokens >= 0 and r.prompt_tokens_local >= 0 and r.prompt_tokens != r.prompt_tokens_local),
        "prompt_vs_requested": sum(1 for r in ok if r.prompt_tokens >= 0 and r.isl > 0 and r.prompt_tokens != r.isl),
        "output": sum(1 for r in ok if expect_exact_osl and r.output_tokens != r.osl),
        "client_counted": sum(1 for r in ok if not r.tokens_from_usage),
    }


def send_lag_limit_ms(slos: list[SLO]) -> float:
    """Client-health limit on the send lag's p99: max(5 ms, 1% of the tightest TTFT SLO) (METHODS §3)."""
    ttft_slo = min((x.threshold_ms for x in slos if x.metric == "ttft"), default=math.inf)
    return max(5.0, 0.01 * ttft_slo) if math.isfinite(ttft_slo) else 5.0


def send_lag_confidently_over(lag: dict, limit_ms: float) -> bool:
    """True when the send lag's p99 is above `limit_ms` beyond sampling noise: the lower end of its 95%
    order-statistic interval is above the limit.

    A short probe has ~100 sends, where the p99 is close to the single largest lag; one 6 ms scheduler hiccup
    on a 2-core box would otherwise mark a healthy client unhealthy. With thousands of sends the interval is
    tight and this is the plain p99 > limit test."""
    if not lag or not lag.get("n"):
        return False
    lo = (lag.get("p99_ci") or [None, None])[0]
    value = lo if lo is not None and not (isinstance(lo, float) and math.isnan(lo)) else lag["p99"]
    return value > limit_ms


def warnings_for(s: dict, m: list[RequestRecord], slos: list[SLO]) -> list[str]:
    """The fixed set of warnings; each names its remedy."""
    w = []
    lag = s["latency_ms"]["send_lag"]
    lag_limit = send_lag_limit_ms(slos)
    if lag["n"] and lag["p99"] > lag_limit:
        w.append(f"send lag: the client sent p99 {lag['p99']:.1f} ms late (limit {lag_limit:g} ms); latencies still count from the schedule, "
                 "but lower the rate, cap --max-concurrency, or run the client on a less loaded machine (see `trilemma calibrate`)")
    if s["n_measured"] and s["n_failed"] / s["n_measured"] > 0.01:
        kinds = ", ".join(f"{k}={v}" for k, v in s["errors"].items())
        w.append(f"error rate: {s['n_failed']}/{s['n_measured']} requests failed ({kinds}); check the server log by response id, "
                 "lower the load, or raise --timeout")
    pcts = sorted({x.pct for x in slos} | {99.0})
    for p in pcts:
        need = stats.min_samples_for_percentile(p)
        if s["n_ok"] < need:
            w.append(f"too few samples: {s['n_ok']} requests cannot bound p{p:g} (need >= {need} for a 95% upper bound); "
                     "raise --duration or --requests")
            break
    tm = s["token_mismatch"]
    if tm["prompt"] or tm["output"] or tm["prompt_vs_requested"]:
        w.append(f"token-count mismatch: {tm['prompt_vs_requested']} prompts differ from the requested ISL, {tm['output']} outputs from the requested OSL; "
                 "pass --tokenizer for the served model, and check the server honours ignore_eos (else use --no-ignore-eos and read OSL from usage)")
    if tm["client_counted"]:
        w.append(f"client-counted tokens: {tm['client_counted']} requests had no streamed usage; token counts are client estimates — "
                 "use a server that supports stream_options.include_usage/continuous_usage_stats")
    sat = s.get("saturation") or {}
    if sat.get("saturated"):
        w.append(f"unstable run: {sat['reason']} — the server is past its capacity at this load; "
                 "lower --qps/--concurrency (or find the knee with `trilemma sweep` and load: auto)")
    return w


def saturation(m: list[RequestRecord], mode: str) -> dict:
    """Saturation signals over the measured window (METHODS.md §3): a waiting queue that grows shows as
    TTFT rising with send time (least-squares slope, p < 0.01, and a rise over the window larger than
    max(50% of median TTFT, 20 ms)); or fewer than 95% of requests completing."""
    ok = sorted((r for r in m if r.ok and r.chunk_ns), key=lambda r: r.intended_ns)
    out = {"saturated": False, "reason": "", "ttft_slope_ms_per_s": None, "completed_fraction": None}
    if m:
        out["completed_fraction"] = len(ok) / len(m)
        if len(m) >= 20 and out["completed_fraction"] < 0.95:
            out.update(saturated=True, reason=f"only {100 * out['completed_fraction']:.0f}% of requests completed")
    if len(ok) >= 20 and mode == "qps":
        t = [(r.intended_ns - ok[0].intended_ns) / 1e9 for r in ok]
        y = [ttft_ms(r) for r in ok]
        slope, pval = stats.trend_slope(t, y)
        rise = slope * (t[-1] - t[0])
        out["ttft_slope_ms_per_s"] = slope
        if pval < 0.01 and rise > max(0.5 * stats.percentile(y, 50), 20.0):
            out.update(saturated=True, reason=f"TTFT rose {rise:.0f} ms over the window (queue growing)")
    return out
