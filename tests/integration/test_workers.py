"""Client worker processes (--workers): one schedule split over processes measures what one process does,
and Ctrl-C / kill -9 keep their promises with workers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tests.integration.conftest import ROOT, trilemma


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may wait for a reaper in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_two_workers_measure_what_one_process_does(sim_factory, tmp_path):
    """Same seed, one process vs two workers: the same requests at the same scheduled offsets, exact tokens,
    the same parquet schema and summary fields, both workers used, and each sending on time (send lag p50 ≤ 1 ms
    at a rate one process holds)."""
    sim = sim_factory("--profile", "tiny-test")
    docs, dfs = {}, {}
    for n in (1, 2):
        trilemma("run", "--url", sim.url, "--isl", 32, "--osl", 16, "--qps", 15, "--requests", 200, "--warmup", "10r", "--seed", 3,
                 "--workers", n, "--out", tmp_path / f"w{n}", "--name", "r")
        d = tmp_path / f"w{n}" / "r"
        docs[n] = json.loads((d / "run.json").read_text())
        dfs[n] = pd.read_parquet(d / "requests.parquet")
    one, two = dfs[1], dfs[2]
    assert pq.read_schema(tmp_path / "w1/r/requests.parquet") == pq.read_schema(tmp_path / "w2/r/requests.parquet")
    assert len(one) == len(two) == 210 and sorted(one["index"]) == sorted(two["index"]) == list(range(210))
    offsets = [(df.sort_values("index")["intended_ns"] - df["intended_ns"].min()).tolist() for df in (one, two)]
    assert offsets[0] == offsets[1]  # one schedule from the seed, to the nanosecond
    for df in (one, two):
        assert df["ok"].all() and (df["output_tokens"] == 16).all() and (df["chunk_tokens"].map(sum) == 16).all()
    assert set(one["worker"]) == {0}
    share = two["worker"].value_counts(normalize=True)
    assert set(share.index) == {0, 1} and share.min() > 0.3, share
    s1, s2 = docs[1]["summary"], docs[2]["summary"]
    assert set(s1) == set(s2) and s1["n_measured"] == s2["n_measured"] == 200 and s1["n_ok"] == s2["n_ok"]
    assert s1["client"] == {"workers": 1} and s2["client"]["workers"] == 2 and sum(s2["client"]["per_worker_requests"]) == 210
    for s in (s1, s2):
        assert s["latency_ms"]["send_lag"]["p50"] <= 1.0, s["latency_ms"]["send_lag"]
    per = docs[2]["client_health"]["workers"]
    assert [w["worker"] for w in per] == [0, 1] and all(w["send_lag_ms"]["p50"] <= 1.0 and w["loop_stalls"] is not None for w in per)
    assert docs[2]["client"]["why"] == "--workers 2" and len(docs[2]["client"]["pids"]) == 2
    assert not any(alive(p) for p in docs[2]["client"]["pids"])
    # --workers auto says what it chose and why, in run.json and on the console
    p = trilemma("run", "--url", sim.url, "--isl", 32, "--osl", 16, "--qps", 15, "--requests", 30, "--seed", 3, "--workers", "auto",
                 "--out", tmp_path / "wa", "--name", "r")
    auto = json.loads((tmp_path / "wa" / "r" / "run.json").read_text())["summary"]["client"]
    assert auto["workers"] >= 1 and auto["auto_why"].startswith(f"auto: {auto['workers']} (")
    assert f"client: --workers auto: {auto['workers']} (" in p.stdout + p.stderr


def _start(sim_url: str, out: Path) -> subprocess.Popen:
    # its own session: a terminal's Ctrl-C reaches the whole foreground process group, workers included
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--url", sim_url, "--isl", "32", "--osl", "64", "--qps", "10",
                             "--duration", "60", "--workers", "2", "--out", str(out), "--name", "r"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_sending(proc: subprocess.Popen, d: Path) -> None:
    deadline = time.monotonic() + 60
    while not list(d.glob("requests.parts/part-*.parquet")):  # the first flush: sending has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started sending"
        time.sleep(0.05)


def test_a_worker_that_dies_fails_only_the_requests_it_held(sim_factory, tmp_path):
    """One of two worker processes is killed mid-run: the requests it held are recorded as failed with the
    reason, every later one goes to the other worker and succeeds, each request is in the file once, and the
    run ends with its summary."""
    sim = sim_factory("--profile", "tiny-test", "--slowdown", "3")  # requests live ~a second: some are in the dead worker's hands
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--url", sim.url, "--isl", "32", "--osl", "64", "--qps", "10",
                             "--requests", "120", "--warmup", "5r", "--workers", "2", "--out", str(tmp_path), "--name", "r"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    d = tmp_path / "r"
    _wait_sending(proc, d)
    time.sleep(3)
    pids = json.loads((d / "run.json").read_text())["client"]["pids"]
    kill_ns = time.perf_counter_ns()
    os.kill(pids[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    doc = json.loads((d / "run.json").read_text())
    assert doc["status"] in ("complete", "failed") and doc["summary"]["n_measured"] == 120, (out, err)
    df = pd.read_parquet(d / "requests.parquet")
    assert sorted(df["index"]) == list(range(125))
    lost = df[~df["ok"]]
    # lost: only requests worker 1 held when it died — handed to it before the watcher (every 0.5 s) saw the death
    assert len(lost) >= 1 and (lost["error_kind"] == "client").all() and (lost["worker"] == 1).all(), lost[["index", "error"]]
    assert lost["error"].str.contains("worker process 1").all() and (lost["intended_ns"] < kill_ns + 1_000_000_000).all()
    after = df[df["intended_ns"] > kill_ns + 1_000_000_000]
    assert len(after) > 30 and (after["worker"] == 0).all() and after["ok"].all()
    per = doc["client_health"]["workers"]
    assert "exited" in per[1]["died"] and "died" not in per[0], (per[0].get("died"), per)


def test_ctrl_c_and_kill_with_workers_lose_nothing_measured(sim_factory, tmp_path):
    """Ctrl-C (SIGINT to the process group): exit 130, `interrupted`, every request handed out is in the file
    once (indices 0..n-1, no gap, no repeat), unfinished ones as `cancelled`, and no worker left. kill -9 of the
    scheduler: the workers exit by themselves and what was flushed is kept, as with one process."""
    sim = sim_factory("--profile", "tiny-test", "--slowdown", "3")  # requests live ~a second: some are in flight at the signal
    proc = _start(sim.url, tmp_path / "int")
    d = tmp_path / "int" / "r"
    _wait_sending(proc, d)
    time.sleep(3)
    pids = json.loads((d / "run.json").read_text())["client"]["pids"]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    doc = json.loads((d / "run.json").read_text())
    assert doc["status"] == "interrupted"
    df = pd.read_parquet(d / "requests.parquet")
    assert sorted(df["index"]) == list(range(len(df))) and len(df) >= 30, df["index"].tolist()
    assert set(df.loc[~df["ok"], "error_kind"]) <= {"cancelled"} and (~df["ok"]).sum() >= 1
    assert set(df["worker"]) == {0, 1} and doc["summary"]["n_ok"] == df["ok"].sum()
    assert not any(alive(p) for p in pids)

    proc = _start(sim.url, tmp_path / "kill")
    d = tmp_path / "kill" / "r"
    _wait_sending(proc, d)
    time.sleep(3)
    pids = json.loads((d / "run.json").read_text())["client"]["pids"]
    kill_ns = time.perf_counter_ns()
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids):  # each worker notices its scheduler is gone within ~0.5 s
        assert time.monotonic() < deadline, f"workers left running after kill -9: {[p for p in pids if alive(p)]}"
        time.sleep(0.1)
    from bench.records import read_records

    ok = [r for r in read_records(d) if r.ok]
    assert len(ok) >= 15 and len({r.index for r in ok}) == len(ok)
    assert {r.worker for r in ok} == {0, 1}
    assert (kill_ns - max(r.end_ns for r in ok)) / 1e9 < 2.0  # parts flushed every second, as with one process


def test_several_replicas_are_measured_as_one_system(sim_factory, tmp_path):
    """Two simulator replicas behind one target, one three times slower: with workers, each request goes to one
    replica; least-in-flight sends the fast one more, round-robin splits evenly; the summary gives each replica's
    share and latency (the slow one's TPOT ~3x), tokens stay exact, and the run records what each replica runs."""
    fast, slow = sim_factory("--profile", "tiny-test"), sim_factory("--profile", "tiny-test", "--slowdown", "3")
    out = {}
    for spread in ("least", "round-robin"):
        trilemma("run", "--url", fast.url, "--url", slow.url, "--spread", spread, "--isl", 32, "--osl", 16, "--qps", 15,
                 "--requests", 150, "--seed", 5, "--workers", 2, "--out", tmp_path / spread, "--name", "r")
        d = tmp_path / spread / "r"
        out[spread] = (json.loads((d / "run.json").read_text()), pd.read_parquet(d / "requests.parquet"))
    for spread, (doc, df) in out.items():
        assert df["ok"].all() and (df["output_tokens"] == 16).all() and set(df["endpoint"]) == {0, 1}
        kinds = [e["server_kind"] for e in doc["target"]["endpoints"]]
        assert kinds[0] and kinds[0] == kinds[1] == doc["target"]["server_kind"] and doc["target"]["spread"] == spread
        per = doc["summary"]["per_endpoint"]
        assert [per[u]["endpoint"] for u in (fast.url, slow.url)] == [0, 1]
        assert sum(per[u]["measured"] for u in per) == doc["summary"]["n_measured"] == 150
        ratio = per[slow.url]["tpot"]["p50"] / per[fast.url]["tpot"]["p50"]
        assert 2.0 < ratio < 4.0, (spread, ratio)
    least, rr = out["least"][0]["summary"]["per_endpoint"], out["round-robin"][0]["summary"]["per_endpoint"]
    assert abs(rr[fast.url]["measured"] - rr[slow.url]["measured"]) <= 1
    assert least[fast.url]["measured"] > least[slow.url]["measured"] > 0


def test_a_point_on_a_local_two_node_ray_cluster_is_one_merged_result(sim_factory, tmp_path):
    """A Ray cluster on 127.0.0.1 — a head and one worker node — and two sender actors spread over them: one
    merged result with every request once, exact tokens and the schema of a one-process run; each actor's clock
    offset is measured (here one host: zero to within its ping's round trip)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        sim = sim_factory("--profile", "tiny-test")
        trilemma("run", "--url", sim.url, "--isl", 32, "--osl", 16, "--qps", 10, "--requests", 100, "--warmup", "10r", "--seed", 3,
                 "--workers", 2, "--ray", cluster.address, "--out", tmp_path, "--name", "r", timeout=300)
        trilemma("run", "--url", sim.url, "--isl", 32, "--osl", 16, "--qps", 10, "--requests", 100, "--warmup", "10r", "--seed", 3,
                 "--out", tmp_path, "--name", "one")
    finally:
        cluster.shutdown()
    doc = json.loads((tmp_path / "r" / "run.json").read_text())
    df = pd.read_parquet(tmp_path / "r" / "requests.parquet")
    assert pq.read_schema(tmp_path / "r" / "requests.parquet") == pq.read_schema(tmp_path / "one" / "requests.parquet")
    assert doc["status"] == "complete" and sorted(df["index"]) == list(range(110))
    assert df["ok"].all() and (df["output_tokens"] == 16).all() and (df["chunk_tokens"].map(sum) == 16).all()
    assert set(df["worker"]) == {0, 1} and doc["summary"]["n_measured"] == 100
    actors = doc["client"]["actors"]
    assert len(actors) == 2 and len({a["node_id"] for a in actors}) == 2, actors  # spread over both nodes
    for a in actors:
        assert abs(a["clock_offset_ns"]) <= a["clock_rtt_ns"] + 1_000_000, a
    one = json.loads((tmp_path / "one" / "run.json").read_text())["summary"]
    assert set(doc["summary"]) == set(one)


def test_calibrate_prints_the_scaling_table_with_several_simulators_behind_the_workers():
    """`calibrate --workers 1,2 --sims 2`: a ladder per worker count against two simulators (requests spread
    over both, each record's bias taken against the simulator that served it) and the scaling table."""
    import re

    p = trilemma("calibrate", "--rates", "10,20", "--duration", "2", "--workers", "1,2", "--sims", "2")
    out = re.sub(r"\s+", " ", p.stdout + p.stderr)
    assert out.count("2 simulators") == 2 and "1 client process" in out and "2 client processes" in out, out
    assert "client scaling" in out and "efficiency vs 1" in out, out
    assert len(re.findall(r"req/s: TTFT bias p50 (-?[\d.]+) ms", out)) == 4, out
    bad = trilemma("calibrate", "--sims", "0", check=False)
    assert bad.returncode != 0 and "--sims 0" in bad.stderr and "Traceback" not in bad.stderr
