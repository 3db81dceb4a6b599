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


def test_undecided_loads_above_the_knee_are_neither_a_bracket_nor_not_reached(tmp_path):
    """No load failed, but the load above the knee stayed undecided (its TTFT median sits on the threshold): the
    knee is a lower bound whose end is not decided — not 'every tested load passed', and not a closed bracket."""
    from bench.config import SLO
    from bench.knee import knee_table, load_points
    from tests.synthetic import write_sweep

    write_sweep(tmp_path, "s", loads=(5.0, 10.0), slos=[SLO(metric="ttft", pct=50, threshold_ms=60)])
    pts = load_points([tmp_path / "s"]).set_index("load")
    assert pts.loc[5.0, "verdict"] == "PASS" and pts.loc[10.0, "verdict"] == "UNDECIDED", pts[["verdict", "why"]]
    k = knee_table(load_points([tmp_path / "s"])).iloc[0]
    assert k["knee"] == 5.0 and k["bracket_hi"] is None and k["bracket"] == "[5, 10?]", k.to_dict()
    assert k["bottleneck"] == "undecided above the knee" and "10 qps stayed undecided" in k["bottleneck_evidence"]
    assert "every tested load passed" not in k["note"] and "at least 5" in k["note"]


def test_a_bracketed_knee_with_an_undecided_load_inside_says_so_in_its_note(tmp_path):
    """PASS, UNDECIDED, FAIL: the bracket closes at the failure and the note names the undecided load, as a
    sentence of its own (not a dangling '; ' after an empty note)."""
    from bench.config import SLO
    from bench.knee import knee_table, load_points
    from tests.synthetic import write_sweep

    write_sweep(tmp_path, "s", loads=(5.0, 10.0, 40.0), slos=[SLO(metric="ttft", pct=50, threshold_ms=60)])
    k = knee_table(load_points([tmp_path / "s"])).iloc[0]
    assert k["knee"] == 5.0 and k["bracket"] == "[5, 40]" and k["note"] == "undecided between: 10 qps", k.to_dict()
