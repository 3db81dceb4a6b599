#!/usr/bin/env python3
"""`make demo`: find the SLO knee of two simulated GPU SKUs, price them, and write a comparison report.

Everything runs on this machine against trilemma's built-in SIMULATED server — no GPU, no download.
Finished points are kept in results/, so a second `make demo` reuses them and only re-renders.
"""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def trilemma(*args: str) -> None:
    print(f"\n$ trilemma {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, check=True)


t0 = time.time()
# the report draws the figures for both SKUs, so the sweeps skip their own
trilemma("sweep", "sweeps/demo.yaml", "--no-plots")
trilemma("sweep", "sweeps/demo-a100.yaml", "--no-plots")
trilemma("report", "results/demo-h100", "results/demo-a100", "--name", "demo", "--peak-qps", "100")
trilemma("compare", "results/demo-a100", "results/demo-h100")
print(f"\ndemo finished in {time.time() - t0:.0f} s — open reports/demo/index.html (SIMULATED results)")
