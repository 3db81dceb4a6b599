"""The `trilemma` command. Each command parses options, builds a spec, and calls one library function.
Heavy imports stay inside the commands so `--help` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, NoReturn, Optional

import typer

if TYPE_CHECKING:
    from bench.cost import CostModel
    from bench.summary import RunDoc

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark LLM serving engines; find the SLO knee; price the tokens.")


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit", is_eager=True)) -> None:
    if version:
        from bench._version import __version__

        typer.echo(f"trilemma {__version__}")
        raise typer.Exit()


def fail(msg: str, code: int = 2) -> NoReturn:
    """One line on stderr, no traceback."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            fail(f"--label '{it}': write KEY=VALUE, e.g. gpu=h100")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _out_dir(out: Path, flag: str = "--out") -> Path:
    """A results root must be a directory (created if missing)."""
    if out.exists() and not out.is_dir():
        fail(f"{flag} {out}: this is a file; give a directory for the results, e.g. {flag} results")
    return out


def _run_name(name: str | None) -> str | None:
    """--name becomes one folder under --out: no path separators, no '..'."""
    import re

    if name is not None and (not re.fullmatch(r"[A-Za-z0-9._=+-]+", name) or set(name) == {"."}):
        fail(f"--name '{name}': use letters, digits and . _ - = + only (it names one folder under --out), e.g. --name h100-qps8")
    return name


def _user_errors(fn):
    """Turn user-facing exceptions into one-line errors."""
    import functools

    @functools.wraps(fn)
    def wrap(*a, **kw):
        from pydantic import ValidationError

        from bench.config import SpecError, validation_message
        from bench.runner import RunFailed

        try:
            return fn(*a, **kw)
        except SpecError as e:
            fail(str(e))
        except ValidationError as e:
            fail(validation_message(e))
        except RunFailed as e:
            fail(str(e), 1)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted (Ctrl-C)", 130)
    return wrap


