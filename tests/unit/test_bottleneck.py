"""What binds a knee, read from the first failing load's server state and latencies."""

from bench.knee import bottleneck
from bench.summary import PointSummary


def summ(server=None, ttft=(100, 200), itl=(10, 12), warnings=()):
    return PointSummary.model_validate({
        "server": server, "warnings": list(warnings),
        "latency_ms": {"ttft": {"p50": ttft[0], "p99": ttft[1]}, "itl": {"p50": itl[0], "p99": itl[1]},
                       "send_lag": {"p50": 0.1, "p99": 0.5}}})


def test_each_mechanism_is_named_from_its_evidence():
    knee = summ(server={"running_mean": 4, "waiting_max": 0, "kv_usage_max": 0.1})
    cap = {"batch_cap": 16}
    m, ev, fix = bottleneck(knee, summ(server={"running_mean": 15.5, "waiting_max": 30, "kv_usage_max": 0.4}), "ttft_p99", cap)
    assert m == "batch cap" and "max_num_seqs 16" in ev and "max_num_seqs" in fix
    m, ev, _ = bottleneck(knee, summ(server={"running_mean": 9, "waiting_max": 12, "kv_usage_max": 0.97}), "ttft_p99", cap)
    assert m == "KV capacity" and "97%" in ev
    m, _, _ = bottleneck(knee, summ(server={"running_mean": 9, "waiting_max": 12, "kv_usage_max": 0.3}), "ttft_p99", cap)
    assert m == "queueing (engine throughput)"
    m, ev, fix = bottleneck(knee, summ(server={"running_mean": 9, "waiting_max": 0}, itl=(10, 48)), "itl_p99", cap)
    assert m == "prefill interference in ITL" and "p99 48.0" in ev and "max_num_batched_tokens" in fix
    m, _, _ = bottleneck(knee, summ(server={"running_mean": 9, "waiting_max": 0}, itl=(40, 45)), "itl_p99", cap)
    assert m == "decode step time"
    m, _, fix = bottleneck(knee, summ(server={"waiting_max": 0}, warnings=[{"code": "client_stalls", "message": "x"}]),
                           "ttft_p99", cap)
    assert m == "client" and "--workers" in fix
    assert bottleneck(knee, None, "ttft_p99", cap)[0] == "not reached"


def test_without_server_metrics_only_the_delivered_rate_speaks():
    knee = summ()
    m, ev, _ = bottleneck(knee, summ(), "ttft_p99", {})
    assert m == "undetermined"
    sat = summ()
    sat.saturation.saturated = True
    assert bottleneck(knee, sat, "ttft_p99", {})[0] == "queueing (engine throughput)"


def test_a_harmless_client_warning_is_not_a_client_bottleneck():
    above = summ(server={"running_mean": 3, "waiting_max": 0}, ttft=(900, 1500),
                 warnings=[{"code": "client_counted_tokens", "message": "no usage"}])
    m, ev, fix = bottleneck(summ(), above, "ttft_p99", {"batch_cap": 16})
    assert m == "prefill time" and "TTFT p50 900.0" in ev and "chunk budget" in fix
