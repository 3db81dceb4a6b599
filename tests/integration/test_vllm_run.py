"""`trilemma run` against the real vLLM CPU server, end to end through the CLI."""

import json
import re
import statistics
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest

from bench.results import RUN_SCHEMA_VERSION
from tests.integration.conftest import trilemma

pytestmark = pytest.mark.vllm


def only_run_dir(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_run_end_to_end_exact_tokens(vllm_server, tmp_path):
    p = trilemma("run", "--url", vllm_server["url"], "--isl", 128, "--osl", 64, "--qps", 4, "--requests", 40, "--warmup", "5r",
                 "--slo", "ttft_p99=500ms,itl_p99=50ms", "--out", tmp_path)
    assert "TTFT" in p.stdout and "SLOs:" in p.stdout
    d = only_run_dir(tmp_path)
    doc = json.loads((d / "run.json").read_text())
    assert doc["status"] == "complete" and doc["schema_version"] == RUN_SCHEMA_VERSION
    assert doc["target"]["server_version"] == "0.32.0" and doc["target"]["model"] == vllm_server["model"]
    assert doc["harness"]["version"] and doc["spec"]["load"]["qps"] == 4 and doc["seed"] == 0
    df = pd.read_parquet(d / "requests.parquet")
    assert len(df) == 45 and df["warmup"].sum() == 5
    assert df["ok"].all()
    assert (df["output_tokens"] == 64).all()  # server usage == requested OSL
    assert (df["chunk_tokens"].map(sum) == 64).all()  # per-chunk counts add up, multi-token chunks included
    assert (df["prompt_tokens"] == 128).all()  # exact ISL for the server's tokenizer
    assert df["response_id"].str.startswith("cmpl-").all()
    assert (df["sent_ns"] >= df["intended_ns"]).all() and (df["finish_reason"] == "length").all()
    s = doc["summary"]
    assert s["n_measured"] == 40 and s["output_tokens"] == 40 * 64


def test_chat_api_exact_prompt_tokens(vllm_server, tmp_path):
    trilemma("run", "--url", vllm_server["url"], "--api", "chat", "--isl", "uniform:60:120", "--osl", 16, "--concurrency", 2,
             "--requests", 12, "--out", tmp_path)
    df = pd.read_parquet(only_run_dir(tmp_path) / "requests.parquet")
    assert df["ok"].all() and (df["prompt_tokens"] == df["isl"]).all() and (df["output_tokens"] == 16).all()
    assert df["isl"].nunique() > 3


def _vllm_bench_cmd(vllm_server, out: Path, n: int, rate: float, seed: int) -> list[str]:
    rig = vllm_server["rig"]
    venv, model_dir = rig.setup()
    out.mkdir(parents=True, exist_ok=True)
    return rig.bench_serve_cmd(venv / "bin" / "python") + [
        "--base-url", vllm_server["url"], "--model", vllm_server["model"], "--tokenizer", str(model_dir),
        "--dataset-name", "random", "--random-input-len", "128", "--random-output-len", "64", "--num-prompts", str(n),
        "--request-rate", str(rate), "--ignore-eos", "--seed", str(seed), "--save-result", "--result-dir", str(out),
        "--result-filename", "vllm.json", "--disable-tqdm"]


def test_agrees_with_vllm_bench_serve(vllm_server, tmp_path):
    """p50 TTFT and ITL within 15% of vLLM's own benchmark: same server, same load, at the same time.

    On the 2-core rig each client's own CPU use slows the co-located server (vLLM's CPU worker waits for its
    slowest OpenMP thread), so runs taken one after the other compare two different servers, and a single
    such pair differed by 20%. Run side by side, each at 1.5 req/s, both tools measure the same server under
    the same combined load, and only their measurement differs.

    Decode timing is compared on ITL p50 (~3,500 token gaps a side), not TPOT p50 (one value per request, ~55,
    bimodal between batch-1 and batch-2 steps): in one CI run the TPOT p50 pairs were +3%, -6% and -17% apart
    (medians 3.62 vs 4.35 ms, -17%: failed) while ITL p50 medians were 3.54 vs 4.05 ms (-13%) and TTFT p50
    15.3 vs 16.7 ms (-8%).

    The pairs are compared one by one, not as two sets: in another CI run the server's ITL p50 moved from 1.9 to
    2.8 ms between pairs; per pair ours/vllm was 0.99, 0.83 and 0.93, and the two sets' medians both fell on the
    0.83 pair (-17%: failed) though the typical pair differed by 7%."""
    url = vllm_server["url"]
    rig = vllm_server["rig"]
    ref_ttft, ref_itl, ttft, itl = [], [], [], []
    for rep in range(3):  # three side-by-side pairs, medians compared
        httpx.post(url + "/reset_prefix_cache", timeout=30).raise_for_status()
        ref_dir = tmp_path / f"vllm{rep}"
        peer = subprocess.Popen(_vllm_bench_cmd(vllm_server, ref_dir, n=60, rate=1.5, seed=rep + 1), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**rig.server_env(), "PYTHONUNBUFFERED": "1"})
        log = []
        for line in peer.stdout:  # start ours when vllm bench starts its measured run (after its imports and test request)
            log.append(line)
            if "Starting main benchmark run" in line:
                break
        assert peer.poll() is None, "".join(log[-40:])
        out = tmp_path / f"ours{rep}"
        trilemma("run", "--url", url, "--isl", 128, "--osl", 64, "--qps", 1.5, "--requests", 55, "--seed", rep + 11,
                 "--no-server-metrics", "--out", out)
        rest, _ = peer.communicate(timeout=600)
        assert peer.returncode == 0, "".join(log[-20:]) + rest[-3000:]
        ref = json.loads((ref_dir / "vllm.json").read_text())
        s = json.loads((only_run_dir(out) / "run.json").read_text())["summary"]["latency_ms"]
        ref_ttft.append(ref["median_ttft_ms"])
        ref_itl.append(ref["median_itl_ms"])
        ttft.append(s["ttft_from_send"]["p50"])  # vllm bench measures TTFT from the actual send: like with like
        itl.append(s["itl"]["p50"])
    # each pair shares one server state, pairs do not: the server's speed moves between pairs (ITL p50 1.9 to 2.8 ms
    # within one test), so the tools are compared pair by pair and the median of the three ratios is held to 15%
    for ours, ref, what in ((ttft, ref_ttft, "TTFT"), (itl, ref_itl, "ITL")):
        ratios = [a / b for a, b in zip(ours, ref)]
        assert statistics.median(ratios) == pytest.approx(1.0, abs=0.15), f"{what} p50 ours/vllm per pair: {ratios} ({ours} vs {ref})"


