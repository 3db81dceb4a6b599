"""⑦ Two result sets -> deltas with confidence, and a regression verdict a CI gate can trust.

Use cases: two GPU SKUs on one workload, or two engine versions on one SKU (the CI gate). The setup must be
the same on both sides — workload, arrival process, load unit (req/s or concurrency), SLOs, model, API, output
length — else `compare` refuses (CompareError listing every difference) unless allow_mismatch. Hardware (gpu
label, GPUs per replica) and the engine/server version are what a comparison is for: listed, never refused.

A regression is any of these rules (threshold t, e.g. 5%); each check says which rule it is:
- latency:    a percentile of new/base − 1 whose 95% interval lies wholly above +t. Interval: percentile
              bootstrap resampling *requests* (an ITL percentile is recomputed over the resampled requests'
              gaps: gaps of one request are correlated), and runs first when a point has repeats, so run-to-run
              variance is included (stats.bootstrap_percentiles; memory bounded). Same spec and seed in an open
              loop (the CI gate): request i has the same schedule and prompt on both sides, so both sides take
              the same resample of requests (paired) and the schedule's noise cancels.
- errors:     failed-request rate higher, Newcombe 95% interval of p_new − p_base wholly above 0.
- knee:       lost (new side has no feasible load where base had one), or lower: the new knee's bracket upper
              end (the lowest failing load) below base knee × (1 − t). Knees in different units never compare.
- throughput: output tok/s at a common load lower, mean ± Welch t interval over R ≥ 2 runs per side wholly
              below −t. One run per side cannot decide it (a run shares one queue): "undecided, needs repeats ≥ 2".
A check whose interval cannot decide (straddles the threshold, too few samples) is "undecided", never a pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics, stats
from bench.knee import KneeRow, interrupted_points, knee_table, load_points
from bench.records import read_records
from bench.results import read_run
from bench.summary import RunDoc

LATENCY = [("ttft", 50.0), ("ttft", 99.0), ("tpot", 50.0), ("itl", 50.0), ("itl", 99.0), ("e2e", 50.0)]
INTENDED = ("gpu", "gpus", "server_kind", "server_version", "harness", "simulated")  # shown, never refused
WORSE, BETTER, UNDECIDED = "worse", "better", "undecided"


class CompareError(ValueError):
    pass


def setup_of(run_doc: RunDoc | dict, mode: str) -> dict[str, str]:
    """What must be equal for two points to be compared: everything that shapes the load, not the server."""
    doc = run_doc if isinstance(run_doc, RunDoc) else RunDoc.model_validate(run_doc)
    w, load, tgt = doc.spec.workload, doc.spec.load, doc.spec.target
    return {
        "workload": w.key() + "".join(f" {k}={v}" for k, v in (("max_model_len", w.max_model_len), ("window_s", w.window_s)) if v is not None)
                    + (f" speedup={w.speedup}" if w.speedup != 1.0 else ""),
        "output length": f"osl={w.osl} ignore_eos={tgt.ignore_eos}",
        "arrival": str(load.arrival) + (" (trace replay)" if load.replay else ""),
        "load unit": "req/s" if mode == "qps" else "concurrency",
        "max concurrency": str(load.max_concurrency),
        "SLOs": ", ".join(sorted(str(x) for x in doc.slo_specs)) or "none",
        "model": str(doc.target.model or tgt.model),
        "API": str(tgt.api),
    }


def setup_differences(b: pd.DataFrame, n: pd.DataFrame) -> list[dict]:
    def side(df):
        out: dict[str, set] = {}
        for d, mode in zip(df["run_dir"], df["mode"]):
            for k, v in setup_of(read_run(Path(d)), mode).items():
                out.setdefault(k, set()).add(v)
        return out

    sb, sn = side(b), side(n)
    return [{"field": k, "base": " | ".join(sorted(sb[k])), "new": " | ".join(sorted(sn.get(k, set())))} for k in sb if sb[k] != sn.get(k)]


def intended_differences(b: pd.DataFrame, n: pd.DataFrame) -> list[dict]:
    out = []
    for k in INTENDED:
        bv, nv = sorted(map(str, b[k].dropna().unique())), sorted(map(str, n[k].dropna().unique()))
        if bv != nv:
            out.append({"field": k, "base": ", ".join(bv) or "—", "new": ", ".join(nv) or "—"})
    return out


# ------------------------------------------------------------------ samples
_PER_REQUEST = {"ttft": metrics.ttft_ms, "tpot": metrics.tpot_ms, "e2e": metrics.e2e_ms}


class _Records:
    """Per-request values of a set of runs (one load point and its repeats), read once."""

    def __init__(self, run_dirs: list[str]):
        self.runs = []
        for d in run_dirs:
            recs = [r for r in read_records(Path(d)) if not r.warmup and r.error_kind != "cancelled"]
            self.runs.append(recs)
        self.n = sum(len(r) for r in self.runs)
        self.failed = sum(1 for rs in self.runs for r in rs if not r.ok)

    def sample(self, metric: str) -> stats.Sample:
        """Values with their request (cluster) and run. Every measured request keeps its cluster slot, failed or
        not, so request i means the same scheduled request on two paired sides."""
        vals, cluster, run = [], [], []
        cid = 0
        for ri, recs in enumerate(self.runs):
            for r in sorted(recs, key=lambda r: r.index):
                if r.ok:
                    v = metrics.itl_ms(r) if metric == "itl" else [x for x in (_PER_REQUEST[metric](r),) if not math.isnan(x)]
                    vals.append(np.asarray(v, dtype=np.float64))
                    cluster.append(np.full(len(v), cid, dtype=np.int64))
                run.append(ri)
                cid += 1
        def cat(xs: list, dt) -> np.ndarray:
            return np.concatenate(xs) if xs else np.empty(0, dt)

        return stats.Sample(cat(vals, np.float64), cat(cluster, np.int64), run)

    def schedule(self) -> list[list[tuple]]:
        """Per run: (scheduled offset in ms, ISL, OSL) of each measured request, in index order."""
        out = []
        for recs in self.runs:
            rs = sorted(recs, key=lambda r: r.index)
            t0 = rs[0].intended_ns if rs else 0
            out.append([(round((r.intended_ns - t0) / 1e6), r.isl, r.osl) for r in rs])
        return out


def paired(rb: _Records, rn: _Records, mode: str) -> bool:
    """Same spec and seed in an open loop: every request was scheduled at the same offset with the same prompt
    and output lengths on both sides (to the millisecond), so requests pair one to one. A closed loop's send
    times depend on the server, so its requests never pair."""
    return mode == "qps" and rb.schedule() == rn.schedule()


def _min_requests(p: float) -> int:
    """Requests per side before a percentile is judged: ≥ 30, and enough for the sample maximum to bound the
    percentile at 95% (METHODS.md §2: p99 → 299); below that a bootstrap interval for a tail is optimistic."""
    return max(30, stats.min_samples_for_percentile(p) if p > 50 else 0)


def latency_verdict(lo: float, hi: float, thr: float) -> tuple[str, str]:
    """Higher latency is worse. worse: the interval lies above +thr; better: below −thr; within: the interval
    stays under +thr (no regression beyond it); else undecided."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return UNDECIDED, "no interval"
    if lo > thr:
        return WORSE, f"95% interval [{100 * lo:+.1f}%, {100 * hi:+.1f}%] above +{100 * thr:g}%"
    if hi < -thr:
        return BETTER, f"95% interval below −{100 * thr:g}%"
    if hi <= thr:
        return "within", f"95% interval stays under +{100 * thr:g}%"
    return UNDECIDED, f"95% interval [{100 * lo:+.1f}%, {100 * hi:+.1f}%] straddles +{100 * thr:g}%"


