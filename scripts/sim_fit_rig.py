#!/usr/bin/env python3
"""Does a fitted simulator predict a real server's knee? The check behind `trilemma sim fit`, on the real vLLM
CPU rig (scripts/vllm_rig.py):

  1. probes of one cell (--fit-cell, a few request rates) against the real vLLM server;
  2. `trilemma sim fit` on them (base profile cpu-rig-tiny-llama) and its predicted knee for a second cell
     with different ISL/OSL (--predict-cell) at --slo;
  3. that cell measured for real on a grid of rates around the prediction (`trilemma sweep`): the knee where each
     SLO's measured percentile crosses its threshold (the same point estimate the prediction is), and the decided
     knee trilemma reports (conservative: a PASS needs the percentile's interval below the threshold); the
     prediction error against both is printed.

    python scripts/sim_fit_rig.py [--out results/sim-fit-rig] [--slo ttft_p90=250ms,tpot_p90=25ms]

Takes ~20 min on a 2-core machine. Nothing else should run meanwhile (it measures latency).

Measured on the 2-core development box (2026-12-05): fit probes at 4-80 req/s, predicted 39.1 req/s, measured
percentiles cross at 34.1 (+14.8 %), decided knee 30 [30, 38]. With fit probes at 2-28 req/s only (batch 1-2,
TPOT flat) the prediction was 50.3 (+47 %): the per-sequence step cost that sets the knee was not identified.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


def trilemma(*args: str) -> None:
    print(f"\n$ trilemma {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "sim-fit-rig")
    ap.add_argument("--fit-cell", default="128/32", help="ISL/OSL of the probes the profile is fitted to")
    ap.add_argument("--fit-qps", default="4,16,32,48,64,80",
                    help="request rates of those probes: up to where the batch fills (low rates alone leave the per-sequence cost unfitted)")
    ap.add_argument("--predict-cell", default="512/64", help="ISL/OSL of the cell whose knee is predicted, then measured")
    ap.add_argument("--slo", default="ttft_p90=250ms,tpot_p90=25ms")
    ap.add_argument("--seconds", type=float, default=15, help="window of each fit probe")
    ap.add_argument("--measure-qps", default="6,9,12,15,18,22,26,30,34,38,43,48", help="request rates the second cell is measured at")
    ap.add_argument("--measure-seconds", type=float, default=30, help="window of each measured point")
    ap.add_argument("--keep-measured", action="store_true",
                    help="refit only: keep the second cell's points already measured under --out (same rig, same model)")
    a = ap.parse_args()
    import vllm_rig

    from bench.config import parse_slos

    a.out.mkdir(parents=True, exist_ok=True)
    slos = {s.name: f"{s.threshold_ms:g}ms" for s in parse_slos(a.slo)}
    fi, fo = map(int, a.fit_cell.split("/"))
    pi, po = map(int, a.predict_cell.split("/"))
    proc, url = vllm_rig.start_server(log=a.out / "vllm.log")
    try:
        fit_yaml, knee_yaml = a.out / "fit-probes.yaml", a.out / "measured-knee.yaml"
        fit_yaml.write_text(yaml.safe_dump({
            "name": "fit-probes", "target": {"url": url}, "cells": [{"name": f"fit-{fi}-{fo}", "isl": fi, "osl": fo}],
            "load": {"qps": [float(x) for x in a.fit_qps.split(",")]}, "duration_s": a.seconds, "warmup": "3s",
            "slos": slos}))
        trilemma("sweep", str(fit_yaml), "--out", str(a.out), "--no-plots")
        trilemma("sim", "fit", str(a.out / "fit-probes"), "--base", "cpu-rig-tiny-llama", "--out", str(a.out / "fitted.yaml"),
                 "--predict", a.predict_cell, "--slo", a.slo)
        if a.keep_measured and (a.out / "measured-knee" / "sweep.json").exists():
            print(f"\nkeeping the measured points of {a.out / 'measured-knee'}", flush=True)
        else:
            knee_yaml.write_text(yaml.safe_dump({
                "name": "measured-knee", "target": {"url": url}, "cells": [{"name": f"knee-{pi}-{po}", "isl": pi, "osl": po}],
                "load": {"qps": [float(x) for x in a.measure_qps.split(",")]}, "duration_s": a.measure_seconds, "warmup": "3s",
                "slos": slos}))
            trilemma("sweep", str(knee_yaml), "--out", str(a.out), "--no-plots")
    finally:
        vllm_rig.stop_server(proc)

    from bench.knee import knee_table, load_points
    from bench.sim.engine import load_profile
    from bench.simfit import predict_knee

    fitted = load_profile(str(a.out / "fitted.yaml"))
    pred, _ = predict_knee(fitted, pi, po, parse_slos(a.slo))
    pts = load_points([a.out / "measured-knee"]).sort_values("load")
    crossing = percentile_crossing(pts, parse_slos(a.slo))
    k = knee_table(pts).iloc[0]
    meas, hi = k["knee"], k["bracket_hi"]
    print(f"\nfit on {a.fit_cell} probes (rms log error {fitted.fit['rms_log_error'] if fitted.fit else float('nan')}); "
          f"knee of {a.predict_cell} at {a.slo}:")
    print(f"  predicted {pred:.3g} req/s" if pred else "  predicted: none")
    top = hi is not None and hi == hi
    hi_txt = f"{hi:.3g}" if top else ">"
    print(f"  measured  {meas:.3g} req/s (bracket [{meas:.3g}, {hi_txt}]), binding {k['binding_slo']}, "
          f"bound by {k.get('bottleneck')}" if k["feasible"] else f"  measured: none — {k['note']}")
    print("  measured percentiles per load: " + "; ".join(
        f"{r['load']:g}: " + ", ".join(f"{x.slo} {x.value_ms:.4g}" for x in r["_summary"].slos) for _, r in pts.iterrows()))
    if crossing:
        print(f"  measured crossing (each SLO's measured percentile at its threshold, log-linear between loads): {crossing:.3g} req/s; "
              f"prediction error {pred / crossing - 1:+.1%}" if pred else f"  measured crossing {crossing:.3g} req/s")
    if pred and k["feasible"]:
        mid = (meas * hi) ** 0.5 if top else meas
        print(f"  error vs the bracket's middle ({mid:.3g}): {pred / mid - 1:+.1%}; "
              f"inside the bracket: {meas <= pred <= (hi if top else float('inf'))}")


def percentile_crossing(pts, slos) -> float | None:
    """The lowest load where any SLO's measured percentile reaches its threshold, interpolated log-linearly
    between the last load under every threshold and the first over one."""
    import math

    prev = None
    for _, r in pts.iterrows():
        vals = {x.slo: x.value_ms for x in r["_summary"].slos}
        ratio = max(vals[s.name] / s.threshold_ms for s in slos if vals.get(s.name) is not None)
        if ratio >= 1:
            if prev is None:
                return None
            (l0, q0), (l1, q1) = prev, (r["load"], ratio)
            f = (0 - math.log(q0)) / (math.log(q1) - math.log(q0))
            return math.exp(math.log(l0) + f * (math.log(l1) - math.log(l0)))
        prev = (r["load"], ratio)
    return None


if __name__ == "__main__":
    main()
