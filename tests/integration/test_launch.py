"""Servers trilemma launches itself (target.launch, run --launch), with the built-in simulator as the launched
command (a real HTTP server process, seconds to start): serve-config grids as a knee dimension, the exact command
and log kept, restart after a server death mid-sweep, and no server left behind after the sweep, Ctrl-C or kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bench.knee import knee_table, load_points
from tests.integration.conftest import ROOT, trilemma

SIM = f"{sys.executable} -m bench.cli sim --port {{port}} --profile tiny-test"


def server_pids(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (each test's launch command carries its own)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and "bench.cli sim" in cmd:
                out.append(int(p.name))
    return out


def wait_for(cond, timeout: float, what: str) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def spec_file(tmp_path: Path, marker: str, **over) -> Path:
    spec = {"name": "launched", "cells": [{"name": "c", "isl": 32, "osl": 16}], "load": {"qps": [4, 10]}, "requests": 45,
            "warmup": "5r", "slos": {"ttft_p90": "150ms"},
            "target": {"launch": {"cmd": f"{SIM} --seed {marker} --slowdown {{slowdown}}", "params": {"slowdown": [1.0, 3.0]}}}}
    spec.update(over)
    f = tmp_path / "launch.yaml"
    f.write_text(yaml.safe_dump(spec))
    return f


def marker() -> str:
    return str(uuid.uuid4().int % 10**9)


def test_a_grid_of_serve_configs_is_a_knee_dimension_with_each_command_and_log_kept(tmp_path):
    """Two serve configs (the engine 3x slower in the second): each is started, measured over every load and
    stopped; the knee table has one row per config, the slower one's knee lower; sweep.json and every point
    hold the exact command, version and log; a rerun reuses every point without starting a server."""
    m = marker()
    f = spec_file(tmp_path, m)
    p = trilemma("sweep", f, "--out", tmp_path, "--no-plots")
    assert p.stderr.count("starting the server for serve config") == 2 and not server_pids(m)
    d = tmp_path / "launched"
    servers = json.loads((d / "sweep.json").read_text())["servers"]
    assert [(s["config"], s["status"], s["starts"]) for s in servers] == [("slowdown=1.0", "complete", 1), ("slowdown=3.0", "complete", 1)]
    for s in servers:
        assert f"--slowdown {s['params']['slowdown']}" in s["command"] and s["version"].startswith("trilemma-sim")
        log = Path(s["log"])
        assert log.is_file() and log.parent.parent == d / "servers" and s["command"] in log.read_text()
    for rj in (d / "points").glob("*/run.json"):
        doc = json.loads(rj.read_text())
        assert doc["launch"]["command"] in {s["command"] for s in servers} and doc["point"]["target"]["launch"]["config"]
    knees = knee_table(load_points([d])).set_index("cell")
    fast, slow = knees.loc["c (slowdown=1.0)"], knees.loc["c (slowdown=3.0)"]
    assert fast["feasible"] and (not slow["feasible"] or slow["knee"] < fast["knee"]), knees[["knee", "note"]]
    again = trilemma("sweep", f, "--out", tmp_path, "--no-plots")
    assert "starting the server" not in again.stderr and "0 points measured, 4 reused" in again.stderr
    kept = json.loads((d / "sweep.json").read_text())["servers"]  # a rerun that started nothing keeps each config's record
    assert [(s["config"], s["status"], s["command"]) for s in kept] == [(s["config"], s["status"], s["command"]) for s in servers]


def sweep_killing_the_server_mid_point(f: Path, tmp_path: Path, m: str) -> tuple[str, str, subprocess.Popen]:
    """`trilemma sweep f` whose launched server (marked m) is killed with SIGKILL once its first point is measuring."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(f), "--out", str(tmp_path), "--no-plots"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: bool(list((tmp_path / "launched" / "points").glob("*/requests.parts/*.parquet"))), 60, "the point to measure")
    for pid in server_pids(m):
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    return out, err, proc


def test_a_server_that_dies_past_its_restarts_fails_its_config_and_the_sweep_goes_on(tmp_path):
    """restarts: 0 and the first config's server killed during its point: that config is failed with the
    server's exit and log tail, the second config is started and measured, and the sweep ends failed, naming
    the config, with no server left."""
    m = marker()
    f = spec_file(tmp_path, m, load={"qps": [6]}, requests=120,
                  target={"launch": {"cmd": f"{SIM} --seed {m} --slowdown {{slowdown}}", "params": {"slowdown": [1.0, 1.5]}, "restarts": 0}})
    out, err, proc = sweep_killing_the_server_mid_point(f, tmp_path, m)
    d = tmp_path / "launched"
    sw = json.loads((d / "sweep.json").read_text())
    first, second = sw["servers"]
    assert proc.returncode == 1 and sw["status"] == "failed" and "slowdown=1.0" in sw["error"], (sw, err)
    assert "failed: " in err and "slowdown=1.0" in err.split("failed: ", 1)[1] and "c (slowdown=1.5)" in out, (out, err)
    assert first["status"] == "failed" and len(first["deaths"]) == 1 and first["deaths"][0]["exit_status"] not in (0, None)
    assert second["status"] == "complete" and second["starts"] == 1
    df = load_points([d])
    assert list(df["cell"]) == ["c (slowdown=1.5)"] and (df["status"] == "complete").all()
    assert not server_pids(m)


def test_a_server_that_dies_mid_sweep_is_restarted_and_the_point_measured_again(tmp_path):
    """The launched server is killed during a point: that attempt is kept aside (superseded), the server is
    started again, the point is measured again, and the sweep completes with every point; a second config is
    unaffected."""
    m = marker()
    f = spec_file(tmp_path, m, load={"qps": [6]}, requests=120,
                  target={"launch": {"cmd": f"{SIM} --seed {m}", "restarts": 1}})
    out, err, proc = sweep_killing_the_server_mid_point(f, tmp_path, m)
    assert proc.returncode == 0, err
    d = tmp_path / "launched"
    srv = json.loads((d / "sweep.json").read_text())["servers"][0]
    assert srv["status"] == "complete" and srv["starts"] == 2 and len(srv["deaths"]) == 1, srv
    (died,) = list((d / "points").glob("*.server-died-1"))
    assert json.loads((died / "run.json").read_text())["superseded_by"] == died.name.split(".")[0]
    doc = json.loads((d / "points" / died.name.split(".")[0] / "run.json").read_text())
    assert doc["status"] == "complete" and doc["summary"]["n_ok"] == doc["summary"]["n_measured"] > 100
    assert len(load_points([d])) == 1 and not server_pids(m) and not group_members(srv["pid"])


def test_no_server_is_left_after_ctrl_c_or_kill_9(tmp_path):
    """Ctrl-C: trilemma stops the server it started. kill -9 of trilemma: its watchdog does. The launched command
    leaves a child of its own behind it (as vLLM's API server does with its engine core process): the whole
    process group must go, not only the process trilemma started."""
    for how in ("SIGINT", "SIGKILL"):
        m = marker()
        (tmp_path / how).mkdir()
        f = spec_file(tmp_path / how, m, requests=2000,
                      target={"launch": {"cmd": f"sh -c 'sleep 600 & exec {SIM} --seed {m} --slowdown {{slowdown}}'", "params": {"slowdown": [1.0]}}})
        proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(f), "--out", str(tmp_path / how), "--no-plots"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: bool(list((tmp_path / how / "launched" / "points").glob("*/requests.parts/*.parquet"))), 60,
                 "the first point to measure")
        pgid = json.loads((tmp_path / how / "launched" / "sweep.json").read_text())["servers"][0]["pid"]
        assert server_pids(m) and len(group_members(pgid)) >= 2  # the server and its child
        proc.send_signal(getattr(signal, how))
        proc.wait(60)
        wait_for(lambda: not group_members(pgid), 30, f"the server's process group to go after {how}")
        if how == "SIGINT":
            assert proc.returncode == 130 and json.loads((tmp_path / how / "launched" / "sweep.json").read_text())["status"] == "interrupted"


def test_run_launch_keeps_the_server_log_and_command_in_the_run_directory(tmp_path):
    m = marker()
    trilemma("run", "--launch", f"{SIM} --seed {m}", "--qps", 4, "--requests", 12, "--isl", 32, "--osl", 8,
             "--out", tmp_path, "--name", "r")
    doc = json.loads((tmp_path / "r" / "run.json").read_text())
    assert doc["status"] == "complete" and doc["launch"]["command"].endswith(f"--seed {m}")
    assert (tmp_path / "r" / "server.log").is_file() and doc["launch"]["log"] == str(tmp_path / "r" / "server.log")
    assert not server_pids(m)
    bad = trilemma("run", "--launch", f"{sys.executable} -c 'import sys; print(\"no model here\"); sys.exit(3)' --port {{port}}",
                   "--qps", 1, "--requests", 2, "--out", tmp_path, check=False)
    assert bad.returncode == 1 and "exited with status 3" in bad.stderr and "no model here" in bad.stderr and "Traceback" not in bad.stderr


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (a launched server and everything it started)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(p.name))
    return out


@pytest.mark.vllm
def test_vllm_serve_configs_launched_by_trilemma_give_knees_in_the_expected_direction(tmp_path):
    """The real vLLM CPU rig, started by trilemma with --max-num-seqs 1 and 16: one sequence at a time queues
    requests that sixteen would batch, so its knee is lower; each server's exact command and log are kept and
    no process of either server's group is left when the sweep ends."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import vllm_rig

    v, model = vllm_rig.setup()
    argv = vllm_rig.server_cmd(v / "bin" / "python", model, "{port}", "{max_num_seqs}")
    argv[argv.index("--served-model-name") + 1] += " tiny-b"  # the tiny model under two names: a two-model mix
    env = {k: x for k, x in vllm_rig.server_env().items() if os.environ.get(k) != x}
    f = tmp_path / "vllm.yaml"
    f.write_text(yaml.safe_dump({
        "name": "seqs", "cells": [{"name": "c", "isl": 64, "osl": 192}], "load": {"qps": [2, 4]}, "requests": 40, "warmup": "4r",
        # one sequence at a time serves one 192-token answer after another (~0.45 s each on this rig, ~2.2 req/s; 64/64 ran
        # at ~6.5 req/s), so 4 req/s overloads it ~1.8x, and still does on a machine 50% faster; 2 req/s keeps it ~90% busy
        # (whether it passes there or not, its knee is below sixteen's, which passes both). Sixteen batch the same ~770
        # tokens/s at a few sequences a step. The long answer keeps requests per second low: at 12 req/s of 64/64 (the same
        # tokens/s, three times the requests) one CI machine's sixteen-sequence server reached a TTFT p50 of 0.8 s.
        # p50: a p90 at 80 samples stayed undecided far below its threshold once (0 of 80 over, CI 0-10.1%: the 16-sequence
        # server's TTFTs were autocorrelated, tau > 2.3); the claim here is the knees' direction, which p50 decides at 40
        "slos": {"ttft_p50": "250ms"},
        "target": {"model": {vllm_rig.SERVED_NAME: 0.5, "tiny-b": 0.5}, "request": {"temperature": 0.7, "stop": ["###"]},
                   "launch": {"cmd": "nice -n 19 " + " ".join(argv), "env": env, "startup_timeout_s": 300,
                              "params": {"max_num_seqs": [1, 16]}}}}))
    trilemma("sweep", f, "--out", tmp_path, "--no-plots", timeout=1200)
    d = tmp_path / "seqs"
    servers = json.loads((d / "sweep.json").read_text())["servers"]
    assert [s["status"] for s in servers] == ["complete", "complete"]
    for s in servers:
        assert f"--max-num-seqs {s['params']['max_num_seqs']}" in s["command"] and s["version"]
        assert Path(s["log"]).is_file() and s["command"] in Path(s["log"]).read_text()
        assert not group_members(s["pid"]), f"left running: {group_members(s['pid'])}"
    import pandas as pd

    for rj in (d / "points").glob("*/run.json"):  # every request asked for one of the two names; the summary splits by them
        doc = json.loads(rj.read_text())
        names = pd.read_parquet(rj.parent / "requests.parquet", columns=["model", "warmup", "error_kind"])
        names = names[~names["warmup"] & (names["error_kind"] != "cancelled")]["model"].value_counts().to_dict()
        assert {k: x["measured"] for k, x in doc["summary"]["per_model"].items()} == names and len(names) == 2
        assert doc["spec"]["target"]["request"] == {"temperature": 0.7, "stop": ["###"]}
    pts = load_points([d])
    knees = knee_table(pts).set_index("cell")
    one, many = knees.loc["c (max_num_seqs=1)"], knees.loc["c (max_num_seqs=16)"]
    table = pts[["cell", "load", "verdict", "why", "ttft_p50"]].to_string()
    assert many["feasible"] and (not one["feasible"] or one["knee"] < many["knee"]), table
