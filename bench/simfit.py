"""Fit a simulator profile to a real server's measured probes, and predict knees with it (`trilemma sim fit`).

The fitted quantities are the step-time coefficients of the engine model (bench/sim/engine.py):

    step_overhead_ms   fixed cost of every step (scheduler, sampling, launches; Python on a CPU server)
    seq_overhead_ms    cost per sampled sequence per step (per-request CPU work: why TPOT grows with the batch)
    flop_eff           scales the per-token term (every prompt and decode token in the step)
    mem_eff            scales the per-step memory term (weights + the batch's KV context)
    api_overhead_ms    added to TTFT only: HTTP, tokenizer and detokenizer in front of the engine
    host_ms_per_token  CPU per streamed token taken from the engine's cores (front end, a client on the same machine):
                       steps stretch as the streamed-token rate rises (0 where the server has cores to spare)

Each measured probe (a sweep point or a run: fixed ISL/OSL, a request rate or a concurrency) is replayed in
virtual time (bench/sim/virtual.py) with the candidate profile, and the log-ratio of predicted to measured
median TPOT, median ITL, median TTFT, output throughput and, where the server's /metrics has it, its mean prefill
time (vLLM: first scheduled to first token — what separates per-prompt-token cost from front-end cost) is minimised (scipy's least_squares, robust soft-L1
loss, on the log of the coefficients). The batch cap, chunk budget and KV capacity stay as the profile says:
they are the serve config (set them to the server's `--max-num-seqs`, `--max-num-batched-tokens`, KV size).

The fit error is stated per probe and figure; a profile is only as good as the probes it saw: predict a cell
whose ISL/OSL lie far outside them and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.config import SLO
from bench.knee import load_points
from bench.sim.engine import Profile, load_profile
from bench.sim.virtual import simulate

# client figures, and the server's own prefill time where its /metrics has it (vLLM: first scheduled to first token).
# The prefill time is what tells one cell's TTFT apart: the engine's per-prompt-token cost (it scales with ISL) from the
# front end's per-request cost (it does not); from client TTFTs of one ISL alone the two trade off freely.
FIGURES = ("tpot_p50", "itl_p50", "ttft_p50", "output_tps", "server_prefill_mean_ms")
PARAMS = ("step_overhead_ms", "seq_overhead_ms", "flop_eff", "mem_eff", "api_overhead_ms", "host_ms_per_token")


@dataclass
class Probe:
    isl: int
    osl: int
    mode: str  # qps | concurrency
    load: float
    measured: dict[str, float]
    where: str


def _fixed_len(v: object, what: str, where: str) -> int:
    try:
        n = int(str(v))
    except ValueError:
        raise ValueError(f"{where}: {what} '{v}' is a distribution; `sim fit` needs fixed lengths "
                         "(a sweep cell like isl: 512, osl: 128)") from None
    return n


def probes_from_results(paths: list[Path]) -> list[Probe]:
    """Measured points under the given results (complete, decided or not: the fit uses latencies, not verdicts)."""
    df = load_points(paths)
    out = []
    from bench.results import read_run

    # saturated probes are left out: past capacity a queue grows with the run's length, which no replay matches
    for _, r in df[(df["status"] == "complete") & (df["mode"].isin(["qps", "concurrency"])) & (~df["saturated"].astype(bool))].iterrows():
        w = read_run(Path(r["run_dir"])).spec.workload
        if w.dataset or w.isl is None or w.osl is None:
            continue
        where = f"{r['sweep']} / {r['cell']} at {r['load']:g}"
        meas = {"tpot_p50": r["tpot_p50"], "itl_p50": r["itl_p50"], "ttft_p50": r["ttft_p50"], "output_tps": r["output_tps"],
                "server_prefill_mean_ms": r["server_prefill_mean_ms"]}
        meas = {k: float(v) for k, v in meas.items() if v is not None and not (isinstance(v, float) and math.isnan(v)) and v > 0}
        if meas:
            out.append(Probe(_fixed_len(w.isl, "isl", where), _fixed_len(w.osl, "osl", where), r["mode"],
                             float(r["load"]), meas, where))
    if not out:
        raise FileNotFoundError(f"no complete, unsaturated fixed-length probes under {', '.join(map(str, paths))}; "
                                "run `trilemma sweep` with isl/osl cells at loads the server keeps up with first")
    return out


def _with(base: Profile, x: dict[str, float]) -> Profile:
    return base.model_copy(update=x)


def predict(profile: Profile, p: Probe, n_requests: int | None = None, seed: int = 0) -> dict[str, float]:
    kw = {"concurrency": int(p.load)} if p.mode == "concurrency" else {"rate": p.load}
    n = n_requests or (max(200, int(p.load) * 10) if p.mode == "concurrency" else max(200, int(p.load * 30)))
    v = simulate(profile, p.isl, p.osl, n_requests=n, seed=seed, **kw)
    api = profile.api_overhead_ms
    return {"tpot_p50": v.pct("tpot", 0.5), "itl_p50": v.pct("itl", 0.5), "ttft_p50": v.pct("ttft", 0.5) + api,
            "output_tps": v.output_tps, "ttft_p99": v.pct("ttft", 0.99) + api, "itl_p99": v.pct("itl", 0.99),
            "tpot_p99": v.pct("tpot", 0.99), "e2e_p50": math.nan,
            "server_prefill_mean_ms": sum(v.prefill_ms) / len(v.prefill_ms) if v.prefill_ms else math.nan}


@dataclass
class FitResult:
    profile: Profile
    rows: list[dict[str, Any]]  # per probe and figure: measured, predicted, error
    rms_log_error: float
    max_abs_error: float

    def to_yaml(self, path: Path, source: str) -> None:
        doc = self.profile.model_dump()
        doc["fit"] = {"source": source, "figures": list(FIGURES), "probes": len({r["probe"] for r in self.rows}),
                      "rms_log_error": round(self.rms_log_error, 4), "max_abs_error": round(self.max_abs_error, 4),
                      "per_probe": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows]}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))


EXTRAPOLATION = 3.0  # a predicted knee's batch this many times the probes' largest is called extrapolated


def fit(base: Profile, probes: list[Probe], n_requests: int | None = None) -> FitResult:
    from scipy.optimize import least_squares

    # two starts: the base profile's coefficients, and one read off the data (the quietest probe's ITL is about
    # one step; its TTFT less that step is mostly the front end and the prefill); the better fit is kept
    quiet = min(probes, key=lambda p: p.load)
    itl0 = quiet.measured.get("itl_p50") or quiet.measured.get("tpot_p50") or base.step_overhead_ms
    ttft0 = quiet.measured.get("ttft_p50") or 2 * itl0
    starts = [np.log([max(base.step_overhead_ms, 0.05), max(base.seq_overhead_ms, 0.01), base.flop_eff, base.mem_eff,
                      max(base.api_overhead_ms, 0.05), max(base.host_ms_per_token, 1e-4)]),
              np.log([0.8 * itl0, 0.01, base.flop_eff, base.mem_eff, max(0.05, 0.5 * (ttft0 - itl0)), 1e-4])]

    def prof_of(x: np.ndarray) -> Profile:
        return _with(base, dict(zip(PARAMS, map(float, np.exp(x)))))

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = prof_of(x)
        res = []
        for p in probes:
            pred = predict(prof, p, n_requests)
            for f in FIGURES:
                if f in p.measured:
                    q = pred[f]
                    res.append(math.log(q / p.measured[f]) if q > 0 and math.isfinite(q) else 5.0)
        return np.array(res)

    lo = np.log([0.01, 1e-4, 1e-6, 1e-6, 0.01, 1e-5])
    hi = np.log([1e4, 1e3, 1.0, 1.0, 1e4, 10.0])
    sols = [least_squares(residuals, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi), loss="soft_l1", f_scale=0.1,
                          diff_step=0.05, max_nfev=80) for x0 in starts]
    sol = min(sols, key=lambda r: r.cost)
    prof = prof_of(sol.x).model_copy(update={"name": f"{base.name}-fit"})
    rows: list[dict[str, Any]] = []
    for p in probes:
        pred = predict(prof, p, n_requests)
        for f in FIGURES:
            if f in p.measured:
                rows.append({"probe": p.where, "isl": p.isl, "osl": p.osl, "figure": f, "measured": p.measured[f],
                             "predicted": pred[f], "error": pred[f] / p.measured[f] - 1})
    errs = np.array([math.log1p(r["error"]) for r in rows])
    return FitResult(prof, rows, float(np.sqrt(np.mean(errs ** 2))), float(max(abs(r["error"]) for r in rows)))


def predict_knee(profile: Profile, isl: int, osl: int, slos: list[SLO], lo: float = 0.05, hi: float | None = None,
                 rel_tol: float = 0.02, seconds: float = 120.0, seed: int = 0) -> tuple[float | None, dict]:
    """The highest Poisson request rate whose predicted percentiles meet every SLO (bisection in virtual time).
    Returns (knee req/s or None, the predicted figures at it)."""
    cap = profile.analytic_capacity(isl, osl)["qps"]
    hi = hi or cap * 1.5

    def ok(rate: float) -> tuple[bool, dict]:
        v = simulate(profile, isl, osl, rate=rate, n_requests=max(300, int(rate * seconds)), seed=seed)
        got = {}
        for s in slos:
            x = v.pct(s.metric, s.pct / 100)
            if s.metric in ("ttft", "e2e"):
                x += profile.api_overhead_ms
            got[s.name] = x
        passed = all(got[s.name] <= s.threshold_ms for s in slos) and v.request_tps >= 0.95 * rate
        return passed, {**got, "request_tps": v.request_tps, "mean_batch": v.mean_batch, "rate": rate}

    good, at = ok(lo)
    if not good:
        return None, at
    bad_at = hi
    top, fig_hi = ok(hi)
    if top:  # every rate tried passed: the knee is at least hi
        return hi, {**fig_hi, "lower_bound": 1.0}
    while bad_at / lo - 1 > rel_tol:
        mid = math.sqrt(lo * bad_at)
        passed, fig = ok(mid)
        if passed:
            lo, at = mid, fig
        else:
            bad_at = mid
    return lo, at


def probes_batch(profile: Profile, probes: list[Probe]) -> float:
    """The largest mean decode batch the probes ran, replayed with the fitted profile (whose latencies match
    theirs): what the per-sequence cost was fitted on. A knee predicted at a much larger batch extrapolates it."""
    out = 0.0
    for p in probes:
        kw = {"concurrency": int(p.load)} if p.mode == "concurrency" else {"rate": p.load}
        n = max(200, int(p.load) * 10) if p.mode == "concurrency" else max(200, int(p.load * 30))
        out = max(out, simulate(profile, p.isl, p.osl, n_requests=n, seed=0, **kw).mean_batch)
    return out


def load_base(name: str) -> Profile:
    return load_profile(name)


def print_fit(res: FitResult, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    p = res.profile
    con.print(f"fitted profile written to {out}: step_overhead {p.step_overhead_ms:.3g} ms, "
              f"per sequence {p.seq_overhead_ms:.3g} ms, flop_eff {p.flop_eff:.3g}, "
              f"mem_eff {p.mem_eff:.3g}, api_overhead {p.api_overhead_ms:.3g} ms, host {p.host_ms_per_token:.3g} ms per streamed token")
    t = Table(title=f"fit: {len({r['probe'] for r in res.rows})} probes, rms log error {res.rms_log_error:.3f}, "
                    f"worst {res.max_abs_error:+.1%}")
    for c in ("probe", "figure", "measured", "predicted", "error"):
        t.add_column(c, justify="left" if c in ("probe", "figure") else "right")
    for r in res.rows:
        t.add_row(r["probe"], r["figure"], f"{r['measured']:.4g}", f"{r['predicted']:.4g}", f"{r['error']:+.1%}")
    con.print(t)


def print_predicted_knee(cell: tuple[int, int], slos: list[SLO], knee: float | None, at: dict, probe_batch: float | None = None) -> None:
    from rich.console import Console

    slo_txt = ", ".join(map(str, slos))
    figs = ", ".join(f"{k} {v:.4g}" for k, v in at.items() if k not in ("rate", "lower_bound"))
    if knee is None:
        Console().print(f"predicted knee for {cell[0]}/{cell[1]} at {slo_txt}: none — even {at['rate']:.3g} req/s misses ({figs})")
    else:
        at_least = "at least " if at.get("lower_bound") else ""
        Console().print(f"predicted knee for {cell[0]}/{cell[1]} at {slo_txt}: {at_least}{knee:.3g} req/s (Poisson; predicted there: {figs})")
        if probe_batch is not None and at.get("mean_batch", 0) > EXTRAPOLATION * max(probe_batch, 1.0):
            Console().print(f"[yellow]warning:[/] the probes ran a decode batch of at most {probe_batch:.1f}; the predicted knee runs "
                            f"{at['mean_batch']:.1f}: the per-sequence step cost is extrapolated {at['mean_batch'] / max(probe_batch, 1.0):.1f}x "
                            "beyond what was measured. Add probes at higher rates (up to where the batch fills) and fit again.")


def parse_predict(predict: str | None, slos: list[Any]) -> tuple[int, int] | None:
    """`sim fit --predict ISL/OSL` (with --slo) as (isl, osl); None without --predict. Bad input: SpecError, one line."""
    from bench.config import SpecError

    if predict is None:
        return None
    try:
        isl_s, osl_s = predict.split("/")
        cell = (int(isl_s), int(osl_s))
    except ValueError:
        raise SpecError(f"--predict '{predict}': write ISL/OSL in tokens, e.g. --predict 256/64") from None
    if not slos:
        raise SpecError("--predict needs --slo, e.g. --slo ttft_p99=500ms,itl_p99=50ms")
    if cell[0] < 1 or cell[1] < 2:
        raise SpecError(f"--predict {predict}: give at least 1 prompt token and 2 output tokens (TPOT needs two), e.g. 256/64")
    return cell