def test_unreachable_url_is_one_line(tmp_path):
    p = trilemma("run", "--url", "http://127.0.0.1:9", "--qps", 1, "--requests", 2, "--out", tmp_path, check=False)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and "cannot reach http://127.0.0.1:9" in p.stderr
    assert "Traceback" not in p.stderr
    doc = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert doc["status"] == "failed" and "cannot reach" in doc["error"]


def test_wrong_model_is_one_line(vllm_server, tmp_path):
    p = trilemma("run", "--url", vllm_server["url"], "--model", "no-such-model", "--qps", 1, "--requests", 2, "--out", tmp_path,
                 check=False)
    assert p.returncode == 1 and "model 'no-such-model' is not served" in p.stderr and "tiny-llama" in p.stderr
    assert json.loads((only_run_dir(tmp_path) / "run.json").read_text())["status"] == "failed"


def test_server_errors_recorded_per_request(vllm_server, tmp_path):
    # ask for more context than the server allows: vLLM answers HTTP 400 to every request
    p = trilemma("run", "--url", vllm_server["url"], "--isl", 2100, "--osl", 8, "--max-model-len", 8192, "--qps", 2, "--requests", 4,
                 "--out", tmp_path, check=False)
    assert p.returncode == 1
    line = p.stderr.strip().splitlines()[-1]
    assert re.search(r"all 4 requests failed \(http=4\).*HTTP 400", line), p.stderr
    d = only_run_dir(tmp_path)
    doc = json.loads((d / "run.json").read_text())
    assert doc["status"] == "failed" and "HTTP 400" in doc["error"]
    df = pd.read_parquet(d / "requests.parquet")
    assert (df["status"] == 400).all() and (df["error_kind"] == "http").all()


def test_server_metrics_timeline_recorded(vllm_server, tmp_path):
    trilemma("run", "--url", vllm_server["url"], "--isl", 64, "--osl", 32, "--qps", 4, "--duration", 4, "--out", tmp_path)
    d = only_run_dir(tmp_path)
    tl = pd.read_parquet(d / "server_metrics.parquet")
    assert len(tl) >= 3 and {"running", "waiting", "kv_usage", "generation_tokens"} <= set(tl.columns)
    srv = json.loads((d / "run.json").read_text())["summary"]["server"]
    assert srv["engine"] == "vllm" and srv["generation_tokens"] > 0 and srv["server_ttft_mean_ms"] > 0
