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
