"""Reliability through the CLI against the fault-injection server (tests/fault_server.py) and the sim:
the run completes, or fails with one line, with the right status on disk and no secret anywhere."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.fault_server import FaultServer
from tests.integration.conftest import ROOT, free_port, trilemma

QUIET = ("--no-server-metrics", "--gpu-telemetry", "off")


def run_doc(out: Path, name: str) -> dict:
    return json.loads((out / name / "run.json").read_text())


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The user-facing failure: exit != 0, exactly one line on stderr, no traceback."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and p.stderr.strip().splitlines()[-1] == errors[0], p.stderr  # progress lines may precede it
    return errors[0]


def test_run_completes_against_a_server_that_resets_control_connections_and_omits_done(tmp_path):
    """Every /tokenize (and discovery) connection is reset on reuse and no stream ends with [DONE]: the
    run still completes with every request ok, and the summary counts the streams without [DONE]."""
    with FaultServer(reset_control=True, no_done=True) as fs:
        trilemma("run", "--url", fs.url, "--isl", 16, "--osl", 4, "--qps", 20, "--requests", 20, *QUIET, "--out", tmp_path, "--name", "r")
        assert fs.counts["resets"] > 100  # the faults did happen (PromptBuilder's ~400 /tokenize calls)
    doc = run_doc(tmp_path, "r")
    assert doc["status"] == "complete" and doc["error"] is None
    assert doc["summary"]["n_ok"] == 20
    assert doc["summary"]["streams_without_done"] == 20
    rows = pq.read_table(tmp_path / "r" / "requests.parquet").to_pylist()
    assert len(rows) == 20 and all(r["ok"] and r["error_kind"] == "" and not r["done_marker"] for r in rows)


def test_stream_without_done_is_complete_but_a_stream_cut_before_finish_is_not(tmp_path):
    with FaultServer(no_done=True) as fs:
        trilemma("run", "--url", fs.url, "--isl", 8, "--osl", 3, "--qps", 20, "--requests", 5, *QUIET, "--out", tmp_path, "--name", "nd")
    s = run_doc(tmp_path, "nd")["summary"]
    assert s["n_ok"] == 5 and s["streams_without_done"] == 5 and not s["errors"]


def test_control_plane_failing_twice_is_one_line_naming_the_call(tmp_path):
    """/tokenize is reset on every connection after the first call: no traceback, exit 1, the call
    named, and run.json `failed` (not left `running`)."""
    with FaultServer(tokenize_fails_after=1) as fs:
        p = trilemma("run", "--url", fs.url, "--qps", 1, "--requests", 2, *QUIET, "--out", tmp_path, "--name", "cp", check=False)
    line = one_line_error(p)
    assert "POST /tokenize failed" in line and "reset the connection twice" in line
    assert p.returncode == 1
    doc = run_doc(tmp_path, "cp")
    assert doc["status"] == "failed" and "POST /tokenize failed" in doc["error"]


def test_ctrl_c_during_setup_is_interrupted_with_exit_130(tmp_path):
    """SIGINT while the target is still being discovered: exit 130, run.json `interrupted`."""
    with FaultServer(slow_models_s=4) as fs:
        p = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--url", fs.url, "--qps", "1", "--requests", "2", *QUIET,
                              "--out", str(tmp_path), "--name", "cc"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "COLUMNS": "200"})
        t0 = time.time()
        while not (tmp_path / "cc" / "run.json").is_file() and time.time() - t0 < 20:
            time.sleep(0.05)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 130, out + err
    assert "status: running" not in out and "Traceback" not in err
    doc = run_doc(tmp_path, "cc")
    assert doc["status"] == "interrupted" and doc["error"]


@pytest.mark.parametrize("creds", ["key", "url"])
def test_secrets_are_never_stored_or_printed(tmp_path, creds):
    """An API key, or a password in the URL, that the server echoes in its 401 body (as `Bearer …` /
    `Basic …`) reaches neither run.json, nor the parquet rows, nor the console."""
    import base64

    key, pw = "sk-topsecret-4242", "hunter2pw"
    with FaultServer(echo_auth=True) as fs:
        if creds == "key":
            args, secrets = ("--url", fs.url, "--api-key", key), [key]
        else:
            args, secrets = ("--url", fs.url.replace("http://", f"http://alice:{pw}@")), [pw, base64.b64encode(f"alice:{pw}".encode()).decode()]
        p = trilemma("run", *args, "--isl", 8, "--osl", 2, "--qps", 10, "--requests", 3, *QUIET, "--out", tmp_path, "--name", "s",
                     check=False)
    assert p.returncode == 1
    stored = (tmp_path / "s" / "run.json").read_text()
    rows = pq.read_table(tmp_path / "s" / "requests.parquet").to_pylist()
    errors = " ".join(r["error"] for r in rows)
    assert len(rows) == 3 and all(r["error_kind"] == "http" for r in rows)
    assert "HTTP 401" in errors and "***" in errors
    for text in (stored, errors, p.stdout, p.stderr):
        assert not any(s in text for s in secrets)
    if creds == "url":
        assert "http://***@127.0.0.1" in stored


def test_url_password_and_api_key_together_are_refused_in_one_line(tmp_path):
    p = trilemma("run", "--url", f"http://alice:pw1234@127.0.0.1:{free_port()}", "--api-key", "sk-x1234", "--qps", 1, "--requests", 1,
                 *QUIET, "--out", tmp_path, check=False)
    line = one_line_error(p)
    assert "give only one" in line and "pw1234" not in line and "sk-x1234" not in line


def test_short_dataset_wraps_around_and_says_so(tmp_path):
    """A 3-row file under a 10-request schedule: rows are reused in order (as vllm bench oversamples),
    the run completes, and run.json states how many requests reused rows."""
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"hello number {k}", "output_tokens": 2}) + "\n" for k in range(3)))
    with FaultServer() as fs:
        trilemma("run", "--url", fs.url, "--dataset", f"file:{f}", "--qps", 20, "--requests", 10, *QUIET, "--out", tmp_path, "--name", "d")
    doc = run_doc(tmp_path, "d")
    assert doc["status"] == "complete" and doc["summary"]["n_ok"] == 10
    assert doc["workload"]["dataset_rows_reused"] == 7
    assert any(w["code"] == "dataset_wrapped" for w in doc["summary"]["warnings"])
    rows = pq.read_table(tmp_path / "d" / "requests.parquet").to_pylist()
    assert sorted(r["index"] for r in rows) == list(range(10))
    assert sorted(r["source"] for r in rows)[:4] == ["file:p.jsonl:line 1"] * 4  # rows 0, 3, 6, 9


def test_an_exception_while_driving_marks_the_run_failed(tmp_path, monkeypatch):
    """The status rule: `complete` only when the point was measured; an exception mid-run is `failed`
    with a one-line reason."""
    from bench import runner
    from bench.config import RunSpec

    async def boom(*a, **k):
        raise KeyError("schedule broke")

    monkeypatch.setattr(runner, "drive", boom)
    with FaultServer() as fs:
        spec = RunSpec(target={"url": fs.url}, workload={"isl": 8, "osl": 2}, load={"qps": 5, "requests": 3},
                       scrape_metrics=False, gpu_telemetry="off")
        doc = runner.execute_run(spec, tmp_path / "x")
    assert doc["status"] == "failed" and doc["error"] == "KeyError: 'schedule broke'"
    assert run_doc(tmp_path, "x")["status"] == "failed"


def test_clipping_warning_counts_requests_sent(tmp_path):
    """Prompts are built ahead (1.2× the schedule + 64); the warning counts the clipped requests sent."""
    with FaultServer(max_model_len=20) as fs:
        trilemma("run", "--url", fs.url, "--isl", 30, "--osl", 4, "--qps", 10, "--duration", 1, *QUIET, "--out", tmp_path, "--name", "c")
    doc = run_doc(tmp_path, "c")
    sent = len(pq.read_table(tmp_path / "c" / "requests.parquet"))
    assert 0 < sent < 30
    assert doc["workload"]["clipped_to_max_model_len"] == sent
    assert any(w["code"] == "clipped" and w["values"]["n"] == sent and w["text"].startswith(f"clipped: {sent} requests")
               for w in doc["summary"]["warnings"]), doc["summary"]["warnings"]


def test_report_renders_for_unpriced_results_and_says_what_is_missing(tmp_path):
    """A run with a GPU label that is not in the catalog, reported with and without --peak-qps."""
    with FaultServer() as fs:
        trilemma("run", "--url", fs.url, "--isl", 8, "--osl", 2, "--qps", 10, "--requests", 10, "--slo", "ttft_p50=5s", *QUIET,
                 "--label", "gpu=mystery-9000", "--out", tmp_path / "res", "--name", "u")
        trilemma("run", "--url", fs.url, "--isl", 8, "--osl", 2, "--qps", 10, "--requests", 10, "--slo", "ttft_p50=5s", *QUIET,
                 "--out", tmp_path / "res", "--name", "nolabel")
    for extra in ((), ("--peak-qps", "50")):
        trilemma("report", tmp_path / "res" / "u", tmp_path / "res" / "nolabel", *extra, "--out", tmp_path / "rep", "--name", "r")
        md = (tmp_path / "rep" / "r" / "summary.md").read_text()
        html = (tmp_path / "rep" / "r" / "index.html").read_text()
        for text in (md, html):
            assert "no price for GPU &#39;mystery-9000&#39; in the catalog" in text or "no price for GPU 'mystery-9000' in the catalog" in text
            assert "rerun with --label gpu=SKU" in text
            assert ("replicas: pass --peak-qps" in text) == (not extra)


# ------------------------------------------------------------------ the simulator as a sweep target
def test_sweep_with_a_bad_sim_profile_fails_fast_with_the_simulators_reason(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "target": {"sim": {"profile": "no-such-gpu"}}, "cells": [{"isl": 8, "osl": 2}],
                                    "load": {"qps": [1]}, "requests": 2}))
    t0 = time.time()
    p = trilemma("sweep", spec, "--out", tmp_path, check=False)
    assert time.time() - t0 < 10
    line = one_line_error(p)
    assert "sim profile 'no-such-gpu' not found" in line
    assert json.loads((tmp_path / "bad" / "sweep.json").read_text())["status"] == "failed"


def test_sweep_against_an_unreachable_target_is_failed_not_complete(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "gone", "target": {"url": f"http://127.0.0.1:{free_port()}"}, "cells": [{"isl": 8, "osl": 2}],
                                    "load": {"qps": [1]}, "requests": 2, "gpu_telemetry": "off"}))
    p = trilemma("sweep", spec, "--out", tmp_path, check=False)
    assert "cannot reach" in one_line_error(p)
    sw = json.loads((tmp_path / "gone" / "sweep.json").read_text())
    assert sw["status"] == "failed" and "cannot reach" in sw["error"]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sim_does_not_outlive_a_killed_sweep(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "k", "target": {"sim": {"profile": "tiny-test"}}, "cells": [{"isl": 8, "osl": 2}],
                                    "load": {"qps": [2]}, "duration_s": 60, "gpu_telemetry": "off"}))
    p = subprocess.Popen([sys.executable, "-m", "bench.cli", "sweep", str(spec), "--out", str(tmp_path)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not list(tmp_path.glob("k/points/*/run.json")) and time.time() - t0 < 60:
            time.sleep(0.2)
        sims = _children(p.pid)
        assert sims, "the sweep started no simulator"
    finally:
        p.kill()
        p.wait(10)
    t0 = time.time()
    while any(_alive(s) for s in sims) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not any(_alive(s) for s in sims)


# ------------------------------------------------------------------ bad input: one line, exit != 0
BAD_RUN = [
    (("--qps", "inf", "--duration", "1"), "--qps must be a finite number"),
    (("--qps", "1", "--duration", "inf"), "--duration must be a finite number"),
    (("--qps", "1e12", "--duration", "1"), "lower --qps, --duration or --requests"),
    (("--qps", "1", "--duration", "1", "--gpu-telemetry", "banana"), "not a GPU telemetry source"),
    (("--qps", "1", "--duration", "1", "--timeout", "0"), "--timeout must be a number of seconds > 0"),
    (("--qps", "1", "--duration", "1", "--name", "../.."), "--name '../..'"),
]


@pytest.mark.parametrize("args,expect", BAD_RUN)
def test_bad_run_options_are_one_line(tmp_path, args, expect):
    p = trilemma("run", "--url", f"http://127.0.0.1:{free_port()}", *args, "--out", tmp_path / "o", check=False)
    assert expect in one_line_error(p)
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --out or outside it


def test_out_pointing_at_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    p = trilemma("run", "--url", f"http://127.0.0.1:{free_port()}", "--qps", 1, "--duration", 1, "--out", f, check=False)
    assert "this is a file" in one_line_error(p)


@pytest.mark.parametrize("load,labels,expect", [({"qps": [1, float("inf")]}, {}, "finite rates"),
                                                ({"qps": [1]}, ["a", "b"], "labels: write a mapping")])
def test_bad_sweep_fields_are_one_line(tmp_path, load, labels, expect):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "cells": [{"isl": 8}], "load": load, "requests": 2, "labels": labels}))
    assert expect in one_line_error(trilemma("sweep", spec, "--out", tmp_path, check=False))


def test_sim_port_errors_are_one_line():
    import socket

    assert "between 1 and 65535" in one_line_error(trilemma("sim", "--port", 99999, check=False, timeout=30))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = trilemma("sim", "--port", s.getsockname()[1], check=False, timeout=30)
    assert "cannot listen on 127.0.0.1" in one_line_error(p)


def test_chat_message_with_non_string_content_is_one_line(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) + "\n")
    with FaultServer() as fs:
        p = trilemma("run", "--url", fs.url, "--api", "chat", "--dataset", f"file:{f}", "--qps", 1, "--requests", 1, *QUIET,
                     "--out", tmp_path, check=False)
    assert "messages[0].content must be a string" in one_line_error(p)


def test_timeout_help_says_it_is_an_idle_read_timeout():
    assert "Idle-read timeout" in trilemma("run", "--help").stdout


def test_request_settings_and_headers_reach_the_server_and_header_values_are_not_stored(tmp_path):
    """Production request settings: body fields (temperature, top_p, seed, a stop string) on every generation
    request, an extra header on every call; the header's value appears in no result file."""
    with FaultServer() as fs:
        trilemma("run", "--url", fs.url, "--isl", 8, "--osl", 3, "--qps", 20, "--requests", 5, *QUIET, "--out", tmp_path, "--name", "rq",
                 "--request", '{"temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["###"]}', "--header", "X-Tenant: team-s3cr3t")
        gen = [(h, b) for h, b in fs.seen if b["_path"] == "/v1/completions"]
        assert len(gen) == 5 and all(b["temperature"] == 0.7 and b["top_p"] == 0.9 and b["seed"] == 3 and b["stop"] == ["###"]
                                     and b["max_tokens"] == 3 for _, b in gen)
        assert all(h.get("x-tenant") == "team-s3cr3t" for h, _ in fs.seen)  # discovery, /tokenize and generation alike
    doc = json.loads((tmp_path / "rq" / "run.json").read_text())
    assert doc["spec"]["target"]["request"]["temperature"] == 0.7 and doc["spec"]["target"]["headers"] == {"X-Tenant": "<not stored>"}
    for f in (tmp_path / "rq").rglob("*"):
        if f.is_file():
            assert b"team-s3cr3t" not in f.read_bytes(), f
    p = trilemma("run", "--url", fs.url, "--request", '{"max_tokens": 5}', "--qps", 1, "--requests", 1, "--out", tmp_path, check=False)
    assert p.returncode == 2 and "'max_tokens' is set by --osl" in p.stderr and "Traceback" not in p.stderr


