"""`trilemma sim --validate`: the shipped profiles held against published measurements.

Every data point in validation.yaml (next to this file) names a profile, the serve config and GPU variant it was
measured with (`serve`: overrides of profile fields, e.g. the A100 40GB's bandwidth or vLLM's default chunk
budget for that version), the workload and load, the published figures, their source and date, and whether they
are primary (the measurer's own table) or derived (arithmetic on primary figures, stated). Each point is
replayed in virtual time (bench/sim/virtual.py); a figure outside its tolerance fails the validation.

Point kinds:
  serving  ISL/OSL at a concurrency (closed loop, as `vllm bench serve --max-concurrency`) or a request rate:
           figures output_tps, request_tps, tpot_ms_median, itl_ms_median, ttft_ms_median, and
           gain_over_concurrency_1 (output throughput at C over that at concurrency 1, same ISL/OSL)
  gemm     the weight GEMMs of one forward pass of M tokens (no step overhead, no attention): figure gemm_ms,
           the roofline max(weight bytes / bandwidth, FLOPs / compute) of the model's body
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import BaseModel, ConfigDict

from bench.sim.engine import Profile, load_profile
from bench.sim.virtual import simulate

VALIDATION_FILE = Path(__file__).parent / "validation.yaml"
# the bar: throughput within ±15 %, median TPOT/ITL within ±20 %; TTFT carries HTTP and tokenizer
# time the engine model does not see: ±25 %; a GEMM roofline against a measured GEMM: ±15 %
TOLERANCE = {"output_tps": 0.15, "request_tps": 0.15, "tpot_ms_median": 0.20, "itl_ms_median": 0.20,
             "ttft_ms_median": 0.25, "gemm_ms": 0.15, "gain_over_concurrency_1": 0.15}


@dataclass
class Check:
    point: str
    profile: str
    setup: str
    figure: str
    published: float
    predicted: float
    tolerance: float
    kind: str
    source: str
    calibrated: bool = False

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1 if self.published else math.nan

    @property
    def ok(self) -> bool:
        return math.isfinite(self.error) and abs(self.error) <= self.tolerance


def gemm_ms(p: Profile, m: int) -> float:
    body = (p.params_b - p.embed_params_b - p.lm_head_params_b) * 1e9
    t_mem = body * p.dtype_bytes / (p.hbm_gbps * 1e9 * p.mem_eff)
    t_cmp = 2 * body * m / (p.peak_tflops * 1e12 * p.flop_eff)
    return max(t_mem, t_cmp) * 1e3


class Point(BaseModel):
    """One entry of validation.yaml's `points` (other keys, e.g. `how` and `date`, are for the reader)."""

    model_config = ConfigDict(extra="allow")
    id: str | int
    profile: str
    serve: dict[str, Any] | None = None  # profile fields set to the measured setup
    gemm_tokens: int | None = None  # a gemm point
    isl: int | None = None
    osl: int | None = None
    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None
    published: dict[str, float]
    tolerance: dict[str, float] = {}
    kind: str = "primary"
    source: str = ""
    calibrated_on: str | None = None


def predict_point(pt: Point) -> tuple[Profile, str, dict[str, float]]:
    prof = load_profile(pt.profile)
    if pt.serve:
        prof = prof.model_copy(update=pt.serve)
    if pt.gemm_tokens is not None:
        m = pt.gemm_tokens
        return prof, f"GEMMs of M={m} tokens", {"gemm_ms": gemm_ms(prof, m)}
    if pt.isl is None or pt.osl is None or (pt.concurrency is None and pt.rate is None):
        raise ValueError(f"point {pt.id}: a serving point needs isl, osl and a concurrency or a rate")
    isl, osl = pt.isl, pt.osl
    if pt.concurrency is not None:
        c = pt.concurrency
        v = simulate(prof, isl, osl, concurrency=c, n_requests=pt.requests or max(200, 20 * c))
        setup = f"{isl}/{osl} at concurrency {c}"
        if "gain_over_concurrency_1" in pt.published:
            one = simulate(prof, isl, osl, concurrency=1, n_requests=20)
            return prof, setup, {**v.figures(), "gain_over_concurrency_1": v.output_tps / one.output_tps}
    else:
        r = float(cast(float, pt.rate))
        v = simulate(prof, isl, osl, rate=r, n_requests=pt.requests or max(300, int(r * 60)))
        setup = f"{isl}/{osl} at {r:g} req/s"
    return prof, setup, v.figures()


def run_validation(path: Path = VALIDATION_FILE) -> list[Check]:
    doc = yaml.safe_load(path.read_text())
    out = []
    for raw in doc["points"]:
        pt = Point.model_validate(raw)
        prof, setup, pred = predict_point(pt)
        for fig, pub in pt.published.items():
            if fig not in pred:
                raise ValueError(f"{path}: point {pt.id}: figure '{fig}' is not predicted; use one of {', '.join(pred)}")
            tol = pt.tolerance.get(fig, TOLERANCE[fig])
            out.append(Check(str(pt.id), prof.name, setup, fig, pub, pred[fig], tol, pt.kind, pt.source, bool(pt.calibrated_on)))
    return out


def print_validation(rows: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="simulator profiles vs published measurements (virtual time, the engine model only)")
    for c in ("point", "profile", "setup", "figure", "published", "predicted", "error", "tol", "kind", "src"):
        t.add_column(c, justify="right" if c in ("published", "predicted", "error", "tol", "src") else "left")
    sources: list[str] = []
    for r in rows:
        if r.source not in sources:
            sources.append(r.source)
        err = f"{r.error:+.1%}"
        kind = r.kind + (", calibration" if r.calibrated else "")
        t.add_row(r.point, r.profile, r.setup, r.figure, f"{r.published:.4g}", f"{r.predicted:.4g}",
                  err if r.ok else f"[red]{err}[/red]", f"±{r.tolerance:.0%}", kind, f"[{sources.index(r.source) + 1}]")
    con = Console(width=max(140, Console().width))
    con.print(t)
    for i, src in enumerate(sources, 1):
        con.print(f"[{i}] {src}", markup=False, highlight=False)
    bad = [r for r in rows if not r.ok]
    con.print(f"{len(rows) - len(bad)}/{len(rows)} figures within tolerance"
              + (": outside — " + "; ".join(f"{r.point} {r.figure} {r.error:+.1%}" for r in bad) if bad else ""))
