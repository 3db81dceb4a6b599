"""Sweeps, knee, compare and report through the CLI, against the simulator (fast profile)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.knee import knee_table, load_points
from bench.sim.engine import load_profile
from bench.sim.virtual import simulate
from tests.integration.conftest import ROOT, trilemma


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_auto_knee_is_confirmed_by_a_dense_grid(tmp_path):
    """load: auto finds a knee that a grid over the same cell confirms — no grid point below the knee
    fails the SLO, no grid point above its bracket passes — in fewer points than a grid of the same
    resolution over the range the search covered. Every probe has fresh prompts and runs until decided."""
    common = dict(target={"sim": {"profile": "tiny-test"}}, cells=[{"name": "c", "isl": 64, "osl": 32}],
                  slos={"ttft_p90": "150ms"}, duration_s=8, warmup="1s", probe={"max_duration_s": 30})
    auto = write_spec(tmp_path / "auto.yaml", name="auto", load={"auto": {"precision": 0.1, "max_probes": 10}}, **common)
    trilemma("sweep", auto, "--out", tmp_path, "--no-plots")
    pts = load_points([tmp_path / "auto"])
    k = knee_table(pts).iloc[0]
    probes = pts[["role", "load", "verdict", "why"]].to_string()
    assert k["feasible"] and k["bracket_hi"] is not None, f"{k['note']}\n{probes}"
    knee, hi = float(k["knee"]), float(k["bracket_hi"])
    assert k["knee_samples"] >= 35 and k["knee_window_lifetimes"] >= 3  # p90 with no exceedance needs >= 35
    seeds = set(pts["seed"])
    assert len(seeds) == len(pts)  # fresh prompts and arrivals for every probe
    below, above = [round(knee * f, 2) for f in (0.6, 0.8)], [round(hi * f, 2) for f in (1.15, 1.4)]
    grid = write_spec(tmp_path / "grid.yaml", name="grid", load={"qps": below + above}, **common)
    trilemma("sweep", grid, "--out", tmp_path, "--no-plots")
    g = load_points([tmp_path / "grid"]).set_index("load")["verdict"]
    assert all(g[x] != "FAIL" for x in below), f"{g.to_dict()}\n{probes}"
    assert all(g[x] != "PASS" for x in above), f"{g.to_dict()}\n{probes}"
    rates = pts.loc[pts["mode"] == "qps", "load"]
    n_auto = len(pts)
    n_grid = int(np.ceil(np.log(rates.max() / rates.min()) / np.log(1.1)))
    assert n_auto < n_grid, f"auto used {n_auto} points; a 10% grid over {rates.min():.2f}-{rates.max():.2f} needs {n_grid}"


def sweeps_at_once(root: Path, specs: dict[str, dict]) -> None:
    """`trilemma sweep` of each spec, all at the same time, each against its own simulator. The points are
    wall-clock bound (a few requests per second on a lightly loaded simulator), so six together take the time of
    one, and every side of a comparison is measured under the same conditions (same instants, same machine load)."""
    procs = {name: subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(write_spec(root / f"{name}.yaml", name=name, **spec)),
                                     "--out", str(root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, spec in specs.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"sweep {name} exited {p.returncode}\n{out}\n{err}"


@pytest.fixture(scope="module")
def regression_results(tmp_path_factory):
    """Grid sweeps of one spec and seed on the fast profile (as a CI gate runs: same spec, same seed -> same
    arrivals and prompts; only the server differs): base, base again, a 10% slower engine, and three planted
    faults: TTFT up by a fixed delay before the engine (a slower API front end), 30% of requests answered HTTP 500,
    and TTFT over its SLO at every load (no knee). The delay is 12% of the engine's own TTFT p50 at 5 req/s in
    virtual time (the simulator's model, no wall clock; measured: +12.4%, 95% interval +9.5..+14.7%)."""
    root = tmp_path_factory.mktemp("cmp")
    base = dict(cells=[{"name": "c", "isl": 64, "osl": 32}], load={"qps": [5, 10]}, requests=200, warmup="10r", seed=0,
                slos={"ttft_p50": "200ms", "tpot_p50": "60ms"}, labels={"gpu": "test-device", "gpus": "1"})
    engine_ttft_ms = simulate(load_profile("tiny-test"), 64, 32, rate=5, n_requests=2000).pct("ttft", 0.5)
    sims = {"base": {}, "same": {}, "slower": {"slowdown": 1.1}, "ttft10": {"delay_ms": round(0.12 * engine_ttft_ms, 1)},
            "errors30": {"error_rate": 0.3}, "noknee": {"delay_ms": 400}}
    sweeps_at_once(root, {name: {**base, "target": {"sim": {"profile": "tiny-test", "seed": 0, **sim}}} for name, sim in sims.items()})
    return root


def test_planted_ttft_regression_fails_the_gate_on_the_latency_rule(regression_results):
    """TTFT +12% planted in front of an unchanged engine: the gate exits 1 on TTFT, and the inter-token
    latency (which the plant does not touch) is not called worse."""
    r = regression_results
    p = trilemma("compare", r / "base", r / "ttft10", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 1 and "latency rule" in p.stderr, p.stdout + p.stderr
    assert re.search(r"REGRESSION c, 5 req/s: ttft_p50 \(latency rule\)", p.stdout), p.stdout
    assert not re.search(r"itl_p50.*worse", p.stdout), p.stdout


def test_planted_failures_fail_the_gate_on_the_error_rule(regression_results):
    r = regression_results
    p = trilemma("compare", r / "base", r / "errors30", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 1 and "errors rule" in p.stderr, p.stdout + p.stderr
    m = re.search(r"REGRESSION c, 5 req/s: error rate \(errors rule\) — (\d+)/(\d+) failed vs 0/\d+", p.stdout)
    assert m and 0.2 < int(m[1]) / int(m[2]) < 0.4, p.stdout


def test_planted_lost_knee_fails_the_gate_on_the_knee_rule(regression_results):
    r = regression_results
    p = trilemma("compare", r / "base", r / "noknee", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 1 and "knee rule" in p.stderr, p.stdout + p.stderr
    assert re.search(r"REGRESSION c: knee \(req/s\) \(knee rule\) — knee lost: base sustains 10 req/s", p.stdout.replace("\n", " ")), p.stdout


@pytest.fixture(scope="module")
def throughput_results(tmp_path_factory):
    """Closed loop at the engine's batch limit, 3 repeats per side: base, and every engine step 1/0.9 x
    longer (output tok/s -10%)."""
    root = tmp_path_factory.mktemp("tps")
    base = dict(cells=[{"name": "c", "isl": 64, "osl": 32}], load={"concurrency": [16]}, duration_s=8, repeats=3,
                slos={"tpot_p50": "200ms"}, labels={"gpu": "test-device", "gpus": "1"})
    for name, slow in (("base", 1.0), ("tps10", round(1 / 0.9, 4))):
        spec = write_spec(root / f"{name}.yaml", name=name, seed=0, target={"sim": {"profile": "tiny-test", "slowdown": slow}}, **base)
        trilemma("sweep", spec, "--out", root)
    return root


def test_planted_throughput_loss_with_repeats_fails_the_gate_on_the_throughput_rule(throughput_results):
    r = throughput_results
    p = trilemma("compare", r / "base", r / "tps10", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 1 and "throughput rule" in p.stderr, p.stdout + p.stderr
    m = re.search(r"REGRESSION c, 16 concurrent: output tok/s \(throughput rule\).*?([-−]\d+\.\d)%", p.stdout.replace("\n", " "))
    assert m and -13 < float(m[1].replace("−", "-")) < -7, p.stdout


def test_compare_flags_a_planted_slowdown(regression_results):
    """Every engine step 10% slower: TPOT (an SLO) and ITL rise 10% and the gate fails on the latency rule.
    TTFT at these light loads rises less than the step time (it also holds the HTTP path and the wait for a step
    boundary), so its interval may straddle +5%: then it is reported undecided, never as a pass or 'better'."""
    r = regression_results
    p = trilemma("compare", r / "base", r / "slower", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 1 and "regression beyond 5%: latency rule" in p.stderr, p.stdout + p.stderr
    assert re.search(r"tpot_p50 \(SLO\).*\+1\d\.\d%.*worse", p.stdout), p.stdout
    assert re.search(r"REGRESSION c, 5 req/s: itl_p50 \(latency rule\)", p.stdout), p.stdout
    assert not re.search(r"ttft_p50 \(SLO\).*(better|within)", p.stdout), p.stdout


def test_compare_does_not_flag_the_same_profile(regression_results):
    r = regression_results
    p = trilemma("compare", r / "base", r / "same", "--fail-on-regression", "5%", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no regression beyond 5% among the decided checks" in p.stdout and "worse" not in p.stdout


def test_compare_refuses_mismatched_workloads(regression_results, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(regression_results / "base", other)
    for rj in other.glob("points/*/run.json"):
        doc = json.loads(rj.read_text())
        doc["spec"]["workload"]["isl"] = "128"
        rj.write_text(json.dumps(doc))
    p = trilemma("compare", regression_results / "base", other, check=False)
    assert p.returncode == 2 and "different setups" in p.stderr and "workload: isl=64" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed (make browser)")
def test_report_renders_in_headless_chromium(regression_results, tmp_path):
    r = regression_results
    trilemma("report", r / "base", r / "slower", "--name", "rep", "--out", tmp_path, "--peak-qps", "40")
    html = tmp_path / "rep" / "index.html"
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "$/M out" in md and "SIMULATED" in md and "test-device" in md
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "shot.png"
    p = subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1300,2600", html.as_uri()], capture_output=True,
                       text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 50_000, p.stderr[-2000:]
    console_errors = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln.upper()]
    assert not console_errors, console_errors
    dom = subprocess.run(["chromium", *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    figs = re.findall(r'<img alt="([a-z_]+)" id="fig-[a-z_]+" src="data:image/png;base64,', dom)
    assert set(figs) >= {"latency_vs_load", "throughput_pareto", "achieved_vs_offered", "cost_per_slo"}
    assert 'id="knee-table"' in dom and 'id="simulated"' in dom
    from PIL import Image  # matplotlib brings pillow

    img = Image.open(shot).convert("RGB").resize((130, 260))
    assert len(img.getcolors(maxcolors=1 << 16) or []) > 50  # a rendered page, not a blank one



def test_a_staged_sweep_runs_each_cell_through_its_stages_and_reports_them(tmp_path):
    """load: {ramp_up_s, stages} in a sweep: one staged open loop per cell, every stage sending its rate's
    integral (within 3·√expected), each request's stage on disk, a per-stage table from the sweep and the
    report, no knee claimed; a rerun reuses the point and a changed stage list measures a new one."""
    stages = [{"qps": 4, "duration": 6}, {"qps": 10, "duration": 6}]
    spec = dict(name="staged", target={"sim": {"profile": "tiny-test"}}, cells=[{"name": "c", "isl": 32, "osl": 8}],
                load={"ramp_up_s": 2, "stages": stages}, slos={"ttft_p99": "500ms"})
    p = trilemma("sweep", write_spec(tmp_path / "s.yaml", **spec), "--out", tmp_path)
    assert "stages 4:6,10:6" in p.stderr and "Staged loads, per stage" in p.stdout and "SLO knee per cell" not in p.stdout
    (pdir,) = [d for d in (tmp_path / "staged" / "points").iterdir() if d.is_dir()]
    doc = json.loads((pdir / "run.json").read_text())
    assert doc["point"]["mode"] == "stages" and doc["point"]["value"] == 10
    st = doc["summary"]["per_stage"]
    assert [d["stage"] for d in st] == ["ramp", 0, 1] and [d["expected_requests"] for d in st] == [4, 24, 60]
    for d in st:
        assert abs(d["sent"] - d["expected_requests"]) <= 3 * d["expected_requests"] ** 0.5, d
    import pandas as pd

    df = pd.read_parquet(pdir / "requests.parquet")
    assert df.groupby("stage").size().to_dict() == {-1: st[0]["sent"], 0: st[1]["sent"], 1: st[2]["sent"]}
    table = pd.read_csv(tmp_path / "staged" / "knee" / "stages.csv")
    assert table["sent"].tolist() == [d["sent"] for d in st]
    trilemma("report", tmp_path / "staged", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "staged" / "summary.md").read_text()
    assert "## Staged loads" in md and "no knee to price" in md
    again = trilemma("sweep", write_spec(tmp_path / "s.yaml", **spec), "--out", tmp_path)
    assert "0 points measured, 1 reused" in again.stderr
    spec["load"]["stages"] = [{"qps": 4, "duration": 6}, {"qps": 8, "duration": 6}]
    changed = trilemma("sweep", write_spec(tmp_path / "s.yaml", **spec), "--out", tmp_path)
    assert "1 points measured, 0 reused" in changed.stderr
