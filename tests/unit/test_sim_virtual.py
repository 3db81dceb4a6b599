"""Virtual-time engine runs against hand-computed values and the analytic capacity; the profile fit recovers
coefficients it did not start from; validation points render their published source."""

import math

import pytest

from bench.sim.engine import load_profile
from bench.sim.validate import gemm_ms, run_validation
from bench.sim.virtual import simulate
from bench.simfit import Probe, fit, predict


def test_one_request_at_a_time_is_the_hand_computed_step_times():
    p = load_profile("tiny-test")
    isl, osl = 100, 20
    v = simulate(p, isl, osl, concurrency=1, n_requests=5)
    # TTFT: one prefill step of the whole prompt (it fits the chunk budget), its token sampled
    assert v.pct("ttft", 0.5) == pytest.approx(p.step_time_s(0, 0, isl, 1) * 1e3, rel=1e-9)
    # token k (k >= 2) is a decode step over the context isl + k - 1 tokens
    gaps = [p.step_time_s(1, isl + k, 0, 1) * 1e3 for k in range(1, osl)]
    assert v.pct("tpot", 0.5) == pytest.approx(sum(gaps) / len(gaps), rel=1e-9)
    assert v.requests == 5 and len(v.itl_ms) == 5 * (osl - 1)


def test_a_long_prompt_is_split_by_the_chunk_budget():
    p = load_profile("tiny-test").model_copy(update={"max_num_batched_tokens": 256})
    v = simulate(p, 1000, 4, concurrency=1, n_requests=2)
    chunks = [p.step_time_s(0, 0, 256), p.step_time_s(0, 0, 256), p.step_time_s(0, 0, 256), p.step_time_s(0, 0, 232, 1)]
    assert v.pct("ttft", 0.5) == pytest.approx(sum(chunks) * 1e3, rel=1e-9)


def test_queue_and_prefill_times_are_vllms_split_of_ttft():
    """vLLM's request_queue_time (arrival to first scheduled) and request_prefill_time (first scheduled to first
    token) add up to the engine's TTFT: one request at a time never queues and its prefill is the prompt's chunks;
    sixteen at once behind a one-sequence cap queue for every request ahead of them."""
    p = load_profile("tiny-test").model_copy(update={"max_num_batched_tokens": 256})
    v = simulate(p, 1000, 4, concurrency=1, n_requests=3)
    assert v.queue_ms == [0.0] * 3
    assert v.prefill_ms == pytest.approx(v.ttft_ms, rel=1e-12)
    one = p.model_copy(update={"max_num_seqs": 1})
    v = simulate(one, 100, 8, concurrency=16, n_requests=16)
    assert all(q + f == pytest.approx(t, abs=1e-9) for q, f, t in zip(v.queue_ms, v.prefill_ms, v.ttft_ms))
    e2e1 = p.step_time_s(0, 0, 100, 1) + sum(p.step_time_s(1, 100 + k, 0, 1) for k in range(1, 8))
    assert sorted(v.queue_ms)[-1] == pytest.approx(15 * e2e1 * 1e3, rel=1e-9)  # the last waits for fifteen whole requests
    assert max(v.prefill_ms) == pytest.approx(p.step_time_s(0, 0, 100, 1) * 1e3, rel=1e-9)


@pytest.mark.parametrize("isl,osl", [(128, 256), (64, 32)])
def test_saturation_throughput_is_the_analytic_capacity(isl, osl):
    # the analytic formula spreads prefill evenly over steps; where one prompt's prefill makes a step compute-bound
    # (e.g. 512/64 here) it is an upper bound (0.6x measured in virtual time): the virtual engine is the truth there
    p = load_profile("tiny-test")
    cap = p.analytic_capacity(isl, osl)["qps"]
    v = simulate(p, isl, osl, rate=cap * 2.0, n_requests=1500, seed=1)
    assert v.request_tps == pytest.approx(cap, rel=0.06)
    assert v.seq_capped_steps + v.kv_blocked_steps > 0.5 * v.steps  # past capacity: admission binds


def test_below_capacity_the_queue_stays_short():
    p = load_profile("tiny-test")
    cap = p.analytic_capacity(128, 64)["qps"]
    v = simulate(p, 128, 64, rate=cap * 0.3, n_requests=600, seed=2)
    assert v.request_tps == pytest.approx(cap * 0.3, rel=0.15)
    assert v.pct("ttft", 0.5) < 5 * p.step_time_s(0, 0, 128, 1) * 1e3


def test_fit_recovers_coefficients_it_did_not_start_from():
    truth = load_profile("tiny-test").model_copy(update={"step_overhead_ms": 4.0, "flop_eff": 0.3, "mem_eff": 0.6,
                                                          "api_overhead_ms": 2.0})
    probes = []
    for isl, osl, mode, load in ((64, 32, "concurrency", 1), (256, 32, "concurrency", 4), (64, 64, "concurrency", 12)):
        p = Probe(isl, osl, mode, load, {}, f"{isl}/{osl}@{load}")
        pred = predict(truth, p, n_requests=60)
        p.measured = {k: pred[k] for k in ("tpot_p50", "itl_p50", "ttft_p50", "output_tps")}
        probes.append(p)
    base = load_profile("tiny-test")  # overhead 5 ms, flop_eff 0.5, mem_eff 0.8, api 0
    res = fit(base, probes, n_requests=60)
    assert res.max_abs_error < 0.03, res.rows
    got = res.profile
    assert got.step_overhead_ms == pytest.approx(4.0, rel=0.1)
    assert got.api_overhead_ms == pytest.approx(2.0, rel=0.25)


