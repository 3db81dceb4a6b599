"""Check the `load: auto` knee against a fine grid of long probes, on the simulator.

    python scripts/knee_vs_grid.py --profile h100-llama3-8b [--out results/knee-vs-grid]

1. `trilemma sweep` with `load: auto` (sequential probes, 20 s minimum window, 90 s maximum).
2. `trilemma sweep` with a fine grid around that knee (0.70x .. 1.30x in 5 % steps), fixed 60 s windows after
   a warmup of 2 lifetimes, fresh prompts per probe (the default), prefix cache reset before each.
3. Prints both knees: the grid's point-estimate knee (highest load whose measured percentiles meet every SLO,
   the `vllm bench sweep` reading) and its decided knee (highest decided PASS), and the auto knee's error
   against each.

Both sweeps use chat-512-128 and `ttft_p99 500ms, itl_p99 40ms`. Everything goes through the CLI as a user
would run it; the figures in the developers' note come from this script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SLOS = {"ttft_p99": "500ms", "itl_p99": "40ms"}
CELL = {"name": "chat-512-128", "isl": 512, "osl": 128}


def sweep(spec: dict, out: Path) -> tuple[Path, float]:
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"{spec['name']}.yaml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "bench.cli", "sweep", str(f), "--out", str(out), "--no-plots"], check=True, cwd=ROOT)
    return out / spec["name"], time.time() - t0


def table(d: Path):
    from bench.knee import knee_table, load_points

    df = load_points([d])
    return df, knee_table(df)


def point_estimate_knee(df) -> float | None:
    """Highest grid load whose measured percentiles meet every SLO, below the lowest that misses one."""
    meets = {}
    for r in df.to_dict("records"):
        s = r["_summary"]
        ok = all((s.lat(m, "p99") if s.lat(m, "p99") is not None else float("inf")) <= thr for m, thr in (("ttft", 500.0), ("itl", 40.0)))
        meets[r["load"]] = meets.get(r["load"], True) and ok
    loads = sorted(meets)
    first_miss = next((x for x in loads if not meets[x]), None)
    ok = [x for x in loads if meets[x] and (first_miss is None or x < first_miss)]
    return max(ok) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help="simulator profile, e.g. h100-llama3-8b")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "knee-vs-grid")
    ap.add_argument("--grid-window", type=float, default=60.0, help="grid probe window, s (>= 60)")
    ap.add_argument("--knee", type=float, default=None, help="skip the auto search; grid around this knee")
    ap.add_argument("--no-extend", action="store_true",
                    help="grid probes are sequential instead of fixed windows: looks from 60 s to --grid-window, stopping once "
                         "decided; an undecided one is not measured again with a 2x window (the point-estimate knee needs no "
                         "decision; saves half the grid's time at low rates)")
    ap.add_argument("--probe-max", type=float, default=90.0,
                    help="auto probes' maximum, s: a p99 PASS needs >= 368 requests, so at a knee of R req/s give >= 530/R")
    a = ap.parse_args()
    tag = a.profile.split("-")[0]
    base = {"target": {"sim": {"profile": a.profile}}, "cells": [CELL], "slos": SLOS,
            "labels": {"gpu": tag.upper(), "engine": "trilemma-sim", "gpus": "1"}}
    knee, auto_s, auto_n = a.knee, 0.0, 0
    if knee is None:
        auto = {"name": f"auto-{tag}", **base, "load": {"auto": {"precision": 0.1, "max_probes": 12}},
                "duration_s": 20, "probe": {"max_duration_s": a.probe_max}}
        d, auto_s = sweep(auto, a.out)
        df, kt = table(d)
        row = kt.iloc[0]
        if not row["feasible"]:
            sys.exit(f"auto search found no knee: {row['note']}")
        knee, auto_n = float(row["knee"]), len(df)
        print(f"auto knee {knee:.4g} req/s, bracket [{knee:.4g}, {row['bracket_hi']}], {auto_n} probes, "
              f"{row['knee_samples']} samples behind it, {auto_s / 60:.1f} min", flush=True)
    loads = sorted({round(knee * (0.70 + 0.05 * i), 4) for i in range(13)})
    grid = {"name": f"grid-{tag}", **base, "load": {"qps": loads}, "duration_s": a.grid_window, "probe": {"sequential": False}}
    if a.no_extend:
        grid.update(duration_s=60, probe={"sequential": True, "max_duration_s": a.grid_window})
    d, grid_s = sweep(grid, a.out)
    gdf, gkt = table(d)
    pe = point_estimate_knee(gdf)
    decided = float(gkt.iloc[0]["knee"]) if gkt.iloc[0]["feasible"] else None
    rows = []
    for r in gdf.sort_values("load").to_dict("records"):
        s = r["_summary"]
        rows.append({"load": r["load"], "verdict": r["verdict"], "n": r["n_measured"], "window_s": round(r["window_s"], 1),
                     "ttft_p99": round(s.lat("ttft", "p99") or float("nan"), 1),
                     "itl_p99": round(s.lat("itl", "p99") or float("nan"), 1)})
    res = {"profile": a.profile, "auto_knee": knee, "auto_minutes": round(auto_s / 60, 1), "auto_probes": auto_n,
           "grid_point_estimate_knee": pe, "grid_decided_knee": decided, "grid_minutes": round(grid_s / 60, 1),
           "grid_step": round(0.05 * knee, 4),
           "error_vs_point_estimate": None if pe is None else round(knee / pe - 1, 4),
           "error_vs_decided": None if decided is None else round(knee / decided - 1, 4), "grid": rows}
    (a.out / f"knee-vs-grid-{tag}.json").write_text(json.dumps(res, indent=1))
    for r in rows:
        print(f"  {r['load']:8.4g} req/s  {r['verdict']:9s} n={r['n']:5d}  window {r['window_s']:6.1f} s  "
              f"TTFT p99 {r['ttft_p99']:7.1f} ms  ITL p99 {r['itl_p99']:6.1f} ms")
    print(json.dumps({k: v for k, v in res.items() if k != "grid"}))


if __name__ == "__main__":
    main()
