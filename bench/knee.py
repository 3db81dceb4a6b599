"""⑥ SLO attainment curve -> max sustainable load, per workload cell, from saved points only.

knee = the highest tested load that PASSes with every lower tested load also passing (repeats of one
load must all pass); its bracket is [knee, lowest failing load above it] — the search resolution. The
statistical confidence of the verdict at the knee is the attainment's Clopper-Pearson interval and the
p99's order-statistic interval, both reported. Binding SLO = the one nearest its threshold at the knee.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import CellSpec, WorkloadSpec
from bench.cost import KneeLoad
from bench.results import find_run_dirs, read_run, read_sweep_doc
from bench.summary import LaunchDoc, PointSummary, RunDoc, SteadyState
from bench.verdict import PASS, binding_slo, knee_rule, verdict
from bench.wire import SGLangInfo, SimInfo


def gpus_per_replica(run_doc: RunDoc | dict[str, Any]) -> tuple[float | None, str]:
    """GPUs per replica (G in $/M) and where it came from: the run's `gpus` label; else the GPUs on which NVML
    saw a compute process during the run (environment.gpus[].compute_processes, a single replica on this
    host); else unknown (None) — never assumed 1, which would price a multi-GPU replica G times too low."""
    doc = run_doc if isinstance(run_doc, RunDoc) else RunDoc.model_validate(run_doc)
    lab = doc.labels.get("gpus")  # labels are the user's key=value pairs
    if lab not in (None, ""):
        try:
            g = float(lab)
        except ValueError:
            raise ValueError(f"{doc.run_id}: label gpus='{lab}' is not a number; label gpus=N (GPUs per replica)") from None
        if g > 0:
            return g, "label"
    busy = sum(1 for g in doc.environment.gpus if g.compute_processes)
    if busy:
        return float(busy), "nvml processes"
    return None, "unknown"


def readable_why(why: str) -> str:
    """Verdict reasons print an infinite SLO value (failures count as infinitely slow) as 'inf ms'."""
    return why.replace(" inf ms", " ∞ (failures)")


def serve_limits(doc: RunDoc) -> dict[str, float]:
    """The server's batch cap and KV size where it says them: the simulator's /version, SGLang's server info,
    or the serve config trilemma launched it with (vLLM flags)."""
    out: dict[str, float] = {}
    sim, info = doc.target.sim or SimInfo(), doc.target.server_info or SGLangInfo()
    launch = doc.point.target.launch if doc.point is not None and doc.point.target.launch is not None else LaunchDoc()
    flags = launch.flags
    for key, value in (("batch_cap", sim.max_num_seqs), ("batch_cap", info.max_running_requests), ("batch_cap", flags.max_num_seqs),
                       ("chunk_budget", sim.max_num_batched_tokens), ("chunk_budget", info.chunked_prefill_size),
                       ("chunk_budget", flags.max_num_batched_tokens),
                       ("kv_tokens", sim.kv_capacity_tokens), ("kv_tokens", info.max_total_num_tokens)):
        if key not in out and isinstance(value, (int, float, str)) and str(value).replace(".", "", 1).isdigit():
            out[key] = float(value)
    return out


def bottleneck(at_knee: PointSummary, above: PointSummary | None, binding: str | None,
               limits: dict[str, float]) -> tuple[str, str, str]:
    """What binds the knee: (mechanism, evidence, what would move it). Read from the first failing load above
    the knee (what broke) against the knee itself, with the server's own engine state where it was scraped."""
    if above is None:
        return "not reached", "every tested load passed", "test higher loads"
    failed = binding_slo(above) or binding  # the SLO that broke at the failing load
    metric = (failed or "").split("_p")[0]
    srv = above.server
    lag = above.latency("send_lag")
    queued = (above.server is not None and bool(above.server.waiting_max)) or above.saturation.saturated
    # a client that fell behind binds only where the engine shows no queue: a queue is the server's own limit
    if not queued and any(w.code in ("client_stalls", "send_lag", "worker_died") for w in above.warnings):
        return ("client", f"the client fell behind at the failing load (send lag p99 "
                          f"{lag.p99 if lag is not None and lag.p99 is not None else float('nan'):.1f} ms)",
                "more client processes (--workers) or hosts (--ray)")
    if srv is None:  # no engine state scraped: only the delivered rate can say whether a queue built
        if above.saturation.saturated:
            return ("queueing (engine throughput)", "the server delivered less than was offered at the failing load "
                    "(saturation test); no server metrics to say whether the batch cap or KV bound it",
                    "a faster engine or more replicas; scrape the server's /metrics to see which limit binds")
        return ("undetermined", f"{failed or 'an SLO'} failed with no server metrics and no saturation",
                "scrape the server's /metrics (on by default; not --no-server-metrics)")
    cap = limits.get("batch_cap")
    waiting = srv.waiting_max if srv is not None else None
    running = srv.running_mean if srv is not None else None
    kv = srv.kv_usage_max if srv is not None else None

    def fmt(x: float | None, n: int = 1) -> str:
        return "?" if x is None else f"{x:.{n}f}"

    if waiting:
        if cap and running is not None and running >= 0.9 * cap:
            return ("batch cap", f"{fmt(running)} of max_num_seqs {cap:g} running on average, up to {fmt(waiting, 0)} waiting "
                                 "at the failing load", "raise max_num_seqs (the KV cache has room) or add replicas")
        if kv is not None and kv >= 0.9:
            return ("KV capacity", f"KV cache {100 * kv:.0f}% full, up to {fmt(waiting, 0)} waiting at the failing load",
                    "more KV memory (gpu-memory-utilization, FP8 KV cache, shorter max_model_len) or more GPUs per replica")
        return ("queueing (engine throughput)", f"up to {fmt(waiting, 0)} requests waiting at the failing load "
                f"({fmt(running)} running on average, below the batch cap), {metric or 'latency'} grows with the queue",
                "a faster engine step (GPU, quantisation) or more replicas")
    ttft, itl = above.latency("ttft"), above.latency("itl")
    if metric in ("itl", "tpot") and itl is not None and itl.p50 and itl.p99 and itl.p99 >= 2 * itl.p50:
        return ("prefill interference in ITL", f"ITL p99 {itl.p99:.1f} ms vs p50 {itl.p50:.1f} ms at the failing load: steps that "
                "carry a prompt chunk stretch the decodes riding in them; no queue",
                "a smaller chunk budget (max_num_batched_tokens: lower ITL p99, higher TTFT), disaggregated prefill, or a "
                "per-request TPOT SLO instead of a pooled ITL p99")
    if metric in ("itl", "tpot", "e2e"):
        return ("decode step time", f"ITL p50 {fmt(itl.p50 if itl else None)} ms at the failing load vs "
                f"{fmt((at_knee.latency('itl') or itl).p50 if itl else None)} ms at the knee: the batch's weight and "
                f"KV reads ({fmt(running)} running); no queue", "a GPU with more memory bandwidth, quantised weights or KV, "
                "or fewer sequences per replica")
    if metric == "ttft":
        return ("prefill time", f"TTFT p50 {fmt(ttft.p50 if ttft else None)} ms with no queue: long prompts or small prefill "
                "chunks", "a larger chunk budget, prefix caching, or a faster GPU")
    return ("undetermined", "no server state or binding SLO to attribute", "scrape the server's /metrics (--server-metrics)")