def _latency_rows(cell, mode, load, rb: _Records, rn: _Records, pcts, slo_metrics, thr, n_boot) -> list[dict]:
    rows = []
    pair = paired(rb, rn, mode)
    for metric, p in pcts:
        sb, sn = rb.sample(metric), rn.sample(metric)
        row = {"cell": cell, "mode": mode, "load": load, "metric": f"{metric}_p{p:g}", "rule": "latency",
               "slo_relevant": (metric, p) in slo_metrics or (metric == "itl" and ("tpot", p) in slo_metrics),
               "n_base": sb.n_measured, "n_new": sn.n_measured, "runs_base": sb.n_runs, "runs_new": sn.n_runs,
               "base": float(np.percentile(sb.values, p)) if sb.values.size else math.nan,
               "new": float(np.percentile(sn.values, p)) if sn.values.size else math.nan, "delta": math.nan,
               "ci_lo": math.nan, "ci_hi": math.nan}
        need = _min_requests(p)
        if min(sb.n_measured, sn.n_measured) < need:
            row.update(delta=row["new"] / row["base"] - 1 if row["base"] else math.nan, verdict=UNDECIDED,
                       why=f"too few requests ({sb.n_measured} base, {sn.n_measured} new; p{p:g} needs ≥ {need} per side)")
        else:
            point, (lo, hi) = stats.bootstrap_ratio_ci(sb, sn, p, n_boot=n_boot, paired=pair)
            v, why = latency_verdict(lo, hi, thr)
            row.update(delta=point, ci_lo=lo, ci_hi=hi, verdict=v, why=why + (" (paired requests)" if pair else ""))
        rows.append(row)
    return rows


