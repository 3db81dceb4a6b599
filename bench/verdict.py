"""Verdicts and the knee rule: what a measured point says about its SLOs (PASS / FAIL / undecided /
INVALID) and which load is the knee. The one place both the search (sweep) and the analysis of saved
results (knee, compare, report) take them from."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.config import SLO
from bench.metrics import send_lag_confidently_over, send_lag_limit_ms
from bench.summary import Exceedance, Latency, PointSummary, SloResult, SteadyState, as_summary

PASS, FAIL, INVALID, INCONCLUSIVE = "PASS", "FAIL", "INVALID", "INCONCLUSIVE"


# ------------------------------------------------------------------ verdicts
def verdict(summary: PointSummary | dict[str, Any], slos: list[SLO], rule: str = "percentile", target: float = 0.99) -> tuple[str, str]:
    """PASS / FAIL / INVALID (client unhealthy: rerun, never FAIL) / INCONCLUSIVE (undecided), with the reason.

    PASS needs every SLO decided 'pass' (its exceedance interval below 1 − percentile) and steady state
    shown; a probe that stopped on a decisive failure or saturation is FAIL whatever its drained summary
    says; a percentile the sample cannot bound is INCONCLUSIVE, never PASS."""
    s = as_summary(summary)
    n = s.n_measured
    if s.probe.stopped in ("fail", "saturated"):
        return FAIL, f"stopped early: {s.probe.why}"
    if n == 0:
        return FAIL, "no requests measured"
    if s.n_failed / n > 0.01:
        return FAIL, f"{s.n_failed}/{n} requests failed"
    lag = s.latency("send_lag")
    lag_limit = send_lag_limit_ms(slos)
    if lag is not None and send_lag_confidently_over(lag, lag_limit):
        return INVALID, f"client fell behind (send lag p99 {lag.p99:.1f} ms, 95% CI above {lag_limit:g} ms)"
    if s.saturation.saturated:
        return FAIL, f"saturated: {s.saturation.reason}"
    if rule == "fraction":
        att = s.attainment or 0.0
        lo, hi = (s.attainment_ci + [None, None])[:2]  # no interval: neither side is decided
        if lo is not None and lo >= target:
            return _steady(s.steady_state) or (PASS, f"attainment {100 * att:.1f}% (95% CI from {100 * lo:.1f}%) >= {100 * target:g}%")
        if hi is not None and hi < target:
            return FAIL, f"attainment {100 * att:.1f}% (95% CI to {100 * hi:.1f}%) < {100 * target:g}%"
        return INCONCLUSIVE, f"attainment {100 * att:.1f}%: its 95% interval contains the {100 * target:g}% target"
    if s.slos and s.slos[0].decision is None:
        return _legacy_verdict(s)
    failed = [v for v in s.slos if v.decision == "fail"]
    if failed:
        worst = max(failed, key=lambda v: (v.exceed.frac or 0.0) if v.exceed else 0.0)
        return FAIL, f"{worst.slo} {_fmt_ms(worst.value_ms)} > {worst.threshold_ms:g} ms ({_exceed(worst)})"
    open_ = [v for v in s.slos if v.decision == "undecided"]
    if open_:
        v = open_[0]
        return INCONCLUSIVE, f"{v.slo} undecided: {_exceed(v)} against a {100 - v.pct:g}% limit — more samples needed"
    if "cancelled" in (s.probe.why or ""):
        return INCONCLUSIVE, s.probe.why or ""
    return _steady(s.steady_state) or (PASS, "all SLOs met (decided)")


def _steady(ss: SteadyState | None) -> tuple[str, str] | None:
    if ss is not None and not ss.steady:
        return INCONCLUSIVE, f"not steady: {ss.reason}"
    return None


def pct_of(name: str) -> float:
    return float(name.split("_p")[1])


def _fmt_ms(v: float | None) -> str:
    return "∞ (failures)" if v is None or v == math.inf else f"{v:.1f} ms"


def _exceed(v: SloResult) -> str:
    iv = v.exceed or Exceedance()
    return f"{iv.k} of {iv.n} samples over, exceedance 95% CI {100 * iv.lo:.2f}-{100 * iv.hi:.2f}%"


def _legacy_verdict(s: PointSummary) -> tuple[str, str]:
    """Summaries written before SLO decisions existed: point estimate, then the p99's interval."""
    missed = [v for v in s.slos if not v.met]
    if missed:
        worst = max(missed, key=lambda v: (v.value_ms if v.value_ms is not None else math.inf) / v.threshold_ms)
        return FAIL, f"{worst.slo} {_fmt_ms(worst.value_ms)} > {worst.threshold_ms:g} ms"
    for v in s.slos:
        d = s.latency_ms.get(v.spec.metric) or Latency()
        hi = d.p99_ci[1] if len(d.p99_ci) > 1 else None
        if v.slo.endswith("_p99") and (hi is None or math.isnan(hi) or hi > v.threshold_ms):
            return INCONCLUSIVE, f"{v.slo} CI upper {'unbounded' if hi is None or hi != hi else f'{hi:.1f} ms'} vs {v.threshold_ms:g} ms"
    return PASS, "all SLOs met"


def binding_slo(summary: PointSummary | dict[str, Any]) -> str | None:
    """The SLO closest to (or furthest past) its threshold: exceedance fraction / allowed fraction largest."""
    v = [x for x in as_summary(summary).slos if x.value_ms is not None or x.exceed]
    if not v:
        return None
    if all(x.exceed for x in v):
        return max(v, key=lambda x: ((x.exceed.frac or 0.0) if x.exceed else 0.0) / max(1e-9, 1 - x.pct / 100)).slo
    return max(v, key=lambda x: (x.value_ms if x.value_ms is not None else math.inf) / x.threshold_ms).slo


def leans_fail(slo_result: SloResult | dict[str, Any]) -> bool:
    """An undecided SLO whose measured exceedance already exceeds what its percentile allows (k/n > 1 − p):
    the screen saw trouble. A few exceedances within the allowance (1 of 60 against a 10% limit) are what a
    passing load shows in a short window: the ladder climbs on."""
    r = slo_result if isinstance(slo_result, SloResult) else SloResult.model_validate(slo_result)
    iv = r.exceed
    if iv is None or not iv.k or not iv.n:
        return False
    return iv.k / iv.n > 1 - r.pct / 100


def knee_rule(history: Mapping[float, Sequence[tuple[str, bool]]]) -> tuple[float | None, float | None, list[float]]:
    """The knee from every verdict at every load: load -> [(verdict, full probe?)] (a screen is not a
    full probe). bracket_hi = the lowest load with any FAIL; knee = the highest load below it with a PASS
    and no undecided full probe (latency does not fall as load rises, so undecided loads do not block a
    lower passing one). Returns (knee, bracket_hi, loads between them that are not decided PASS)."""
    hi = min((x for x, vs in history.items() if any(v == FAIL for v, _ in vs)), default=None)

    def passes(vs: Sequence[tuple[str, bool]]) -> bool:
        return any(v == PASS for v, _ in vs) and not any(v != PASS and full for v, full in vs)

    passing = [x for x, vs in history.items() if (hi is None or x < hi) and passes(vs)]
    knee = max(passing) if passing else None
    between = sorted(x for x in history if (knee is None or x > knee) and (hi is None or x < hi))
    return knee, hi, between
