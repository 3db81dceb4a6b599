"""User errors are one clear line, naming the field."""

import pytest
from pydantic import ValidationError

from bench.config import LengthDist, RunSpec, SpecError, parse_slos, validation_message


@pytest.mark.parametrize("text,kind", [("128", "fixed"), ("uniform:10:20", "uniform"), ("normal:100:10", "normal"),
                                       ("lognormal:100:50", "lognormal"), ("trace:azure-conv", "trace")])
def test_length_forms(text, kind):
    d = LengthDist.parse(text)
    assert d.kind == kind and str(d) == text


@pytest.mark.parametrize("bad", ["0", "abc", "uniform:5", "uniform:9:2", "normal:-1:2"])
def test_bad_lengths(bad):
    with pytest.raises(SpecError):
        LengthDist.parse(bad)


def test_slo_parsing_and_presets():
    s = parse_slos("ttft_p99=500ms,itl_p99=0.05s")
    assert [(x.metric, x.pct, x.threshold_ms) for x in s] == [("ttft", 99, 500), ("itl", 99, 50)]
    assert parse_slos("mlperf-llama3.1-8b-interactive")[1].threshold_ms == 30
    with pytest.raises(SpecError, match="METRIC_pPCT"):
        parse_slos("latency=5ms")
    with pytest.raises(SpecError, match="not a duration"):
        parse_slos("ttft_p99=fast")


def test_run_spec_errors_name_the_field():
    with pytest.raises(ValidationError) as e:
        RunSpec(load=dict(qps=1, concurrency=2, duration_s=1))
    assert "exactly one of --qps" in validation_message(e.value)
    with pytest.raises(ValidationError) as e:
        RunSpec(target=dict(url="localhost:8000"), load=dict(qps=1, duration_s=1))
    assert validation_message(e.value).startswith("target.url:")


def test_spec_round_trips_through_json():
    s = RunSpec(workload=dict(isl="uniform:10:20"), load=dict(qps=2, arrival="gamma:2", requests=5))
    again = RunSpec(**s.model_dump(mode="json"))
    assert again == s


def test_a_sweep_ramp_reaches_each_point_and_its_identity_only_when_set():
    from bench.config import SweepSpec
    from bench.sweep import make_run_spec, point_hash, point_key

    base = dict(name="r", target={"url": "http://x"}, cells=[{"isl": 32, "osl": 8}], duration_s=10)
    plain = SweepSpec(**base, load={"qps": [2]})
    ramped = SweepSpec(**base, load={"qps": [2], "ramp_up_s": 5})
    k0, k1 = point_key(plain, 0, "qps", 2, 0, 0), point_key(ramped, 0, "qps", 2, 0, 0)
    assert "ramp_up_s" not in k0 and k1["ramp_up_s"] == 5 and point_hash(k0) != point_hash(k1)
    assert make_run_spec(ramped, "http://x", k1).load.ramp_up_s == 5
    with pytest.raises(ValueError, match="ramp_up_s ramps each point of a qps"):
        SweepSpec(**base, load={"concurrency": [2], "ramp_up_s": 5})


def test_sweep_stages_run_one_staged_point_per_cell_and_are_part_of_its_identity():
    from bench.config import SweepSpec
    from bench.sweep import make_run_spec, point_hash, point_key

    base = dict(name="s", target={"url": "http://x"}, cells=[{"isl": 32, "osl": 8}])
    sp = SweepSpec(**base, load={"ramp_up_s": 3, "stages": [{"qps": 2, "duration": 20}, {"qps": 6, "duration_s": 10}]})
    assert sp.probe_rule() is None  # the stages are the schedule: no probe rule lengthens or stops them
    k = point_key(sp, 0, "stages", 6, 0, 0)
    ld = make_run_spec(sp, "http://x", k).load
    assert ld.rate_pieces() == [(3, 0.0, 2.0), (20.0, 2.0, 2.0), (10.0, 6.0, 6.0)] and ld.duration_s == 30
    other = SweepSpec(**base, load={"stages": "2:20,7:10"})
    assert point_hash(k) != point_hash(point_key(other, 0, "stages", 7, 0, 0))
    for bad, msg in ((dict(load={"stages": "2:20"}, duration_s=10), "drop duration_s"),
                     (dict(load={"stages": "2:20", "qps": [2]}), "exactly one of"),
                     (dict(load={"stages": "2:20"}, warmup="5r"), "warmup in seconds"),
                     (dict(load={"stages": "2-20"}), "QPS:SECONDS")):
        with pytest.raises(ValueError, match=msg):
            SweepSpec(**base, **bad)