def _error_row(cell, mode, load, rb: _Records, rn: _Records) -> dict:
    d, lo, hi = stats.newcombe_diff_ci(rb.failed, rb.n, rn.failed, rn.n)
    row = {"cell": cell, "mode": mode, "load": load, "metric": "error rate", "rule": "errors", "slo_relevant": True,
           "n_base": rb.n, "n_new": rn.n, "base": rb.failed / rb.n if rb.n else math.nan, "new": rn.failed / rn.n if rn.n else math.nan,
           "delta": d, "ci_lo": lo, "ci_hi": hi, "failed_base": rb.failed, "failed_new": rn.failed}
    if not math.isfinite(lo):
        row.update(verdict=UNDECIDED, why="no requests on one side")
    elif lo > 0:
        row.update(verdict=WORSE, why=f"{rn.failed}/{rn.n} failed vs {rb.failed}/{rb.n}; 95% interval of the increase "
                                      f"[{100 * lo:+.2f}, {100 * hi:+.2f}] points excludes 0")
    elif hi < 0:
        row.update(verdict=BETTER, why=f"{rn.failed}/{rn.n} failed vs {rb.failed}/{rb.n}")
    elif rn.failed / rn.n <= rb.failed / rb.n:
        row.update(verdict="within", why=f"{rn.failed}/{rn.n} failed vs {rb.failed}/{rb.n}: not higher")
    else:
        row.update(verdict=UNDECIDED, why=f"{rn.failed}/{rn.n} failed vs {rb.failed}/{rb.n}: higher, but the 95% interval "
                                          f"[{100 * lo:+.2f}, {100 * hi:+.2f}] points includes 0")
    return row


def _throughput_row(cell, mode, load, tb: list[float], tn: list[float], thr: float) -> dict:
    mb, mn = float(np.mean(tb)), float(np.mean(tn))
    row = {"cell": cell, "mode": mode, "load": load, "metric": "output tok/s", "rule": "throughput", "slo_relevant": False,
           "n_base": len(tb), "n_new": len(tn), "runs_base": len(tb), "runs_new": len(tn), "base": mb, "new": mn,
           "delta": mn / mb - 1 if mb else math.nan, "ci_lo": math.nan, "ci_hi": math.nan}
    if min(len(tb), len(tn)) < 2:
        row.update(verdict=UNDECIDED, why=f"needs repeats ≥ 2 per side (have {len(tb)} base, {len(tn)} new)")
        return row
    d, lo, hi = stats.mean_ratio_ci(tb, tn)
    row.update(delta=d, ci_lo=lo, ci_hi=hi)
    if hi < -thr:  # lower throughput is worse
        row.update(verdict=WORSE, why=f"mean of {len(tn)} vs {len(tb)} runs; 95% interval [{100 * lo:+.1f}%, {100 * hi:+.1f}%] below −{100 * thr:g}%")
    elif lo > thr:
        row.update(verdict=BETTER, why=f"95% interval above +{100 * thr:g}%")
    elif lo >= -thr:
        row.update(verdict="within", why=f"95% interval stays above −{100 * thr:g}%")
    else:
        row.update(verdict=UNDECIDED, why=f"95% interval [{100 * lo:+.1f}%, {100 * hi:+.1f}%] straddles −{100 * thr:g}%")
    return row


