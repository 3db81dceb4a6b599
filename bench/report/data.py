"""⑧ Everything a report shows, assembled from result files only (no server, no re-run)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from bench.cost import GPUS_UNKNOWN, CostModel, cost_at_knee, find_sku, load_catalog
from bench.knee import KneeRow, current_points, interrupted_points, knee_table, load_points, stage_rows
from bench.results import read_run, read_sweep_doc

METHODS = [
    ("TTFT", "first token-bearing chunk − scheduled (intended) send; the schedule is computed up front, so client lag cannot hide queueing"),
    ("TPOT", "(E2E − TTFT) / (output tokens − 1), per request"),
    ("ITL", "gaps between token arrivals; a chunk of k tokens arriving g ms after the previous one counts as k gaps of g/k"),
    ("E2E", "last byte − scheduled send"),
    ("Percentiles", "numpy linear interpolation (as vllm bench serve); p99 CI from order statistics (binomial ranks)"),
    ("Probe", "warmup >= 2 request lifetimes (E2E p50) and half the requests completed; window >= the minimum and 3 lifetimes; a "
              "sequential probe stops once every SLO is decided, at once on a decisive failure or saturation, else at its maximum"),
    ("SLO decision", "the share of samples over the threshold with a Clopper-Pearson interval on the effective sample size (design effect: "
                     "the larger of a time-block estimate and, for TTFT, its autocorrelation time, so correlated samples "
                     "are not counted as independent); PASS when the interval lies below 1 − percentile, "
                     "FAIL when above, else undecided (never PASS); the 5% error is spent over the probe's looks"),
    ("Throughput", "open loop (req/s): the offered rate × the share completed, with their mean tokens; closed loop (concurrency): "
                   "Little's law, time-average requests in flight / mean lifetime over the window (a closed loop sends in bursts, so "
                   "counting sends in a short window is off by up to one burst); both unbiased for any window length while the server "
                   "keeps up; past saturation, completions and tokens arriving inside the window"),
    ("Saturation", "completions vs arrivals a lifetime apart (interval below 0.95), or requests in flight rising (block-means trend, "
                   "corroborated by completions trailing arrivals)"),
    ("Knee", "highest load decided PASS with no failing load below it; bracket = [knee, lowest failing load]; undecided loads in between "
             "are listed — they are the knee's uncertainty"),
    ("Attainment", "fraction of requests meeting every SLO, with a Clopper-Pearson 95% interval"),
    ("Energy", "the GPU energy counter interpolated at the window's edges (NVML or DCGM), else the integral of sampled power; "
               "J/token = that energy / the tokens produced in the same window (warmup and drain excluded from both)"),
    ("$/M tokens", "H·G·1e6/(3600·X·U): H $/GPU-h, G GPUs per replica (label gpus=N, NVML processes, or --gpus-per-replica; never assumed), "
                   "X tok/s measured at the knee, U utilisation; output-attributed uses X_out. Each price is shown beside the knee load it is priced at"),
    ("Blended", "input/output split at price ratio k = P_out/P_in, weighted 3:1"),
    ("Replicas", "ceil(peak req/s × (1 + headroom) / knee req/s), with the knee's measured req/s — the same rate $/1k requests uses"),
]


COST_COLUMNS = ("usd_per_gpu_hour", "usd_per_m_output", "usd_per_m_blended", "usd_per_1k_requests", "j_per_output_token",
                "replicas_at_peak", "cost_note")


def report_data(paths: list[Path], cm: CostModel, catalog_path: Path | None = None, gpus_per_replica: float | None = None) -> dict:
    df = load_points(paths, gpus_per_replica)
    knees = knee_table(df)
    catalog = load_catalog(catalog_path)
    cost_rows = []
    for r in knees.to_dict("records"):
        row = KneeRow.of(r)
        gpu = row.gpu
        sku = find_sku(catalog, gpu)
        if not row.feasible:
            cost_rows.append({**r, "cost_note": "no knee: no load was decided PASS, so there is no cost at the SLO"})
        elif not gpu:
            cost_rows.append({**r, "cost_note": "no GPU label on these results: rerun with --label gpu=SKU (a name in the catalog) to price them"})
        elif sku is None:
            where = catalog_path or "bench/catalog/gpus.yaml"
            cost_rows.append({**r, "cost_note": f"no price for GPU '{gpu}' in the catalog: add it to {where} or pass --catalog"})
        elif not row.gpus_known:
            cost_rows.append({**r, "cost_note": GPUS_UNKNOWN})
        else:
            try:
                cost_rows.append({**r, **cost_at_knee(row, sku, cm), "utilization": cm.utilization, "cost_note": ""})
            except ValueError as e:  # the SKU lacks the chosen pricing tier
                cost_rows.append({**r, "cost_note": str(e)})
    knees_cost = pd.DataFrame(cost_rows, columns=None if cost_rows else list(knees.columns))
    for col in COST_COLUMNS:  # every cell the templates read exists (NaN renders as "—")
        if col not in knees_cost:
            knees_cost[col] = float("nan")
    knees_cost["cost_note"] = knees_cost["cost_note"].astype(object).where(knees_cost["cost_note"].notna(), None)
    envs, warnings, workloads = [], [], []
    for p in paths:
        dirs = current_points([p])
        if not dirs:
            continue
        doc = read_run(dirs[0])
        env, t = doc.environment, doc.target
        name = Path(p).name
        envs.append({"results": name, "gpu label": doc.labels.get("gpu", ""),
                     "server": f"{t.server_kind} {t.server_version or ''}",
                     "model": t.model, "simulated": "yes" if t.simulated else "no",
                     "GPUs seen by NVML": ", ".join(g.name for g in env.gpus) or "none (client host)",
                     "client CPU": f"{env.cpu.model} ×{env.cpu.cores}",
                     "harness": f"{doc.harness.version} ({doc.harness.git_sha or 'no git'})"})
        workloads.append({"results": name, "workload": doc.workload.tokenizer,
                          "slos": ", ".join(f"{x.name} ≤ {x.threshold_ms:g} ms" for x in doc.slo_specs),
                          "api": doc.spec.target.api, "arrival": doc.spec.load.arrival})
    for row in map(KneeRow.of, knees.to_dict("records")):
        if row.knee_run_dir:
            ks = read_run(Path(row.knee_run_dir)).summary
            warnings += [f"{row.sweep} / {row.cell} at the knee: {w.text}" for w in (ks.warnings if ks else [])]
        if row.note:
            warnings.append(f"{row.sweep} / {row.cell}: {row.note}")
    interrupted = interrupted_points(df, why=True)
    for p in paths:
        sj = read_sweep_doc(Path(p))
        if sj is not None and sj.status == "interrupted":
            interrupted.insert(0, f"sweep {Path(p).name} was interrupted before it ended: its knee rests on the points it finished "
                                  "(run the same `trilemma sweep` command again to resume)")
    notes = [f"{r.sweep} / {r.cell}: {r.cost_note}" for r in map(KneeRow.of, knees_cost.to_dict("records")) if r.cost_note]
    best = best_serve_configs(knees_cost)
    if not cm.peak_qps:
        notes.append("replicas: pass --peak-qps (peak traffic in req/s) or set peak_qps in --cost to size the fleet")
    return {"points": df, "knees": knees_cost, "cost_notes": notes, "env": envs, "workloads": workloads, "warnings": warnings,
            "simulated": bool(df["simulated"].any()), "interrupted": interrupted, "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cost_model": cm,
            "methods": METHODS, "cells": sorted(df["cell"].unique()), "stages": stage_rows(df), "best_configs": best}


def best_serve_configs(knees: pd.DataFrame) -> list[str]:
    """Per sweep and cell measured under several launched serve configs: the cheapest at the SLO ($/M output
    tokens at its knee), or the highest knee where none is priced."""
    out: list[str] = []
    if knees.empty or "serve_config" not in knees:
        return out
    for (sweep, cell), g in knees[knees["serve_config"].astype(bool)].groupby(["sweep", "base_cell"], sort=False):
        if len(g) < 2:
            continue
        feas = g[g["feasible"].astype(bool)]
        if feas.empty:
            out.append(f"{sweep} / {cell}: no serve config has a knee (none of {', '.join(g['serve_config'])} met the SLOs at any tested load)")
            continue
        priced = feas[feas["usd_per_m_output"].notna()]
        if not priced.empty:
            b = priced.sort_values("usd_per_m_output").iloc[0]
            rest = ", ".join(f"{r.serve_config} ${r.usd_per_m_output:.3f}" for r in priced.itertuples() if r.Index != b.name)
            out.append(f"{sweep} / {cell}: best serve config {b['serve_config']} — ${b['usd_per_m_output']:.3f} per M output tokens at its "
                       f"knee ({b['knee']:g} {'req/s' if b['mode'] == 'qps' else 'concurrent'})" + (f"; others: {rest}" if rest else ""))
        else:
            b = feas.sort_values("knee").iloc[-1]
            out.append(f"{sweep} / {cell}: highest knee with serve config {b['serve_config']} ({b['knee']:g} "
                       f"{'req/s' if b['mode'] == 'qps' else 'concurrent'}); not priced: label the GPU to compare $/M")
    return out