@app.command()
@_user_errors
def run(
    url: List[str] = typer.Option(["http://127.0.0.1:8000"], help="Base URL of an OpenAI-compatible server; repeat it for "
                                  "several replicas measured as one system (each request goes to one, see --spread)"),
    spread: str = typer.Option("least", help="Several --url: send each request to the replica with the fewest in flight "
                               "(least) or to each in turn (round-robin); a conversation stays on its first turn's replica"),
    model: Optional[str] = typer.Option(None, help="Model name (default: the only one in /v1/models), or a mix: base=0.7,lora-a=0.3 "
                                        "(each request, or conversation, draws one name by weight from --seed)"),
    api: str = typer.Option("completions", help="completions | chat"),
    api_key: Optional[str] = typer.Option(None, envvar="TRILEMMA_API_KEY", show_default=False,
                                          help="API key (or env TRILEMMA_API_KEY / OPENAI_API_KEY); never stored"),
    tokenizer: Optional[str] = typer.Option(None, help="Local HF tokenizer dir/tokenizer.json (default: the server's /tokenize)"),
    isl: str = typer.Option("128", help="Input length: N, uniform:LO:HI, normal:MEAN:SD, lognormal:MEAN:SD, trace:NAME"),
    osl: str = typer.Option("64", help="Output length (same forms)"),
    prefix_tokens: int = typer.Option(0, help="Shared prefix length P (with --prefix-groups)"),
    prefix_groups: int = typer.Option(0, help="Number G of distinct shared prefixes"),
    dataset: Optional[str] = typer.Option(None, help="Trace or dataset (see README: azure-conv, azure-code, mooncake, sonnet, mt-bench, "
                                          "file:PATH, or your trace as mooncake:PATH, azure:PATH, burstgpt:PATH)"),
    qps: Optional[float] = typer.Option(None, help="Open loop: request rate (req/s)"),
    stages: Optional[str] = typer.Option(None, help="Open loop in stages: QPS:SECONDS,... in order (e.g. 2:60,8:60); replaces --qps and --duration"),
    think_time: float = typer.Option(0.0, min=0, help="Conversations (mt-bench, sharegpt:PATH, chat:PATH): seconds between an answer and the next turn"),
    max_think_time: float = typer.Option(60.0, min=0.001, help="Conversations with turn timestamps: the trace's own pauses are cut to this (s)"),
    ramp_up: float = typer.Option(0.0, help="Open loop: grow the rate linearly from 0 over this many seconds first (sent as warmup)"),
    concurrency: Optional[int] = typer.Option(None, help="Closed loop: concurrent requests"),
    arrival: str = typer.Option("poisson", help="poisson | constant | gamma:CV"),
    max_concurrency: Optional[int] = typer.Option(None, help="Cap in-flight requests in an open loop (default 4096; past the cap "
                                                  "requests wait at the client, their latencies still counted from the schedule)"),
    duration: Optional[float] = typer.Option(None, help="Measured seconds (after warmup)"),
    requests: Optional[int] = typer.Option(None, help="Measured requests (after warmup)"),
    warmup: str = typer.Option("0", help="Warmup: seconds (10s) or requests (20r); kept in records, flagged"),
    slo: Optional[str] = typer.Option(None, help="SLOs, e.g. ttft_p99=500ms,itl_p99=50ms, or a preset (mlperf-llama3.1-8b)"),
    seed: int = typer.Option(0, help="Seed for lengths, prompts and arrivals"),
    label: Optional[List[str]] = typer.Option(None, help="KEY=VALUE labels (repeatable), e.g. gpu=h100"),
    out: Path = typer.Option(Path("results"), help="Results directory"),
    name: Optional[str] = typer.Option(None, help="Run id (default: timestamp + workload + load)"),
    ignore_eos: bool = typer.Option(True, help="Force the output length (ignore_eos; vLLM/SGLang extension)"),
    continuous_usage: bool = typer.Option(True, help="Ask for usage on every chunk (vLLM/SGLang continuous_usage_stats)"),
    request: Optional[str] = typer.Option(None, help="Body fields added to every request, as JSON: '{\"temperature\": 0.7, \"top_p\": 0.9, "
                                          "\"seed\": 1, \"stop\": [\"###\"]}' (response_format, tools, ... alike)"),
    header: Optional[List[str]] = typer.Option(None, help="Extra HTTP header 'NAME: VALUE' (repeatable); values are never written to results"),
    launch: Optional[str] = typer.Option(None, help="Start the server for this run and stop it after: a command with {port}, e.g. "
                                         "'vllm serve MODEL --port {port}' (its log and exact command are kept in the run directory)"),
    launch_timeout: float = typer.Option(900.0, help="With --launch: seconds to wait for the server to answer /v1/models"),
    timeout: float = typer.Option(600.0, help="Idle-read timeout (s): a request fails when no byte of its response arrives for this long "
                                                "(a slow but steadily streaming request is never cut)"),
    max_model_len: Optional[int] = typer.Option(None, help="Clip ISL+OSL to this (default: from the server)"),
    speedup: float = typer.Option(1.0, help="Trace replay: time scaling (2 = same shape, twice the rate)"),
    window: Optional[str] = typer.Option(None, help="Trace replay: START:END seconds of the trace, e.g. 0:120"),
    columns: Optional[str] = typer.Option(None, help="--dataset file:PATH: map the file's columns, e.g. prompt=question,output_tokens=n "
                                          "(fields: prompt, messages, input_tokens, output_tokens, timestamp)"),
    gpu_telemetry: str = typer.Option("auto", help="auto | off | nvml | dcgm:URL"),
    gpus: str = typer.Option("all", help="GPUs to sample (NVML): all or 0,1"),
    server_metrics: bool = typer.Option(True, help="Scrape the server's /metrics during the run"),
    reset_prefix_cache: bool = typer.Option(True, help="Reset the server's prefix cache before the run (vLLM /reset_prefix_cache, "
                                            "SGLang /flush_cache), so no earlier run's prompts are served from cache"),
    until_decided: bool = typer.Option(False, help="With --slo and --duration: keep measuring until every SLO is decided "
                                       "(its percentile's interval clears the threshold) or --max-duration; warmup and window "
                                       "grow to cover several request lifetimes"),
    max_duration: Optional[float] = typer.Option(None, help="With --until-decided: longest window in seconds (default 4x --duration, >= 120)"),
    workers: str = typer.Option("1", help="Client processes that send and read the streams: N, or auto (from the expected chunk "
                                "rate and this host's calibrated safe rate per process); one schedule, one result"),
    ray: Optional[str] = typer.Option(None, help="Send from actors on a Ray cluster (pip install 'trilemma[ray]'): its address "
                                      "(ray://HOST:10001 or HOST:6379), auto (this node's cluster), or local; --workers N actors "
                                      "spread over its nodes (auto: one per node)"),
) -> None:
    """Measure one load point against a server and write results/<run-id>/."""
    from bench.config import RunSpec
    from bench.report.console import print_summary
    from bench.runner import env_api_key

    spec = RunSpec.from_options(
        url=url, model=model, api=api, tokenizer=tokenizer, ignore_eos=ignore_eos, continuous_usage=continuous_usage, timeout=timeout,
        isl=isl, osl=osl, prefix_tokens=prefix_tokens, prefix_groups=prefix_groups, dataset=dataset, max_model_len=max_model_len,
        speedup=speedup, window=window, columns=columns, qps=qps, concurrency=concurrency, arrival=arrival, max_concurrency=max_concurrency,
        duration=duration, requests=requests, warmup=warmup, stages=stages, ramp_up=ramp_up, think_time=think_time,
        max_think_time=max_think_time, slo=slo, seed=seed, labels=_labels(label),
        reset_prefix_cache=reset_prefix_cache, server_metrics=server_metrics, gpu_telemetry=gpu_telemetry,
        until_decided=until_decided, max_duration=max_duration, request=request, headers=header, workers=workers, spread=spread, ray=ray)
    out_dir, run_name = _out_dir(out), _run_name(name)
    if launch is None:
        doc = run_one(spec, out_dir, run_name, env_api_key(spec, api_key), gpus)
    else:
        if len(url) > 1:
            fail("--launch starts one server and measures it: give no --url (or one), not several")
        doc = _run_launched(spec, launch, launch_timeout, out_dir, run_name, api_key, gpus)
    print_summary(doc)
    if doc.status == "failed":
        fail(doc.error or "the run failed; see run.json", 1)
    if doc.status == "interrupted":
        raise typer.Exit(130)