def _knee_row(cell: str, mode: str, rb: pd.Series | None, rn: pd.Series | None, thr: float) -> dict:
    unit = "req/s" if mode == "qps" else "concurrency"
    k = {"cell": cell, "mode": mode, "unit": unit, "rule": "knee", "metric": f"knee ({unit})", "base": None, "new": None,
         "delta": math.nan, "bracket_hi_base": None, "bracket_hi_new": None, "base_row": None, "new_row": None}
    if rb is None or rn is None:
        k.update(verdict=UNDECIDED, why=f"measured in {unit} on one side only: knees in different units are not compared")
        return k

    def hi(r: pd.Series) -> float | None:
        return KneeRow.of(r.to_dict()).bracket_hi

    k.update(base=rb["knee"] if rb["feasible"] else None, new=rn["knee"] if rn["feasible"] else None,
             bracket_hi_base=hi(rb), bracket_hi_new=hi(rn), base_row=rb.to_dict(), new_row=rn.to_dict())
    if rb["feasible"] and not rn["feasible"]:
        nh = hi(rn)  # the new side's lowest load with a decided FAIL
        if nh is not None and nh <= float(rb["knee"]):
            k.update(verdict=WORSE, why=f"knee lost: base sustains {rb['knee']:g} {unit}; new meets the SLOs at no tested load ({rn['note']})")
        else:  # nothing failed where the base passes: the new side's loads are undecided, not lost
            k.update(verdict=UNDECIDED, why=f"base sustains {rb['knee']:g} {unit}; new decided no load PASS but failed none at or below it "
                                            f"({rn['note']}): measure again with more requests per probe")
    elif not rb["feasible"] and not rn["feasible"]:
        k.update(verdict=UNDECIDED, why="no feasible knee on either side")
    elif not rb["feasible"]:
        k.update(verdict=BETTER, why=f"base had no feasible load; new sustains {rn['knee']:g} {unit}")
    else:
        b, n = float(rb["knee"]), float(rn["knee"])
        k["delta"] = n / b - 1
        nh, bh = hi(rn), hi(rb)
        if nh is not None and nh < b * (1 - thr):
            k.update(verdict=WORSE, why=f"new bracket [{n:g}, {nh:g}] lies below base knee {b:g} × (1 − {100 * thr:g}%)")
        elif bh is not None and n > bh * (1 + thr):
            k.update(verdict=BETTER, why=f"new knee {n:g} above base bracket [{b:g}, {bh:g}]")
        elif bh is None and nh is not None:  # the base's knee is only a lower bound: nothing says where it ends
            k.update(verdict=UNDECIDED, why=f"base knee ≥ {b:g} (every tested load passed; its end is unknown) against new [{n:g}, {nh:g}]: "
                                            f"sweep the base past {b:g} to decide")
        elif nh is None and n >= b * (1 - thr):
            k.update(verdict="within", why=f"new knee {n:g} with every tested load passing (base {b:g}"
                                           f"{'' if bh is not None else ', also every tested load passing'}): no loss in the tested range")
        elif nh is not None and bh is not None and n >= b * (1 - thr) and nh >= bh * (1 - thr):
            k.update(verdict="within", why=f"brackets [{b:g}, {bh:g}] and [{n:g}, {nh:g}] overlap within {100 * thr:g}%")
        else:
            k.update(verdict=UNDECIDED, why=f"brackets [{b:g}, {bh if bh is not None else '>'}] and [{n:g}, {nh if nh is not None else '>'}] "
                                            f"cannot resolve a {100 * thr:g}% change: sweep a finer grid")
    return k


