"""Launch specs: the serve-config grid, the rendered command (token by token), the container form, bad templates."""

import pytest

from bench.config import LaunchSpec, SweepSpec
from bench.launch import LaunchError, config_label, render
from bench.sweep import point_hash, point_key


def test_list_parameters_make_a_grid_and_scalars_stay_fixed():
    ls = LaunchSpec(cmd="vllm serve m --port {port} --max-num-seqs {seqs} --dtype {dtype}", params={"seqs": [1, 16], "dtype": "bfloat16"})
    assert ls.configs() == [{"dtype": "bfloat16", "seqs": 1}, {"dtype": "bfloat16", "seqs": 16}]
    assert config_label(ls.configs()[1]) == "dtype=bfloat16 seqs=16"
    assert render(ls, ls.configs()[1], 8123) == ["vllm", "serve", "m", "--port", "8123", "--max-num-seqs", "16", "--dtype", "bfloat16"]


def test_a_value_with_spaces_stays_one_argument_and_booleans_are_lowercase():
    ls = LaunchSpec(cmd="srv --port {port} --name {name} --flag={on}", params={"name": "a b", "on": True})
    assert render(ls, ls.configs()[0], 1) == ["srv", "--port", "1", "--name", "a b", "--flag=true"]


def test_the_container_form_is_a_docker_run_line_named_for_teardown():
    ls = LaunchSpec(cmd="--model m --port {port}", image="vllm/vllm-openai:v0.11.0", env={"HF_TOKEN_FILE": "/t"}, docker_args=["--shm-size=8g"])
    argv = render(ls, {}, 9000, name="trilemma-1-abc")
    assert argv[:5] == ["docker", "run", "--rm", "--name", "trilemma-1-abc"] and ["--gpus", "all"] == argv[5:7]
    assert "127.0.0.1:9000:9000" in argv and ["-e", "HF_TOKEN_FILE=/t"] == argv[argv.index("-e"):argv.index("-e") + 2]
    assert argv[-5:] == ["vllm/vllm-openai:v0.11.0", "--model", "m", "--port", "9000"] and "--shm-size=8g" in argv


def test_bad_templates_are_refused_with_one_line():
    with pytest.raises(ValueError, match="must listen on {port}"):
        LaunchSpec(cmd="vllm serve m")
    with pytest.raises(LaunchError, match="uses {seqs}"):
        render(LaunchSpec(cmd="srv --port {port} --max-num-seqs {seqs}"), {}, 1)
    with pytest.raises(ValueError, match="sim .* or launch"):
        SweepSpec(name="x", cells=[{"isl": 8, "osl": 8}], load={"qps": [1]}, requests=5,
                  target={"sim": {}, "launch": {"cmd": "srv --port {port}"}})


def test_a_points_identity_holds_its_serve_config_not_the_grid_or_the_port():
    base = dict(name="x", cells=[{"isl": 8, "osl": 8}], load={"qps": [1]}, requests=5)
    a = SweepSpec(**base, target={"launch": {"cmd": "srv --port {port} -s {s}", "params": {"s": [1, 2]}}})
    b = SweepSpec(**base, target={"launch": {"cmd": "srv --port {port} -s {s}", "params": {"s": [1, 2, 4]}}})
    k1, k2 = point_key(a, 0, "qps", 1, 0, 0, serve={"s": 1}), point_key(a, 0, "qps", 1, 0, 0, serve={"s": 2})
    assert point_hash(k1) != point_hash(k2) and point_hash(k1) == point_hash(point_key(b, 0, "qps", 1, 0, 0, serve={"s": 1}))
    assert "url" not in k1["target"] and k1["target"]["launch"] == {"cmd": "srv --port {port} -s {s}", "config": {"s": 1}}