def _run_launched(spec, launch: str, timeout_s: float, out_dir: Path, run_name: str | None, api_key: str | None, gpus: str) -> RunDoc:
    """`run --launch CMD`: start the server, measure the point against it, stop it (its command and log in the run directory)."""
    from pydantic import ValidationError

    from bench.config import LaunchSpec, validation_message
    from bench.launch import LaunchedServer, LaunchError
    from bench.results import new_run_id
    from bench.runner import env_api_key

    run_dir = out_dir / (run_name or new_run_id(spec))
    try:
        server = LaunchedServer(LaunchSpec(cmd=launch, startup_timeout_s=timeout_s), {}, run_dir)
    except ValidationError as e:
        fail(f"--launch: {validation_message(e)}")
    typer.echo(f"starting the server: {launch}", err=True)
    try:
        spec = spec.model_copy(update={"target": spec.target.model_copy(update={"url": server.start()})})
        return run_one(spec, out_dir, run_dir.name, env_api_key(spec, api_key), gpus, extra={"launch": server.record()})
    except LaunchError as e:
        fail(f"--launch: {e}", 1)
    finally:
        server.stop()


def run_one(spec, out: Path, name: str | None, api_key: str | None, gpus: str = "all", extra: dict | None = None) -> RunDoc:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.results import new_run_id
    from bench.runner import execute_run
    from bench.summary import RunDoc
    from bench.telemetry import telemetry_for

    run_dir = out / (name or new_run_id(spec))
    tel = telemetry_for(spec, gpus, api_key)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("failed {task.fields[failed]}"),
                  TimeElapsedColumn(), transient=True, console=None, refresh_per_second=2, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(run_dir.name, total=None, failed=0)

        def on_progress(p):
            bar.update(task, completed=p.done, total=p.planned, failed=p.failed)

        doc = execute_run(spec, run_dir, api_key, on_progress, tel, extra=extra)
    typer.echo(f"results: {run_dir}", err=True)
    return RunDoc.model_validate(doc)