def point_row(run_dir: Path, doc: RunDoc) -> dict[str, Any]:
    s = doc.summary or PointSummary()
    pt = doc.point
    w = doc.spec.workload
    value: float | None
    base_cell = ""
    if pt is not None:
        cell = pt.cell_label or CellSpec(**pt.cell).label()
        base_cell = CellSpec(**pt.cell).label() if pt.cell else cell
        mode, value = pt.mode, pt.value
    else:
        cell = WorkloadSpec(**w.model_dump(include={"isl", "osl", "dataset", "prefix_tokens", "prefix_groups"}, exclude_unset=True)).label()
        mode, value = doc.spec.load_point()
    tgt, e, ss = doc.target, s.energy, s.steady_state or SteadyState()
    sweep = run_dir.parent.parent.name if run_dir.parent.name == "points" else run_dir.name
    gpus, gpus_source = gpus_per_replica(doc)
    lat = {f"{m}_{p}": s.lat(m, p) for m, ps in (("ttft", ("p50", "p90", "p99")), ("tpot", ("p50", "p90", "p99")),
                                                 ("itl", ("p50", "p90", "p99")), ("e2e", ("p50", "p99")), ("send_lag", ("p99",)))
           for p in ps}
    return {
        "sweep": sweep, "cell": cell, "base_cell": base_cell or cell, "serve_config": pt.serve_config() if pt else "",
        "mode": mode, "workload": w.key(), "load": value,
        "role": pt.role if pt else "run", "repeat": pt.repeat if pt else 0,
        "seed": doc.seed, "status": doc.status, "run_dir": str(run_dir),
        "gpu": doc.labels.get("gpu") or (tgt.sim.profile if tgt.sim else None) or "", "gpus": gpus if gpus is not None else math.nan,
        "gpus_source": gpus_source,
        "server_kind": tgt.server_kind, "server_version": tgt.server_version, "simulated": tgt.simulated,
        "model": tgt.model, "request_throughput": s.request_throughput, "output_tps": s.output_tps,
        "input_tps": s.input_tps, "total_tps": s.total_tps, "achieved_send_qps": s.achieved_send_qps, **lat,
        "attainment": s.attainment, "attainment_lo": s.attainment_ci[0], "attainment_hi": s.attainment_ci[1],
        "interactivity": s.interactivity_p50, "mean_in_flight": s.mean_in_flight, "n_measured": s.n_measured,
        "n_failed": s.n_failed, "saturated": s.saturation.saturated,
        "energy_j": e.energy_j, "j_per_output_token": e.j_per_output_token, "j_per_token": e.j_per_token,
        "avg_power_w": e.avg_power_w, "energy_source": e.source,
        "window_s": s.window_s, "warmup_s": s.probe.warmup_s, "stopped": s.probe.stopped,
        "window_lifetimes": ss.window_lifetimes, "keep_up_ratio": ss.keep_up.ratio,
        "prefix_hit_rate": s.prefix_cache.hit_rate, "throughput_estimator": s.throughput.estimator,
        # the server's own clocks (vLLM /metrics): engine TTFT, queue and prefill means over the window
        **{k: getattr(s.server, k, None) if s.server else None for k in ("server_ttft_mean_ms", "server_queue_mean_ms", "server_prefill_mean_ms")},
        "api": doc.spec.target.api, "harness": doc.harness.version,
        "slos": [str(x) for x in doc.slo_specs], "_summary": s, "_slos": doc.slo_specs, "_limits": serve_limits(doc),
    }