def test_the_report_names_the_cheapest_serve_config_at_the_slo():
    import math

    import pandas as pd

    from bench.report.data import best_serve_configs

    knees = pd.DataFrame([
        {"sweep": "s", "cell": "c (seqs=1)", "base_cell": "c", "serve_config": "seqs=1", "mode": "qps", "feasible": True, "knee": 1.0,
         "usd_per_m_output": 2.5},
        {"sweep": "s", "cell": "c (seqs=16)", "base_cell": "c", "serve_config": "seqs=16", "mode": "qps", "feasible": True, "knee": 3.0,
         "usd_per_m_output": 0.9},
        {"sweep": "s", "cell": "c (seqs=64)", "base_cell": "c", "serve_config": "seqs=64", "mode": "qps", "feasible": False, "knee": None,
         "usd_per_m_output": math.nan},
        {"sweep": "s", "cell": "d", "base_cell": "d", "serve_config": "", "mode": "qps", "feasible": True, "knee": 2.0, "usd_per_m_output": 1.0},
    ])
    (line,) = best_serve_configs(knees)
    assert line.startswith("s / c: best serve config seqs=16 — $0.900 per M output tokens at its knee (3 req/s)") and "seqs=1 $2.500" in line


def test_a_model_mix_is_parsed_checked_and_drawn_by_weight_from_the_seed():
    import numpy as np

    from bench.config import TargetSpec
    from bench.datasets import WorkItem
    from bench.runner import model_picker

    t = TargetSpec(model="base=0.7,lora-a=0.3")
    assert t.model_mix == {"base": 0.7, "lora-a": 0.3} and t.model == "base"
    assert TargetSpec(model={"a": 1, "b": 3}).model == "b"
    for bad, msg in (("a=1", "two or more"), ("a=1,b=0", "positive weight"), ("a=x,b=1", "NAME=WEIGHT")):
        with pytest.raises(ValueError, match=msg):
            TargetSpec(model=bad)
    pick = model_picker({"base": 0.7, "lora-a": 0.3}, seed=1)
    names = [pick(WorkItem(index=i, prompt="p", isl=1, osl=1)) for i in range(4000)]
    assert abs(np.mean([n == "lora-a" for n in names]) - 0.3) < 3 * (0.21 / 4000) ** 0.5
    assert names == [model_picker({"base": 0.7, "lora-a": 0.3}, seed=1)(WorkItem(index=i, prompt="p", isl=1, osl=1)) for i in range(4000)]
    turns = {pick(WorkItem(index=16 * 7 + k, prompt="p", isl=1, osl=1, conversation=7, turn=k)) for k in range(5)}
    assert len(turns) == 1  # a conversation stays on one model


def test_the_gpu_box_script_writes_a_valid_launched_sweep(tmp_path):
    """scripts/gpu_box.sh --dry-run: the sweep it would run validates, launches vLLM with the model, tensor
    parallel size and extra flags given, labels GPUs per replica; bad arguments exit 2 with one line."""
    import subprocess
    from pathlib import Path

    from bench.config import load_sweep_spec

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_box.sh"
    p = subprocess.run(["bash", str(script), "org/Model-8B", "--tp", "2", "--serve-args", "--max-num-seqs 256", "--slo",
                        "ttft_p90=300ms,tpot_p50=30ms", "--out", str(tmp_path), "--dry-run"], capture_output=True, text=True, check=True)
    spec = load_sweep_spec(tmp_path / "box-org-Model-8B-tp2.yaml")
    assert spec.target.launch is not None and spec.load.auto is not None
    assert "vllm serve org/Model-8B" in spec.target.launch.cmd and "--tensor-parallel-size 2 --max-num-seqs 256" in spec.target.launch.cmd
    assert [str(s) for s in spec.slos] == ["ttft_p90<=300ms", "tpot_p50<=30ms"] and spec.labels["gpus"] == "2"
    assert "would run" in p.stdout
    bad = subprocess.run(["bash", str(script), "--tp", "0", "m", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--tp must be a positive integer" in bad.stderr