sim_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                      help="The built-in SIMULATED server (continuous-batching engine model): serve it (default), "
                           "--validate its profiles against published measurements, or `fit` a profile to a real server.")
app.add_typer(sim_app, name="sim")


@sim_app.callback(invoke_without_command=True)
@_user_errors
def sim(
    ctx: typer.Context,
    validate: bool = typer.Option(False, "--validate", help="Run every published data point (bench/sim/validation.yaml) in "
                                  "virtual time and print predicted vs published; exit 1 when one is outside its tolerance"),
    profile: str = typer.Option("h100-llama3-8b", help="Profile name (bench/sim/profiles) or YAML path"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    model: Optional[str] = typer.Option(None, help="Served model name (default: the profile's); several as a,b (all are listed and accepted)"),
    deterministic: bool = typer.Option(False, help="Calibration mode: fixed seeded timing with ground-truth timestamps"),
    seed: int = typer.Option(0),
    slowdown: float = typer.Option(1.0, help="Multiply every engine step time (1.1 = a 10% slower engine)"),
    error_rate: float = typer.Option(0.0, help="Fraction of requests answered with an HTTP error (--error-status)"),
    error_status: int = typer.Option(500, help="The HTTP status those requests get: 500, 503, 429 (rate limited), ..."),
    cut_rate: float = typer.Option(0.0, help="Fraction of streams cut mid-response"),
    delay_ms: float = typer.Option(0.0, help="Added before each request reaches the engine: TTFT and E2E rise by it, ITL not "
                                             "(a slower API front end)"),
) -> None:
    """Run the built-in SIMULATED server (continuous-batching engine model) — demo target and test server."""
    if ctx.invoked_subcommand is not None:
        return
    if validate:
        from bench.sim.validate import print_validation, run_validation

        rows = run_validation()
        print_validation(rows)
        raise typer.Exit(0 if all(r.ok for r in rows) else 1)
    from bench.sim.engine import load_profile
    from bench.sim.server import serve

    if not 1 <= port <= 65535:
        fail(f"--port {port}: give a TCP port between 1 and 65535, e.g. --port 8000")
    for flag, v, hi in (("--error-rate", error_rate, 1.0), ("--cut-rate", cut_rate, 1.0), ("--delay-ms", delay_ms, 6e5)):
        if not 0 <= v <= hi:
            fail(f"{flag} {v:g}: give a value between 0 and {hi:g}")
    if not 400 <= error_status <= 599:
        fail(f"--error-status {error_status}: give an HTTP error status between 400 and 599, e.g. 500 or 429")
    prof = load_profile(profile, slowdown)
    try:
        serve(prof, host, port, model=model, deterministic=deterministic, seed=seed, error_rate=error_rate, cut_rate=cut_rate, delay_ms=delay_ms,
              error_status=error_status)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}; pick a free port with --port")


