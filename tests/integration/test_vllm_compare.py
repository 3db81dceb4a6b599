"""The regression gate against the real vLLM rig: the same server twice is no regression; the same server
started with `--max-num-seqs 1` (requests served one at a time) is one, and the gate says which rule fired."""

import json

import pytest
import yaml

from tests.integration.conftest import trilemma

pytestmark = pytest.mark.vllm

# Run-to-run noise of this rig on a 2-core box, measured: same-server p50/p90 latency deltas of up to ~15%
# (vLLM's CPU worker waits for its slowest OpenMP thread). The gate threshold sits beyond that noise; the
# throttled server is slower by far more (TTFT several times over at 4 req/s: a queue forms).
THRESHOLD = "30%"


def _sweep(tmp_path, name: str, url: str):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "target": {"url": url}, "cells": [{"name": "c", "isl": 64, "osl": 32}],
        "load": {"qps": [2, 4]}, "requests": 120, "warmup": "10r", "seed": 0, "repeats": 2,
        "slos": {"ttft_p50": "500ms", "tpot_p50": "100ms"}, "labels": {"gpu": "cpu-rig", "gpus": "1"}}))
    trilemma("sweep", spec, "--out", tmp_path, "--no-plots")
    return tmp_path / name


def test_same_server_is_no_regression_and_max_num_seqs_1_is(vllm_server, tmp_path):
    base = _sweep(tmp_path, "base", vllm_server["url"])
    same = _sweep(tmp_path, "same", vllm_server["url"])
    p = trilemma("compare", base, same, "--fail-on-regression", THRESHOLD, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    rig = vllm_server["rig"]
    proc, url = rig.start_server(max_num_seqs=1)
    try:
        slow = _sweep(tmp_path, "slow", url)
    finally:
        rig.stop_server(proc)
    p = trilemma("compare", base, slow, "--fail-on-regression", THRESHOLD, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "regression beyond 30%" in p.stderr and "latency rule" in p.stderr
    doc = json.loads(next((slow / "points").glob("*/run.json")).read_text())
    assert doc["target"]["server_kind"] == "vllm"
