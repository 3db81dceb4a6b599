"""⑧ Everything a report shows, assembled from result files only (no server, no re-run)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from bench.cost import GPUS_UNKNOWN, CostModel, cost_at_knee, find_sku, gpus_known, load_catalog
from bench.knee import knee_table, load_points
from bench.results import find_run_dirs, read_run_doc

METHODS = [
    ("TTFT", "first token-bearing chunk − scheduled (intended) send; the schedule is computed up front, so client lag cannot hide queueing"),
    ("TPOT", "(E2E − TTFT) / (output tokens − 1), per request"),
    ("ITL", "gaps between token arrivals; a chunk of k tokens arriving g ms after the previous one counts as k gaps of g/k"),
    ("E2E", "last byte − scheduled send"),
    ("Percentiles", "numpy linear interpolation (as vllm bench serve); p99 CI from order statistics (binomial ranks)"),
    ("Throughput", "tokens arriving and requests completing between the first and last scheduled send of the measured window"),
    ("Knee", "highest tested load whose every SLO is met (percentile rule) with all lower loads passing; bracket = [knee, next failing load]; "
             "saturation (completions < offered, TTFT trend, errors) fails a probe"),
    ("Attainment", "fraction of requests meeting every SLO, with a Clopper-Pearson 95% interval"),
    ("Energy", "Δ of the GPU energy counter over the window (NVML or DCGM), else the integral of sampled power (flagged); J/token = E/(in+out tokens)"),
    ("$/M tokens", "H·G·1e6/(3600·X·U): H $/GPU-h, G GPUs per replica (label gpus=N, NVML processes, or --gpus-per-replica; never assumed), "
                   "X tok/s measured at the knee, U utilisation; output-attributed uses X_out. Each price is shown beside the knee load it is priced at"),
    ("Blended", "input/output split at price ratio k = P_out/P_in, weighted 3:1"),
    ("Replicas", "ceil(peak req/s × (1 + headroom) / knee req/s), with the knee's measured req/s — the same rate $/1k requests uses"),
]


def report_data(paths: list[Path], cm: CostModel, catalog_path: Path | None = None, gpus_per_replica: float | None = None) -> dict:
    df = load_points(paths, gpus_per_replica)
    knees = knee_table(df)
    catalog = load_catalog(catalog_path)
    cost_rows = []
    for r in knees.to_dict("records"):
        sku = find_sku(catalog, r.get("gpu") or "")
        if not r.get("feasible"):
            cost_rows.append({**r, "cost_note": "no knee: no tested load met the SLOs"})
        elif sku is None:
            cost_rows.append({**r, "cost_note": f"no SKU in the catalog for GPU label '{r.get('gpu') or ''}'"})
        elif not gpus_known(r):
            cost_rows.append({**r, "cost_note": GPUS_UNKNOWN})
        else:
            cost_rows.append({**r, **cost_at_knee(r, sku, cm), "utilization": cm.utilization, "cost_note": ""})
    knees_cost = pd.DataFrame(cost_rows)
    envs, warnings, workloads = [], [], []
    for p in paths:
        dirs = find_run_dirs([p])
        if not dirs:
            continue
        doc = read_run_doc(dirs[0])
        e = doc.get("environment") or {}
        t = doc.get("target") or {}
        name = Path(p).name
        envs.append({"results": name, "gpu label": (doc.get("labels") or {}).get("gpu", ""), "server": f"{t.get('server_kind')} {t.get('server_version') or ''}",
                     "model": t.get("model"), "simulated": "yes" if t.get("simulated") else "no",
                     "GPUs seen by NVML": ", ".join(g["name"] for g in e.get("gpus") or []) or "none (client host)",
                     "client CPU": f"{(e.get('cpu') or {}).get('model')} ×{(e.get('cpu') or {}).get('cores')}",
                     "harness": f"{(doc.get('harness') or {}).get('version')} ({(doc.get('harness') or {}).get('git_sha') or 'no git'})"})
        spec = doc.get("spec") or {}
        workloads.append({"results": name, "workload": (doc.get("workload") or {}).get("tokenizer", ""),
                          "slos": ", ".join(f"{s['metric']}_p{s['pct']:g} ≤ {s['threshold_ms']:g} ms" for s in spec.get("slos", [])),
                          "api": (spec.get("target") or {}).get("api"), "arrival": (spec.get("load") or {}).get("arrival")})
    for r in knees.to_dict("records"):
        if isinstance(r.get("knee_run_dir"), str):  # NaN in rows without a knee
            s = read_run_doc(Path(r["knee_run_dir"])).get("summary") or {}
            warnings += [f"{r['sweep']} / {r['cell']} at the knee: {w}" for w in s.get("warnings", [])]
        if r.get("note"):
            warnings.append(f"{r['sweep']} / {r['cell']}: {r['note']}")
    return {"points": df, "knees": knees_cost, "env": envs, "workloads": workloads, "warnings": warnings,
            "simulated": bool(df["simulated"].any()), "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cost_model": cm,
            "methods": METHODS, "cells": sorted(df["cell"].unique())}