@sim_app.command("fit")
@_user_errors
def sim_fit(
    results: List[Path] = typer.Argument(..., help="Measured sweep or run directories of a real server (fixed ISL/OSL cells)"),
    base: str = typer.Option(..., "--base", help="Profile to start from: the model's shape and the serve config "
                             "(max_num_seqs, max_num_batched_tokens, KV size) — a name in bench/sim/profiles or a YAML path"),
    out: Path = typer.Option(Path("fitted.yaml"), "--out", help="Where to write the fitted profile"),
    predict: Optional[str] = typer.Option(None, help="Also predict the knee of a cell: ISL/OSL, e.g. 256/64"),
    slo: Optional[str] = typer.Option(None, help="SLOs of the predicted knee, e.g. ttft_p99=500ms,itl_p99=50ms"),
) -> None:
    """Fit a profile's step-time coefficients to measured probes; the fitted profile states its fit error.
    Then `trilemma sweep` with `target: {sim: {profile: fitted.yaml}}` predicts other cells and SLOs."""
    from bench.config import parse_slos
    from bench.sim.engine import load_profile
    from bench.simfit import fit, parse_predict, predict_knee, print_fit, print_predicted_knee, probes_batch, probes_from_results

    for r in results:
        if not r.exists():
            fail(f"{r}: no such results directory; give a `trilemma sweep` output, e.g. results/<sweep>")
    slos = parse_slos(slo) if slo else []
    cell = parse_predict(predict, slos)
    if out.is_dir() or not out.parent.is_dir():
        fail(f"--out {out}: give a file path in an existing directory, e.g. --out fitted.yaml")
    probes = probes_from_results(results)
    res = fit(load_profile(base), probes)
    try:
        res.to_yaml(out, ", ".join(map(str, results)))
    except OSError as e:
        fail(f"--out {out}: cannot write the fitted profile ({e.strerror or e})")
    print_fit(res, out)
    if cell is not None:
        knee, at = predict_knee(res.profile, cell[0], cell[1], slos)
        print_predicted_knee(cell, slos, knee, at, probes_batch(res.profile, probes))


@app.command()
@_user_errors
def calibrate(
    rates: str = typer.Option("25,50,100,200,400", help="Comma-separated request rates to test"),
    isl: int = typer.Option(64), osl: int = typer.Option(32),
    duration: float = typer.Option(10.0, help="Seconds per rate"),
    repeats: int = typer.Option(1, help="Repeat the whole ladder; medians are printed"),
    seed: int = typer.Option(0),
    workers: str = typer.Option("1", help="Client processes, or a list to measure scaling: 1,2,4,8 (a table of the safe rate "
                                "per count and its efficiency against one process)"),
    sims: int = typer.Option(1, help="Simulator processes behind the client (requests spread to the least loaded): one "
                             "simulator is one event loop, so measure scaling with several, each on a core of its own"),
) -> None:
    """Measure this client's timing bias against the simulator's ground truth; print the safe rate range.
    With one process, the safe chunk rate (safe req/s × OSL) is cached for this host: `--workers auto` reads it."""
    from rich.console import Console

    from bench.calibrate import parse_ladder

    rs, counts = parse_ladder(rates, workers, sims)
    con = Console(width=max(150, Console().width))
    safe_by: dict[int, float | None] = {}
    for n_w in counts:
        safe_by[n_w] = _calibrate_ladder(con, rs, isl, osl, duration, repeats, seed, n_w, sims)
    one = safe_by.get(1)
    if one and one < max(rs):  # a real limit, not the ladder's top (which only bounds it from below)
        from bench.workers import save_safe_rate

        save_safe_rate(one * osl, {"isl": isl, "osl": osl, "duration_s": duration, "safe_qps": one})
    if len(counts) > 1:
        from bench.calibrate import scaling_table
        from bench.report.console import print_scaling

        print_scaling(con, scaling_table(safe_by, osl, max(rs)), max(rs))


def _calibrate_ladder(con, rs: list[float], isl: int, osl: int, duration: float, repeats: int, seed: int, n_w: int,
                      sims: int = 1) -> float | None:
    """One calibration ladder with `n_w` client processes: its table, and the safe rate it found."""
    from bench.calibrate import calibrate as run_cal
    from bench.calibrate import median_rows, safe_rate
    from bench.report.console import print_calibration

    runs = []
    for k in range(repeats):
        runs.append(run_cal(rs, isl, osl, duration, seed + 1000 * k, workers=n_w, sims=sims,
                            on_row=lambda r: con.print(f"[dim]{r['offered_qps']:g} req/s: TTFT bias p50 {r['ttft_bias_p50']:.3f} ms[/]")))
    rows = median_rows(runs)
    safe = safe_rate(rows)
    print_calibration(con, rows, safe, f"client calibration vs simulator ground truth (ISL {isl}, OSL {osl}, Poisson, {duration:g} s/rate, "
                                       f"median of {repeats}, {n_w} client process{'es' if n_w > 1 else ''}"
                                       f"{f', {sims} simulators' if sims > 1 else ''})")
    return safe