def test_a_rerun_reuses_only_points_of_this_target_spec_and_server_version(sim_factory, tmp_path):
    """Issue 12 item 5. A point is reused only for the same target, spec and server version; the points an
    earlier spec left on disk never mix into the knee, report or compare of the current one."""
    from bench.knee import load_points

    a, b = sim_factory("--profile", "tiny-test"), sim_factory("--profile", "tiny-test")
    spec = {"name": "s", "target": {"url": a.url}, "cells": [{"isl": 16, "osl": 4}], "load": {"qps": [10, 20]},
            "requests": 12, "warmup": "2r", "gpu_telemetry": "off", "slos": {"ttft_p50": "500ms"}}  # p50: decided by 10 samples
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = lambda *extra: trilemma("sweep", path, "--out", tmp_path, "--no-plots", *extra)  # noqa: E731
    sw = lambda: json.loads((tmp_path / "s" / "sweep.json").read_text())  # noqa: E731
    sweep()
    first = sw()["points"]
    n = len(first)  # the grid's loads and any the knee search added between them
    assert n >= 2 and sw()["measured"] == n
    sweep()  # same spec, same server: reused
    assert sw()["skipped"] == n and sw()["measured"] == 0 and sw()["points"] == first
    # another server at another address: measured anew, and only its points are read
    sweep("--url", b.url)
    second = sw()["points"]
    assert sw()["measured"] == len(second) and sw()["skipped"] == 0 and not set(second) & set(first)
    df = load_points([tmp_path / "s"])
    assert len(df) == 2 and set(df["run_dir"].map(lambda r: Path(r).name)) <= set(second)  # one row per load (an extended point replaces its first try)
    # an edited SLO: the earlier spec's four points stay on disk, the knee reads the new two only
    spec["slos"] = {"ttft_p50": "400ms"}
    path.write_text(yaml.safe_dump(spec))
    sweep()
    third = sw()["points"]
    assert sw()["measured"] == len(third) and not set(third) & (set(first) | set(second))
    assert len(list((tmp_path / "s" / "points").iterdir())) == len(first) + len(second) + len(third)
    df = load_points([tmp_path / "s"])
    assert len(df) == 2 and set(df["run_dir"].map(lambda r: Path(r).name)) <= set(third)
    # a point measured on another server version is measured again; the earlier one is kept aside, unread
    h = Path(df["run_dir"].iloc[0]).name  # a point the knee reads
    doc = json.loads((tmp_path / "s" / "points" / h / "run.json").read_text())
    doc["target"]["server_version"] = "0.0-older"
    (tmp_path / "s" / "points" / h / "run.json").write_text(json.dumps(doc))
    p = sweep()
    assert "version changed (0.0-older ->" in p.stdout + p.stderr
    assert sw()["measured"] == 1 and sw()["skipped"] == len(third) - 1
    kept = tmp_path / "s" / "points" / f"{h}.server-0.0-older"
    assert json.loads((kept / "run.json").read_text())["superseded_by"] == h
    df = load_points([tmp_path / "s"])
    assert len(df) == 2 and (df["server_version"] != "0.0-older").all() and h in set(df["run_dir"].map(lambda r: Path(r).name))
    # the whole sweep listed on an older version: the list starts again, so a point this run does not visit (an
    # extended point no longer needed, another search path) is never read with the new version's
    now = sw()["server_version"]
    doc = sw()
    doc["server_version"] = "0.0-older"
    (tmp_path / "s" / "sweep.json").write_text(json.dumps(doc))
    for h in doc["points"]:
        run = json.loads((tmp_path / "s" / "points" / h / "run.json").read_text())
        run["target"]["server_version"] = "0.0-older"
        (tmp_path / "s" / "points" / h / "run.json").write_text(json.dumps(run))
    p = sweep()
    assert f"version changed (0.0-older -> {now}): points measured on the old one are not read" in (p.stdout + p.stderr).replace("\n", " ")
    assert sw()["measured"] >= 2 and sw()["skipped"] == 0 and sw()["server_version"] == now
    df = load_points([tmp_path / "s"])
    assert len(df) == 2 and (df["server_version"] == now).all()
