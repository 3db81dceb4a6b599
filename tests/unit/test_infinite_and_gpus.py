"""Infinite SLO values survive run.json; GPUs per replica come from the run or the user, never a default."""

import math

import pytest

from bench import cost, metrics
from bench.config import SLO
from bench.knee import fmt, gpus_per_replica
from bench.results import read_run, write_run_doc
from tests.synthetic import synth_records


def test_a_p99_at_exactly_one_percent_failures_is_infinite_not_1e28():
    recs = synth_records(200, 5.0, fail_frac=0.01, seed=1)  # 2 of 200 fail: p99 interpolates towards a failure
    v = metrics.slo_verdict(recs, SLO(metric="ttft", pct=99, threshold_ms=500))
    assert v["value_ms"] == math.inf and not v["met"]
    ok = metrics.slo_verdict(synth_records(200, 5.0, seed=1), SLO(metric="ttft", pct=99, threshold_ms=500))
    assert math.isfinite(ok["value_ms"]) and ok["met"]


def test_an_infinite_slo_value_round_trips_through_run_json(tmp_path):
    recs = synth_records(200, 5.0, fail_frac=0.005, seed=2)
    s = metrics.summarize(recs, [SLO(metric="ttft", pct=99.9, threshold_ms=500)], offered_qps=5.0)
    assert s["slos"][0]["value_ms"] == math.inf
    write_run_doc(tmp_path, {"schema_version": 1, "summary": s})
    assert '"value_ms": null' in (tmp_path / "run.json").read_text()  # strict JSON on disk
    back = read_run(tmp_path).summary
    assert back is not None and back.slos[0].value_ms == math.inf
    assert back.latency_ms["ttft"].p99_ci[1] is None  # a nan (no bound) stays missing, not infinite
    assert fmt(back.slos[0].value_ms) == "∞ (failures)" and fmt(None) == "—"


def test_gpus_per_replica_comes_from_the_label_then_nvml_else_unknown():
    assert gpus_per_replica({"labels": {"gpus": "4"}}) == (4.0, "label")
    env = {"gpus": [{"index": i, "compute_processes": int(i < 2)} for i in range(8)]}
    assert gpus_per_replica({"labels": {}, "environment": env}) == (2.0, "nvml processes")
    assert gpus_per_replica({"labels": {"gpu": "h100"}, "environment": {"gpus": [{"index": 0}]}}) == (None, "unknown")
    with pytest.raises(ValueError, match="gpus=N"):
        gpus_per_replica({"labels": {"gpus": "two"}})


def test_cost_refuses_to_price_an_unknown_replica_size():
    sku = cost.Sku(name="x", tdp_w=700, on_demand=2.0)
    knee = {"knee_qps": 2, "input_tps": 100, "output_tps": 50}
    with pytest.raises(ValueError, match="GPUs per replica unknown"):
        cost.cost_at_knee({**knee, "gpus": math.nan}, sku, cost.CostModel())
    one, two = (cost.cost_at_knee({**knee, "gpus": g}, sku, cost.CostModel()) for g in (1, 2))
    assert two["usd_per_m_output"] == pytest.approx(2 * one["usd_per_m_output"])