@app.command()
@_user_errors
def sweep(
    spec_file: Path = typer.Argument(..., help="Sweep spec (YAML), e.g. sweeps/demo.yaml"),
    out: Path = typer.Option(Path("results"), help="Results root; the sweep writes <out>/<name>/"),
    api_key: Optional[str] = typer.Option(None, envvar="TRILEMMA_API_KEY", help="API key (never stored)", show_default=False),
    url: Optional[List[str]] = typer.Option(None, help="Override the spec's target URL (repeat it for several replicas)"),
    plots: bool = typer.Option(True, help="Write the knee plots when the sweep ends (`trilemma knee` or `report` can draw them later)"),
    workers: Optional[str] = typer.Option(None, help="Client processes per point: N or auto (overrides the spec's `workers`)"),
    ray: Optional[str] = typer.Option(None, help="The points' client workers on a Ray cluster: address, auto or local (overrides `ray`)"),
) -> None:
    """Run a sweep (grid or load: auto knee search); finished points are saved and skipped on rerun."""
    import os

    from rich.console import Console

    from bench.config import load_sweep_spec
    from bench.report.console import SweepProgress
    from bench.sim.launch import start_sim
    from bench.sweep import SweepRunner

    _out_dir(out)
    spec = load_sweep_spec(spec_file).with_overrides(url=url, workers=workers, ray=ray)
    key = api_key or os.environ.get(spec.target.api_key_env)
    con = Console(stderr=True)
    res = SweepRunner(spec, out, key, SweepProgress(con), start_sim=start_sim).run()
    con.print(f"sweep {spec.name}: {res['status']} — {res['measured']} points measured, {res['skipped']} reused from disk — {res['dir']}")
    if res["status"] == "interrupted":
        con.print("stopped; run the same command again to resume (finished points are kept)")
        raise typer.Exit(130)
    if res["status"] == "failed":  # a serve config could not be measured: the knee covers the others only
        con.print(f"[red]error:[/] sweep {spec.name} failed: {res['error']}")
        try:
            knee_cmd([res["dir"]], plots=plots)
        except FileNotFoundError:
            con.print("no point was measured, so there is no knee")
        raise typer.Exit(1)
    knee_cmd([res["dir"]], plots=plots)


def knee_cmd(results: list[Path], plots: bool = True, gpus_per_replica: float | None = None) -> None:
    from rich.console import Console

    from bench.knee import knee_table, load_points, stage_rows, write_knee
    from bench.report.console import print_knees

    df = load_points(results, gpus_per_replica)
    knees, stages = knee_table(df), stage_rows(df)
    out_dir = (results[0] if len(results) == 1 else Path("results")) / "knee"
    files = write_knee(df, knees, out_dir, stages)
    con = Console(width=max(160, Console().width))
    print_knees(con, df, knees, stages)
    if plots and not knees.empty:
        from bench.report.plots import plot_all

        files += plot_all(df, knees, out_dir, {s.name: s.threshold_ms for lst in df["_slos"] for s in lst})
    con.print(f"[dim]written: {', '.join(str(f) for f in files)}[/]")


@app.command()
@_user_errors
def knee(
    results: List[Path] = typer.Argument(..., help="Sweep or run result directories"),
    plots: bool = typer.Option(True, help="Write PNG/SVG knee plots"),
    gpus_per_replica: Optional[float] = typer.Option(None, min=1, help="GPUs per replica for runs that do not record it (label gpus=N)"),
) -> None:
    """Per workload cell: the highest load meeting the SLOs, its bracket, and the throughput there."""
    knee_cmd(results, plots, gpus_per_replica)



def _cost_model(cost_file: Path | None, **over) -> CostModel:
    from bench.config import load_yaml
    from bench.cost import CostModel

    data = load_yaml(cost_file) if cost_file else {}
    data.update({k: v for k, v in over.items() if v is not None})
    return CostModel(**data)


