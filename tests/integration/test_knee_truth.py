"""Knee truth end to end: throughput against an ideal constant-latency server, overload never PASSes, a
request longer than the probe is not failed, and the saturation test stays quiet below capacity."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.config import RunSpec
from bench.sim.engine import load_profile
from tests.integration.conftest import ROOT, free_port, trilemma, wait_healthy


@pytest.fixture
def ideal():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.integration.ideal_server", "--port", str(port), "--ttft-ms", "50",
                             "--itl-ms", "10"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    yield url
    proc.terminate()
    proc.wait(10)


def summary_of(out: Path) -> dict:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((d / "run.json").read_text())["summary"]


@pytest.mark.parametrize("duration,warmup", [(0.6, "0"), (3, "1s")])
def test_ideal_server_rates_equal_offered_for_a_probe_of_three_lifetimes(ideal, tmp_path, duration, warmup):
    """Lifetime = 50 ms + 15 × 10 ms = 0.2 s. At 20 req/s (constant arrivals), 16 tokens each, the server
    delivers exactly 20 req/s and 320 tok/s. A 0.6 s window with no warmup is three lifetimes: counting
    completions inside it reads a third low; the rates must still be within 2%."""
    trilemma("run", "--url", ideal, "--isl", 32, "--osl", 16, "--qps", 20, "--arrival", "constant", "--duration", duration,
             "--warmup", warmup, "--server-metrics", "--gpu-telemetry", "off", "--out", tmp_path)
    s = summary_of(tmp_path)
    assert s["request_throughput"] == pytest.approx(20.0, rel=0.02)
    assert s["output_tps"] == pytest.approx(320.0, rel=0.02)
    arr = s["throughput"]["arrivals"]  # the realized count, independent of the offered rate
    assert arr["request_throughput"] == pytest.approx(20.0, rel=0.02) and arr["output_tps"] == pytest.approx(320.0, rel=0.02)
    assert s["n_failed"] == 0 and not s["saturation"]["saturated"]
    if warmup == "0":  # the completion count in the window is the biased estimator the arrivals one replaces
        assert s["throughput"]["departures"]["request_throughput"] < 0.8 * 20


def _sweep(tmp_path: Path, name: str, **spec) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"name": name, **spec}))
    trilemma("sweep", f, "--out", tmp_path, "--no-plots")
    return tmp_path / name


def test_overload_with_requests_longer_than_the_probe_never_passes(tmp_path):
    """2× capacity, requests living ~8 s, a 3 s probe (the shape of H100 ISL 128 / OSL 1024 at 30 req/s on
    the fast profile): FAIL, and the requests cut off by the early abort are not counted as failures."""
    cap = load_profile("tiny-test").analytic_capacity(128, 256)["qps"]
    d = _sweep(tmp_path, "over", target={"sim": {"profile": "tiny-test"}}, cells=[{"name": "c", "isl": 128, "osl": 256}],
               load={"qps": [round(2 * cap, 2)]}, slos="mlperf-llama3.1-8b", duration_s=3, probe={"max_duration_s": 20})
    (rj,) = (d / "points").glob("*/run.json")
    s = json.loads(rj.read_text())["summary"]
    from bench.knee import knee_table, load_points

    pts = load_points([d])
    assert list(pts["verdict"]) == ["FAIL"], pts[["verdict", "why"]].to_dict("records")
    assert not knee_table(pts).iloc[0]["feasible"]
    assert s["n_failed"] == 0 and s["probe"]["stopped"] in ("fail", "saturated")


def test_a_request_longer_than_the_probe_is_not_failed(sim_factory, tmp_path):
    sim = sim_factory("--profile", "tiny-test")
    trilemma("run", "--url", sim.url, "--isl", 128, "--osl", 256, "--concurrency", 1, "--duration", 3, "--out", tmp_path)
    s = summary_of(tmp_path)
    assert s["n_ok"] >= 1 and s["n_failed"] == 0
    assert s["latency_ms"]["e2e"]["p50"] > 3000  # it outlived the 3 s window and was drained, not cut


def _run_in_process(url: str, out: Path, qps: float, seed: int, prompts) -> dict:
    from bench.runner import execute_run

    spec = RunSpec(target={"url": url}, workload={"isl": 64, "osl": 8}, seed=seed, scrape_metrics=False, gpu_telemetry="off",
                   load={"qps": qps, "duration_s": 3, "warmup": 1.0})
    return execute_run(spec, out / f"seed{seed}", prompts=prompts)["summary"]


def test_saturation_test_has_no_false_positive_below_capacity_over_ten_seeds(sim_factory, tmp_path):
    """5%, 50% and 80% of the simulator's analytic capacity (ISL 64 / OSL 8: lifetimes ~0.3 s, a 3 s window
    is ~10 of them), 10 seeds each: never saturated. Control: 1.6× capacity is saturated in every seed."""
    from bench.prompts import PromptCache

    sim = sim_factory("--profile", "tiny-test")
    cap = load_profile("tiny-test").analytic_capacity(64, 8)["qps"]
    fired = {}
    with PromptCache() as prompts:
        for frac in (0.05, 0.5, 0.8):
            fired[frac] = [s["steady_state"]["reason"] for seed in range(10)
                           if (s := _run_in_process(sim.url, tmp_path / str(frac), frac * cap, seed, prompts))["saturation"]["saturated"]]
        over = [_run_in_process(sim.url, tmp_path / "over", 1.6 * cap, seed, prompts)["saturation"]["saturated"] for seed in range(3)]
    assert not any(fired.values()), fired
    assert all(over)