def compare(base_paths: list, new_paths: list, threshold: float = 0.05, n_boot: int = 1000, *, allow_mismatch: bool = False,
            gpus_per_replica: float | None = None) -> dict:
    """Compare two result sets; see the module docstring for the rules. Raises CompareError when they cannot
    be compared (no common cell, different setups without allow_mismatch)."""
    b, n = load_points(base_paths, gpus_per_replica), load_points(new_paths, gpus_per_replica)
    common = [c for c in dict.fromkeys(b["cell"]) if c in set(n["cell"])]
    if not common:
        raise CompareError(f"no workload cell in common (base: {', '.join(b['cell'].unique())}; new: {', '.join(n['cell'].unique())}); "
                           "compare results of the same sweep spec")
    mismatch = setup_differences(b[b["cell"].isin(common)], n[n["cell"].isin(common)])
    if mismatch and not allow_mismatch:
        diffs = "; ".join(f"{d['field']}: {d['base']} vs {d['new']}" for d in mismatch)
        raise CompareError(f"different setups, refusing to compare — {diffs} (compare like with like, or pass --allow-mismatch)")
    slo_metrics = {(s.metric, float(s.pct)) for lst in list(b["_slos"]) + list(n["_slos"]) for s in lst}
    pcts = LATENCY + sorted(slo_metrics - set(LATENCY))
    rows = []
    for c in common:
        gb, gn = b[(b.cell == c) & (b.role != "baseline")], n[(n.cell == c) & (n.role != "baseline")]
        for (mode, load), pb in gb.groupby(["mode", "load"]):
            pn = gn[(gn["mode"] == mode) & np.isclose(gn["load"].astype(float), float(load), rtol=1e-3)]
            if pn.empty:
                continue
            rb, rn = _Records(list(pb["run_dir"])), _Records(list(pn["run_dir"]))
            rows += _latency_rows(c, mode, load, rb, rn, pcts, slo_metrics, threshold, n_boot)
            rows.append(_error_row(c, mode, load, rb, rn))
            rows.append(_throughput_row(c, mode, load, list(pb["output_tps"]), list(pn["output_tps"]), threshold))
    kb, kn = knee_table(b), knee_table(n)
    knees = []
    for c in common:
        modes = list(dict.fromkeys(list(kb.loc[kb.cell == c, "mode"]) + list(kn.loc[kn.cell == c, "mode"])))
        for mode in modes:
            xb, xn = kb[(kb.cell == c) & (kb["mode"] == mode)], kn[(kn.cell == c) & (kn["mode"] == mode)]
            knees.append(_knee_row(c, mode, xb.iloc[0] if len(xb) else None, xn.iloc[0] if len(xn) else None, threshold))
    checks = rows + knees
    return {"env": intended_differences(b, n), "mismatch": mismatch, "rows": pd.DataFrame(rows), "knees": knees, "threshold": threshold,
            "regressions": [r for r in checks if r["verdict"] == WORSE],
            "undecided": [r for r in checks if r["verdict"] == UNDECIDED],
            "base": [str(p) for p in base_paths], "new": [str(p) for p in new_paths],
            "interrupted": [f"{side}: {x}" for side, df in (("base", b), ("new", n)) for x in interrupted_points(df)],
            # one run a side: latency intervals hold request-to-request variation, not the server's run-to-run drift
            "single_run": any(r["runs_base"] == 1 or r["runs_new"] == 1 for r in rows if r["rule"] == "latency")}


def check_label(r: dict) -> str:
    """'cell c, 10 req/s, ttft_p50 (latency rule)' — names where a check is and which rule it is."""
    where = f"{r['cell']}" + (f", {r['load']:g} {'req/s' if r['mode'] == 'qps' else 'concurrent'}" if "load" in r else "")
    return f"{where}: {r['metric']} ({r['rule']} rule)"