def current_points(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories under `paths`, less each sweep's points that its current spec did not measure or
    reuse (sweep.json `points`): after the SLOs, duration, target or cells are edited, the earlier spec's points
    stay on disk but never mix into the knee. Sweeps written before that list existed are read whole."""
    listed: dict[Path, set[str] | None] = {}

    def current(d: Path) -> bool:
        sweep = d.parent.parent
        if d.parent.name != "points" or not (sweep / "sweep.json").is_file():
            return True
        if sweep not in listed:
            sj = read_sweep_doc(sweep)
            pts = sj.points if sj is not None else None
            listed[sweep] = None if pts is None else set(pts)
        keep = listed[sweep]
        return keep is None or d.name in keep

    return [d for d in find_run_dirs(paths) if current(d)]


def load_points(paths: Sequence[str | Path], gpus_per_replica: float | None = None) -> pd.DataFrame:
    """One row per measured point (runs and sweep points) under the given result paths. `gpus_per_replica`
    (the --gpus-per-replica flag) fills in points whose run does not say it (label, NVML)."""
    rows = []
    for d in current_points(paths):
        doc = read_run(d, settled=True)  # a killed run: interrupted, its summary rebuilt from the saved requests
        if doc.superseded_by or doc.summary is None:
            continue
        # interrupted points are read and marked (never a PASS: the probe did not run as planned); failed ones are not
        if doc.status == "complete" or (doc.status == "interrupted" and doc.summary.n_measured):
            rows.append(point_row(d, doc))
    if not rows:
        raise FileNotFoundError(f"no completed or interrupted points with measured requests under {', '.join(map(str, paths))}; "
                                "run `trilemma run` or `trilemma sweep` first")
    df = pd.DataFrame(rows)
    if gpus_per_replica is not None:
        unknown = df["gpus"].isna()
        df.loc[unknown, "gpus"] = float(gpus_per_replica)
        df.loc[unknown, "gpus_source"] = "--gpus-per-replica"
    rules = {}
    for p in paths:
        sj = read_sweep_doc(Path(p))
        if sj is not None:
            rules[Path(p).name] = (sj.spec.attainment.rule, sj.spec.attainment.target)
    verdicts = [verdict(summ, slos, *rules.get(sw, ("percentile", 0.99))) if slos else ("PASS", "no SLOs")
                for summ, slos, sw in zip(df["_summary"], df["_slos"], df["sweep"])]
    # undecided (and client-unhealthy) points are neither PASS nor FAIL: never the knee, never its bound
    df["verdict"] = [v if v in ("PASS", "FAIL") else "UNDECIDED" for v, _ in verdicts]
    df["why"] = [readable_why(w) for _, w in verdicts]
    # interrupted: a decisive FAIL stands (early abort may stop any probe); a PASS needs the whole probe
    was_pass = (df["status"] == "interrupted") & (df["verdict"] == "PASS")
    df.loc[was_pass, "verdict"] = "UNDECIDED"
    df.loc[was_pass, "why"] = "interrupted before the probe ended — " + df.loc[was_pass, "why"]
    failed = (df["status"] == "interrupted") & (df["verdict"] == "FAIL")
    df.loc[failed, "why"] = "interrupted — " + df.loc[failed, "why"]
    df["binding_slo"] = [binding_slo(s) for s in df["_summary"]]
    return df


def _first_fail(g: pd.DataFrame, above: float | None) -> PointSummary | None:
    """The summary of a failing point at the bracket's upper load (the most measured one)."""
    if above is None:
        return None
    f = g[(g["load"] == above) & (g["verdict"] == "FAIL")].sort_values("n_measured")
    return f.iloc[-1]["_summary"] if len(f) else None


def interrupted_points(df: pd.DataFrame, why: bool = False) -> list[str]:
    """'sweep / cell at 5 req/s' for each interrupted point (with its verdict's reason if `why`)."""
    return [f"{r.sweep} / {r.cell} at {r.load:g} {'req/s' if r.mode == 'qps' else 'concurrent'}" + (f": {r.why}" if why else "")
            for r in df[df["status"] == "interrupted"].sort_values(["sweep", "cell", "load"]).itertuples()]


class KneeRow(KneeLoad):
    """One row of knee_table, typed for those who read it row by row (report, compare); its other columns kept."""

    sweep: str = ""
    cell: str = ""
    mode: str = "qps"
    gpu: str = ""
    feasible: bool = False
    knee: float | None = None
    bracket_hi: float | None = None
    note: str | None = None
    knee_run_dir: str | None = None
    cost_note: str | None = None


def knee_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, cell, mode): the knee, its bracket and the evidence behind it, and what the server
    delivers there. knee = highest load decided PASS (no FAIL, no undecided full probe), below the lowest
    load with a FAIL (bracket_hi); undecided loads in between are listed — the knee's real uncertainty."""
    out = []
    # a staged run is one schedule whose stages share a queue: no knee (its stages are reported as they are)
    for (sweep, cell, mode), g in df[(df["role"] != "baseline") & (df["mode"] != "stages")].groupby(["sweep", "cell", "mode"], sort=False):
        history: dict[float, list[tuple[str, bool]]] = {}  # a ladder screen is not a full probe, as in the search
        for x, v, role in zip(g["load"], g["verdict"], g["role"]):
            history.setdefault(float(x), []).append((v, role != "ladder"))
        knee, above, undecided = knee_rule(history)
        row = {"sweep": sweep, "cell": cell, "base_cell": g["base_cell"].iloc[0], "serve_config": g["serve_config"].iloc[0],
               "mode": mode, "gpu": g["gpu"].iloc[0], "gpus": g["gpus"].iloc[0],
               "gpus_source": g["gpus_source"].iloc[0],
               "simulated": bool(g["simulated"].any()), "points": len(g), "slos": ", ".join(g["slos"].iloc[0]),
               "undecided_loads": ", ".join(f"{x:g}" for x in undecided),
               "interrupted_loads": ", ".join(f"{x:g}" for x in sorted(set(g.loc[g["status"] == "interrupted", "load"])))}
        und = [f"undecided between: {row['undecided_loads']} {mode}"] if undecided else []  # the note's later sentences
        # "[2.2, 2.6]" bracketed by a failure; "[2.2, 2.4?]" only by an undecided load; "[2.2, >]" nothing above failed or was in doubt
        row["bracket"] = (f"[{knee:.3g}, {above:.3g}]" if above is not None else
                          f"[{knee:.3g}, {min(undecided):.3g}?]" if undecided else f"[{knee:.3g}, >]") if knee is not None else ""
        if row["interrupted_loads"]:
            und.append(f"INTERRUPTED points (read as measured, never a pass): {row['interrupted_loads']} {mode}")
        if knee is None:
            first = g.sort_values("load").iloc[0]
            row.update(feasible=False, knee=None, bracket_hi=above,
                       note="; ".join([f"no tested load was decided PASS (lowest, {first['load']:g} {mode}: {first['why']})", *und]))
            out.append(row)
            continue
        k = g[(g["load"] == knee) & (g["verdict"] == PASS)].sort_values("n_measured").iloc[-1]
        # no load failed but loads above the knee stayed undecided: the search found trouble there (an undecided full
        # probe bounds it like a failure) without deciding it, so the knee is neither bracketed nor "not reached"
        open_above = [x for x in undecided if x > knee] if above is None else []
        if open_above:  # the mechanism read at the highest undecided load, where the trouble shows most; said to be undecided
            u = g[g["load"] == open_above[-1]].sort_values("n_measured").iloc[-1]
            mech, ev, rem = bottleneck(k["_summary"], u["_summary"], k["binding_slo"], k["_limits"])
            longer = "longer probes (probe.max_duration_s) or more requests per probe, to decide the loads above the knee"
            if mech in ("undetermined", "not reached"):
                binds = ("undecided above the knee", f"no tested load failed; {', '.join(f'{x:g}' for x in open_above)} {mode} "
                                                     f"stayed undecided (at {open_above[-1]:g}: {u['why']})", longer)
            else:
                binds = (f"{mech} (leaning: no load failed)",
                         f"at {open_above[-1]:g} {mode}, undecided ({u['why']}): {ev.replace('at the failing load', 'there')}",
                         f"{rem}; {longer}")
        else:
            binds = bottleneck(k["_summary"], _first_fail(g, above), k["binding_slo"], k["_limits"])
        row.update(feasible=True, knee=knee, bracket_hi=above, knee_qps=k["request_throughput"],
                   knee_concurrency=k["mean_in_flight"], binding_slo=k["binding_slo"], output_tps=k["output_tps"],
                   input_tps=k["input_tps"], total_tps=k["total_tps"], output_tps_per_gpu=k["output_tps"] / k["gpus"],
                   interactivity=k["interactivity"], ttft_p99=k["ttft_p99"], itl_p99=k["itl_p99"], tpot_p50=k["tpot_p50"],
                   attainment=k["attainment"], attainment_lo=k["attainment_lo"], attainment_hi=k["attainment_hi"],
                   j_per_output_token=k["j_per_output_token"], j_per_token=k["j_per_token"], avg_power_w=k["avg_power_w"],
                   energy_source=k["energy_source"], knee_run_dir=k["run_dir"], knee_samples=k["n_measured"],
                   knee_window_s=k["window_s"], knee_warmup_s=k["warmup_s"], knee_window_lifetimes=k["window_lifetimes"],
                   knee_keep_up=k["keep_up_ratio"], knee_prefix_hit_rate=k["prefix_hit_rate"], knee_evidence=k["why"],
                   **dict(zip(("bottleneck", "bottleneck_evidence", "bottleneck_remedy"), binds)),
                   note="; ".join(filter(None, ["" if above is not None else
                                                f"no load failed and {', '.join(f'{x:g}' for x in open_above)} {mode} stayed undecided: "
                                                f"the knee is at least {knee:g}, where it ends is not decided" if open_above else
                                                "every tested load passed: the knee is above the highest load tested",
                                                *([] if open_above else und)])))
        out.append(row)
    # the columns every row has, also when no cell has a knee table (staged runs only)
    return pd.DataFrame(out, columns=None if out else ["sweep", "cell", "base_cell", "serve_config", "mode", "gpu", "gpus", "gpus_source",
                                                       "simulated", "points", "slos", "undecided_loads", "interrupted_loads", "feasible",
                                                       "knee", "bracket_hi", "bracket", "note"])


