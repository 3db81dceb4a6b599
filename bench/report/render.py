"""⑧ Render reports/<name>/: index.html (self-contained: inline PNGs and CSS), summary.md, and the PNG/SVG figures."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import jinja2

from bench.cost import CostModel
from bench.report.data import report_data
from bench.report.plots import plot_all, plot_cost_energy

CAPTIONS = {
    "latency_vs_load": "Latency percentiles vs offered load per cell, SLO thresholds dashed, knee dotted.",
    "throughput_pareto": "Throughput vs TTFT p99, and output tok/s per GPU vs interactivity (1000/TPOT p50); ★ marks the SLO knee.",
    "achieved_vs_offered": "Completed vs offered request rate: where the curve leaves the diagonal, the server is saturated.",
    "cost_per_slo": "Cost per million tokens at the SLO knee of each cell.",
    "energy": "Energy per output token and average GPU power at the knee.",
}


def f(x, nd: int = 1) -> str:
    try:
        if x is None or isinstance(x, jinja2.Undefined) or (isinstance(x, float) and math.isnan(x)):  # a column this row lacks
            return "—"
        if isinstance(x, float) and math.isinf(x):
            return "∞ (failures)" if x > 0 else "−∞"
        return f"{float(x):,.{nd}f}"
    except (TypeError, ValueError):
        return str(x)


def pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:+.1f}%"


def render_report(paths: list[Path], out_root: Path, name: str, cm: CostModel, catalog: Path | None = None,
                  compare: dict | None = None, gpus_per_replica: float | None = None) -> Path:
    data = report_data(paths, cm, catalog, gpus_per_replica)
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    slo_lines = {s.name: s.threshold_ms for lst in data["points"]["_slos"] for s in lst}
    files = plot_all(data["points"], data["knees"], out, slo_lines)
    files += plot_cost_energy(data["knees"], out)
    figures = [{"name": p.stem, "caption": CAPTIONS.get(p.stem, p.stem), "b64": base64.b64encode(p.read_bytes()).decode()}
               for p in files if p.suffix == ".png"]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.ChainableUndefined)
    ctx = {"name": name, "knees": data["knees"].to_dict("records"), "env": data["env"], "env_cols": list(data["env"][0]) if data["env"] else [],
           "workloads": data["workloads"], "warnings": data["warnings"], "simulated": data["simulated"], "interrupted": data["interrupted"],
           "generated": data["generated"],
           "cm": cm, "cost_notes": data["cost_notes"], "methods": data["methods"], "figures": figures, "sources": [str(p) for p in paths], "f": f, "pct": pct,
           "compare": compare, "stages": data["stages"], "best_configs": data["best_configs"]}
    (out / "index.html").write_text(env.get_template("index.html.j2").render(**ctx))
    (out / "summary.md").write_text(env.get_template("summary.md.j2").render(**ctx))
    data["knees"].drop(columns=[c for c in data["knees"].columns if c.startswith("_")], errors="ignore").to_csv(out / "knee_cost.csv", index=False)
    return out