def test_gemm_roofline_is_hand_computed():
    p = load_profile("h100-llama3-8b")
    body = (8.03 - 0.525 - 0.525) * 1e9
    assert gemm_ms(p, 1) == pytest.approx(body * 2 / (3350e9 * p.mem_eff) * 1e3)
    assert gemm_ms(p, 2048) == pytest.approx(2 * body * 2048 / (989e12 * p.flop_eff) * 1e3)


def test_every_validation_point_names_its_source_and_kind_and_holds():
    rows = run_validation()
    assert rows and all(r.source and r.kind in ("primary", "derived") for r in rows)
    assert all(math.isfinite(r.predicted) for r in rows)
    assert [r for r in rows if not r.ok] == []
    # calibration points are marked as such; the rest are predictions
    assert 0 < sum(r.calibrated for r in rows) < len(rows)


def test_validate_exits_non_zero_when_a_point_is_outside_its_tolerance(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import bench.sim.validate as val
    from bench.cli import app

    res = CliRunner().invoke(app, ["sim", "--validate"])
    assert res.exit_code == 0 and "figures within tolerance" in res.output, res.output
    bad = tmp_path / "v.yaml"
    bad.write_text("points:\n  - {id: too-slow, profile: h100-llama3-8b, gemm_tokens: 1, published: {gemm_ms: 2.0}, source: x}\n")
    monkeypatch.setattr(val, "VALIDATION_FILE", bad)
    monkeypatch.setattr(val.run_validation, "__defaults__", (bad,))
    res = CliRunner().invoke(app, ["sim", "--validate"])
    assert res.exit_code == 1 and "0/1 figures within tolerance" in res.output, res.output


def test_paged_kv_preempts_the_newest_request_and_every_request_still_completes():
    # 1000 KV tokens, prompts of 100 growing to 300: ten fit at admission, three at their full length
    p = load_profile("tiny-test").model_copy(update={"kv_preemption": True, "gpu_mem_gib": 2.0, "gpu_mem_util": 1.0})
    kv = p.kv_capacity_tokens
    p = p.model_copy(update={"gpu_mem_gib": (p.weight_bytes + 1000 * p.kv_bytes_per_token) / 2**30})
    assert p.kv_capacity_tokens == pytest.approx(1000, abs=1) and kv > 1000
    v = simulate(p, 100, 200, concurrency=10, n_requests=30)
    assert v.requests == 30 and len(v.itl_ms) == 30 * 199  # every token of every request, none twice
    assert v.preemptions > 0 and v.kv_peak <= p.kv_capacity_tokens
    reserved = load_profile("tiny-test").model_copy(update={"gpu_mem_gib": p.gpu_mem_gib, "gpu_mem_util": 1.0})
    r = simulate(reserved, 100, 200, concurrency=10, n_requests=30)
    assert r.preemptions == 0 and r.requests == 30
    # reserving prompt + max_tokens admits 3 at a time; paged KV admits more and preempts: not slower here
    assert v.output_tps >= 0.9 * r.output_tps


def test_a_shared_host_stretches_steps_by_what_streaming_takes():
    """host_ms_per_token c: one request at a time streams 1/step tokens per second, which takes c/step of the
    engine's core, so in steady state a step lasts step0/(1 − c/step), i.e. step0 + c (hand-computed). The analytic
    capacity solves the same relation at the batch limit."""
    p = load_profile("tiny-test")
    base = simulate(p, 64, 400, concurrency=1, n_requests=2)
    host = simulate(p.model_copy(update={"host_ms_per_token": 4.0}), 64, 400, concurrency=1, n_requests=2)
    late = host.itl_ms[-100:]  # past the first second's window
    assert sum(late) / len(late) == pytest.approx(base.pct("itl", 0.5) + 4.0, rel=0.01)
    cap0 = p.analytic_capacity(64, 32)
    cap = p.model_copy(update={"host_ms_per_token": 0.5}).analytic_capacity(64, 32)
    x = cap0["qps"]
    assert cap["qps"] == pytest.approx(x / (1 + x * 32 * 0.5e-3), rel=1e-9)


def test_a_knee_predicted_far_beyond_the_probes_batch_is_called_extrapolated(capsys):
    """`sim fit --predict` says when the predicted knee runs a decode batch several times the largest the probes
    ran: the per-sequence step cost was fitted where it hardly showed (the vLLM CPU rig: probes at batch ~1.4
    predicted +47 %, probes up to batch ~7 +15 %)."""
    from bench.config import parse_slos
    from bench.sim.engine import load_profile
    from bench.simfit import Probe, predict_knee, print_predicted_knee, probes_batch

    prof = load_profile("tiny-test")
    slos = parse_slos("ttft_p90=500ms,tpot_p90=60ms")
    knee, at = predict_knee(prof, 64, 32, slos)
    assert knee is not None and at["mean_batch"] > 3
    low = probes_batch(prof, [Probe(64, 32, "qps", 0.2, {}, "low")])
    near = probes_batch(prof, [Probe(64, 32, "qps", knee, {}, "near")])
    assert low < at["mean_batch"] / 3 <= near  # the batch grows with the rate; at the knee's rate it is the knee's
    print_predicted_knee((64, 32), slos, knee, at, low)
    assert "extrapolated" in capsys.readouterr().out
    print_predicted_knee((64, 32), slos, knee, at, near)
    assert "extrapolated" not in capsys.readouterr().out