def stage_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per stage of every staged (or ramped) point: the rate asked for and realised, requests sent
    and completed, and the latency of that stage's measured requests."""
    rows = []
    for r in df.sort_values(["sweep", "cell", "repeat"]).to_dict("records"):
        for st in r["_summary"].per_stage:
            rows.append({"sweep": r["sweep"], "cell": r["cell"], "repeat": r["repeat"], "stage": st.stage,
                         "start_s": st.start_s, "duration_s": st.duration_s, "qps": st.rate, "expected": st.expected_requests,
                         "sent": st.sent, "realised_qps": st.realised_qps, "measured": st.measured, "ok": st.ok,
                         "ttft_p50": st.ttft.p50, "ttft_p99": st.ttft.p99, "e2e_p50": st.e2e.p50, "e2e_p99": st.e2e.p99})
    return rows


def write_knee(df_points: pd.DataFrame, knees: pd.DataFrame, out_dir: Path, stages: list[dict[str, Any]] | None = None) -> list[Path]:
    """knee.csv/.parquet, points.csv and, for staged points, stages.csv (stage_rows) under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pts = df_points.drop(columns=[c for c in df_points.columns if c.startswith("_")])
    pts = pts.assign(slos=pts["slos"].map(", ".join))
    paths = [out_dir / "knee.csv", out_dir / "knee.parquet", out_dir / "points.csv"]
    knees.to_csv(paths[0], index=False)
    knees.to_parquet(paths[1], index=False)
    pts.to_csv(paths[2], index=False)
    if stages:
        paths.append(out_dir / "stages.csv")
        pd.DataFrame(stages).to_csv(paths[-1], index=False)
    return paths


def fmt(x: Any, nd: int = 1) -> str:
    """A number for a table: '—' when missing, '∞ (failures)' when infinite (an SLO percentile reaching failed requests)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞ (failures)" if x > 0 else "−∞"
    return f"{x:,.{nd}f}"
