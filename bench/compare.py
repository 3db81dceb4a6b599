"""⑦ Two result sets -> deltas with confidence and a verdict.

Use cases: two GPU SKUs on one workload, or two engine versions on one SKU (a CI gate). Cells are
matched by name and must have the same workload (else we refuse). Environment differences are listed,
never merged silently.

Per cell and common offered load, latency metrics are compared by a percentile bootstrap of
stat(new)/stat(base) − 1 over the per-request values (requests of repeats pooled): verdict *worse* when
the change is significant (its 95% interval excludes 0) and larger than +threshold, *better*
symmetrically, else *no significant change*. (Bootstrap intervals for p99 at small n are optimistic — METHODS.md §2 — so p99 verdicts need
≥ ~1000 requests per point to be trusted.) The knee is compared through its search bracket: a
regression needs the new bracket to lie wholly below the base knee by more than the threshold.

Compare results of the same spec and seed (a CI gate does): arrivals and prompts are then identical and
the difference is the server's. Requests within one run share a queue and are correlated, so the
per-request bootstrap understates run-to-run variance: with different seeds, expect p50 TTFT to move
several percent between identical servers — use repeats, or a larger threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics, stats
from bench.knee import knee_table, load_points
from bench.records import read_records

LATENCY = [("ttft", 50), ("ttft", 99), ("tpot", 50), ("itl", 50), ("itl", 99), ("e2e", 50)]
ENV_KEYS = ("gpu", "server_kind", "server_version", "model", "api", "harness", "simulated")


class CompareError(ValueError):
    pass


def _values(run_dirs: list[str], metric: str) -> np.ndarray:
    vals: list[float] = []
    for d in run_dirs:
        recs = [r for r in read_records(Path(d)) if not r.warmup and r.error_kind != "cancelled"]
        vals += metrics.metric_values(recs, metric)
    return np.asarray(vals, dtype=np.float64)


def _verdict(delta: float, lo: float, hi: float, thr: float) -> str:
    """Latency (higher is worse): *worse* when the change is significant (the 95% CI excludes 0) and
    its point estimate exceeds +threshold; *better* symmetrically; else no significant change."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    if lo > 0 and delta > thr:
        return "worse"
    if hi < 0 and delta < -thr:
        return "better"
    return "no significant change"


def compare(base_paths: list, new_paths: list, threshold: float = 0.05, n_boot: int = 1000) -> dict:
    b, n = load_points(base_paths), load_points(new_paths)
    env = []
    for k in ENV_KEYS:
        bv, nv = sorted(map(str, b[k].dropna().unique())), sorted(map(str, n[k].dropna().unique()))
        if bv != nv:
            env.append({"field": k, "base": ", ".join(bv), "new": ", ".join(nv)})
    common = [c for c in dict.fromkeys(b["cell"]) if c in set(n["cell"])]
    if not common:
        raise CompareError(f"no workload cell in common (base: {', '.join(b['cell'].unique())}; new: {', '.join(n['cell'].unique())}); "
                           "compare results of the same sweep spec")
    for c in common:
        wb, wn = set(b.loc[b.cell == c, "workload"]), set(n.loc[n.cell == c, "workload"])
        if wb != wn:
            raise CompareError(f"cell '{c}' has different workloads (base: {'; '.join(wb)} vs new: {'; '.join(wn)}); refusing to compare")
    slo_metrics = {(s.metric, s.pct) for lst in list(b["_slos"]) + list(n["_slos"]) for s in lst}
    rows = []
    for c in common:
        gb, gn = b[(b.cell == c) & (b.role != "baseline")], n[(n.cell == c) & (n.role != "baseline")]
        for load in sorted(set(gb["load"])):
            match = gn[np.isclose(gn["load"], load, rtol=1e-3)]
            if match.empty:
                continue
            bd, nd = list(gb.loc[gb["load"] == load, "run_dir"]), list(match["run_dir"])
            for metric, pct in LATENCY:
                vb, vn = _values(bd, metric), _values(nd, metric)
                if vb.size < 10 or vn.size < 10:
                    continue
                stat = (lambda a, p=pct: np.percentile(a, p))
                point, (lo, hi) = stats.bootstrap_ratio_ci(vb, vn, stat, n_boot=n_boot)
                rows.append({"cell": c, "load": load, "metric": f"{metric}_p{pct}", "base": float(stat(vb)), "new": float(stat(vn)),
                             "delta": point, "ci_lo": lo, "ci_hi": hi, "verdict": _verdict(point, lo, hi, threshold),
                             "slo_relevant": (metric, float(pct)) in slo_metrics or (metric == "itl" and ("tpot", float(pct)) in slo_metrics)})
            tb, tn = gb.loc[gb["load"] == load, "output_tps"].mean(), match["output_tps"].mean()
            rows.append({"cell": c, "load": load, "metric": "output_tps", "base": tb, "new": tn, "delta": tn / tb - 1 if tb else math.nan,
                         "ci_lo": math.nan, "ci_hi": math.nan, "verdict": "n/a (one run per side)", "slo_relevant": False})
    kb, kn = knee_table(b), knee_table(n)
    knees = []
    for c in common:
        rb, rn = kb[kb.cell == c], kn[kn.cell == c]
        if rb.empty or rn.empty:
            continue
        rb, rn = rb.iloc[0], rn.iloc[0]
        if not (rb["feasible"] and rn["feasible"]):
            knees.append({"cell": c, "base": rb.get("knee"), "new": rn.get("knee"), "delta": math.nan,
                          "verdict": "n/a (no knee on one side)"})
            continue
        d = rn["knee"] / rb["knee"] - 1
        nb_hi = rn["bracket_hi"] if pd.notna(rn["bracket_hi"]) else math.inf
        bb_hi = rb["bracket_hi"] if pd.notna(rb["bracket_hi"]) else math.inf
        if nb_hi <= rb["knee"] and d < -threshold:
            v = "worse"
        elif rn["knee"] >= bb_hi and d > threshold:
            v = "better"
        else:
            v = "no significant change"
        knees.append({"cell": c, "base": rb["knee"], "new": rn["knee"], "delta": d, "verdict": v, "base_row": rb.to_dict(),
                      "new_row": rn.to_dict()})
    table = pd.DataFrame(rows)
    regressions = [r for r in rows if r["verdict"] == "worse" and r["slo_relevant"]] + [k for k in knees if k["verdict"] == "worse"]
    return {"env": env, "rows": table, "knees": knees, "regressions": regressions, "threshold": threshold,
            "base": [str(p) for p in base_paths], "new": [str(p) for p in new_paths]}