@app.command()
@_user_errors
def report(
    results: List[Path] = typer.Argument(..., help="Sweep or run result directories (two or more sweeps: compared)"),
    name: Optional[str] = typer.Option(None, help="Report name (reports/<name>/)"),
    out: Path = typer.Option(Path("reports")),
    cost: Optional[Path] = typer.Option(None, help="Cost model YAML (pricing, utilization, usd_per_kwh, pue, peak_qps, hourly_qps, ...)"),
    catalog: Optional[Path] = typer.Option(None, help="GPU price catalog YAML (default: the shipped example catalog)"),
    pricing: Optional[str] = typer.Option(None, help="on_demand | reserved | spot | owned"),
    utilization: Optional[float] = typer.Option(None, help="Share of knee throughput actually sold (0-1)"),
    peak_qps: Optional[float] = typer.Option(None, help="Peak traffic (req/s) for replica sizing"),
    gpus_per_replica: Optional[float] = typer.Option(None, min=1, help="GPUs per replica for runs that do not record it (label gpus=N)"),
) -> None:
    """Write reports/<name>/index.html (self-contained), summary.md and the figures."""
    from bench.report.render import render_report

    cm = _cost_model(cost, pricing=pricing, utilization=utilization, peak_qps=peak_qps)
    cmp = None
    if len(results) == 2:
        from bench.compare import CompareError, compare

        try:
            c = compare([results[0]], [results[1]], gpus_per_replica=gpus_per_replica)
            cmp = {"title": f"{results[1].name} vs {results[0].name}", "knees": c["knees"]}
        except CompareError as e:
            cmp = {"title": f"{results[1].name} vs {results[0].name}", "knees": [], "refused": str(e)}
    path = render_report(results, out, name or "-vs-".join(p.name for p in results), cm, catalog, cmp, gpus_per_replica)
    typer.echo(f"report: {path / 'index.html'}\nsummary: {path / 'summary.md'}")


@app.command(name="compare")
@_user_errors
def compare_cmd(
    base: Path = typer.Argument(..., help="Baseline results (sweep or run directory)"),
    new: Path = typer.Argument(..., help="New results (other SKU or engine version)"),
    threshold: str = typer.Option("5%", help="Smallest change that counts"),
    fail_on_regression: Optional[str] = typer.Option(None, help="Exit 1 if any regression rule fires beyond this (e.g. 5%): latency, errors, knee, throughput"),
    allow_mismatch: bool = typer.Option(False, help="Compare even when workload, arrivals, load unit, SLOs, model, API or OSL differ"),
    gpus_per_replica: Optional[float] = typer.Option(None, min=1, help="GPUs per replica for runs that do not record it (label gpus=N)"),
    boot: int = typer.Option(1000, min=200, help="Bootstrap resamples per interval"),
    cost: Optional[Path] = typer.Option(None, help="Cost model YAML for the side-by-side cost at the SLO"),
) -> None:
    """Regression gate: deltas with 95% intervals per cell, load and metric; exit 1 on a regression, 2 if not comparable."""
    from rich.console import Console

    from bench.compare import CompareError, compare
    from bench.report.console import print_compare

    def frac(s: str, what: str) -> float:
        try:
            return float(s.strip().rstrip("%")) / (100 if s.strip().endswith("%") else 1)
        except ValueError:
            fail(f"{what} '{s}': write a percentage like 5%")

    thr = frac(fail_on_regression or threshold, "--fail-on-regression" if fail_on_regression else "--threshold")
    try:
        res = compare([base], [new], thr, boot, allow_mismatch=allow_mismatch, gpus_per_replica=gpus_per_replica)
    except CompareError as e:
        fail(str(e))
    print_compare(res, f"{new.name} vs {base.name}", _cost_model(cost), Console(width=max(150, Console().width)))
    if fail_on_regression is not None and res["regressions"]:
        fail(f"regression beyond {thr:.0%}: " + "; ".join(sorted({f"{r['rule']} rule ({r['metric']})" for r in res["regressions"]})), 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
