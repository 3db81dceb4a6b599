"""Pure pieces behind issue 12: secret redaction, the control-plane retry rule, input validation,
local tokenizer templates and dataset wrap-around."""

import json

import httpx
import pytest
from pydantic import ValidationError

from bench.client import ControlPlaneError, control_call, redact, redact_url, url_secrets
from bench.config import LoadSpec, RunSpec, SpecError, SweepSpec


def test_redact_removes_keys_bearer_basic_and_url_passwords():
    text = 'HTTP 401: bad key sk-abc123 (header "Authorization: Bearer sk-abc123"), Basic YWxpY2U6cHc=, from http://alice:pw9@h:1/v1'
    out = redact(text, ["sk-abc123", *url_secrets("http://alice:pw9@h:1")])
    assert "sk-abc123" not in out and "YWxpY2U6cHc=" not in out and "pw9" not in out
    assert "Bearer ***" in out and "http://***@h:1/v1" in out and out.startswith("HTTP 401: bad key ***")
    assert redact_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert url_secrets("http://alice@h") == [] and url_secrets("https://u:p%40ss@h") == ["p%40ss"]


def _client(fail_times: int, exc: type[httpx.HTTPError]) -> tuple[httpx.Client, dict]:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= fail_times:
            raise exc("connection reset by peer", request=request)
        return httpx.Response(200, json={"count": 3})

    return httpx.Client(base_url="http://srv", transport=httpx.MockTransport(handler)), calls


def test_control_call_retries_a_stale_connection_once():
    c, calls = _client(1, httpx.ReadError)
    assert control_call("POST /tokenize", "http://srv", lambda: c.post("/tokenize")).json() == {"count": 3}
    assert calls["n"] == 2


@pytest.mark.parametrize("exc", [httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError])
def test_control_call_fails_in_one_line_naming_the_call_after_the_retry(exc):
    c, calls = _client(2, exc)
    with pytest.raises(ControlPlaneError) as e:
        control_call("POST /tokenize", "http://u:secret@srv", lambda: c.post("/tokenize"))
    msg = str(e.value)
    assert calls["n"] == 2 and "\n" not in msg and msg.startswith("POST /tokenize failed:") and "secret" not in msg


def test_control_call_does_not_retry_a_timeout():
    c, calls = _client(5, httpx.ReadTimeout)
    with pytest.raises(ControlPlaneError, match="did not answer within 30 s"):
        control_call("GET /v1/models", "http://srv", lambda: c.get("/v1/models"), 30)
    assert calls["n"] == 1


@pytest.mark.parametrize("load,field", [
    ({"qps": float("inf"), "duration_s": 1}, "--qps"),
    ({"qps": 1, "duration_s": float("inf")}, "--duration"),
    ({"qps": 1e12, "duration_s": 1}, "plans 1,000,000,000,000 requests"),
    ({"concurrency": 1, "requests": 10**9}, "--requests"),
    ({"qps": 1, "duration_s": 1, "warmup": float("inf")}, "--warmup"),
])
def test_absurd_load_is_refused_up_front(load, field):
    with pytest.raises(ValidationError, match=field.replace("+", r"\+")):
        LoadSpec(**load)


def test_a_large_but_sane_point_is_accepted():
    assert LoadSpec(qps=500, duration_s=600).qps == 500


@pytest.mark.parametrize("over,match", [({"gpu_telemetry": "banana"}, "not a GPU telemetry source"),
                                        ({"target": {"request_timeout_s": 0}}, "--timeout must be"),
                                        ({"gpu_telemetry": "dcgm:http://gpu:9400/metrics"}, None)])
def test_run_spec_checks_telemetry_and_timeout(over, match):
    make = lambda: RunSpec(load={"qps": 1, "duration_s": 1}, **over)  # noqa: E731
    if match:
        with pytest.raises(ValidationError, match=match):
            make()
    else:
        assert make().gpu_telemetry == over["gpu_telemetry"]


@pytest.mark.parametrize("over,match", [({"labels": ["a", "b"]}, "write a mapping"), ({"load": {"qps": [1, float("inf")]}}, "finite"),
                                        ({"duration_s": float("inf"), "requests": None}, "duration_s must be a finite")])
def test_sweep_spec_rejects_malformed_fields(over, match):
    base = {"name": "s", "cells": [{"isl": 8}], "load": {"qps": [1]}, "requests": 2}
    with pytest.raises(ValidationError, match=match):
        SweepSpec(**{**base, **over})


def _tokenizer_dir(tmp_path, template_in: str):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<s>": 1, "hello": 2, "world": 3, "user": 4, ":": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    tpl = "{{ bos_token }}{% for m in messages %} {{ m.role }} : {{ m.content }}{% endfor %}"
    cfg = {"bos_token": "<s>"}
    if template_in == "config":
        cfg["chat_template"] = tpl
    else:
        (tmp_path / "chat_template.jinja").write_text(tpl)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("where", ["config", "jinja"])
def test_local_tokenizer_finds_the_chat_template_where_transformers_saves_it(tmp_path, where):
    from bench.prompts import LocalTokenizer

    tok = LocalTokenizer(str(_tokenizer_dir(tmp_path, where)))
    # "<s> user : hello world" -> 5 tokens
    assert tok.count_chat([{"role": "user", "content": "hello world"}]) == 5


def test_local_tokenizer_without_any_template_says_so(tmp_path):
    from bench.prompts import LocalTokenizer

    d = _tokenizer_dir(tmp_path, "jinja")
    (d / "chat_template.jinja").unlink()
    with pytest.raises(SpecError, match="no chat template"):
        LocalTokenizer(str(d)).count_chat([{"role": "user", "content": "hello"}])


def test_a_short_dataset_wraps_around_deterministically(tmp_path):
    from bench.config import WorkloadSpec
    from bench.workload import Workload

    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"p{k}"}) + "\n" for k in range(3)))
    wl = Workload(WorkloadSpec(dataset=f"file:{f}"), None, seed=0)
    items = [wl.item(i) for i in range(7)]
    assert [it.index for it in items] == list(range(7))
    assert [it.prompt for it in items] == ["p0", "p1", "p2", "p0", "p1", "p2", "p0"]
    assert wl.reused == {3, 4, 5, 6}


def test_dataset_chat_content_must_be_text(tmp_path):
    from bench.config import WorkloadSpec
    from bench.datasets import UserFile

    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": 5}]}) + "\n")
    with pytest.raises(SpecError, match=r"c.jsonl:1: messages\[1\].content must be a string"):
        UserFile(str(f), WorkloadSpec())


def test_cancelled_requests_keep_what_they_measured_and_are_not_failures():
    """An interrupt cancels two requests in flight: one after its first token (TTFT 900 ms, two gaps of 10 ms),
    one still queued. The first one's TTFT and gaps are measured values; neither is a failure."""
    from bench.config import parse_slos
    from bench.metrics import summarize
    from bench.records import RequestRecord

    ms = 1_000_000
    recs = [RequestRecord(index=i, intended_ns=i * 100 * ms, sent_ns=i * 100 * ms, end_ns=i * 100 * ms + 200 * ms,
                          chunk_ns=[i * 100 * ms + 100 * ms, i * 100 * ms + 200 * ms], chunk_tokens=[1, 1], output_tokens=2,
                          ok=True) for i in range(20)]
    t = 20 * 100 * ms
    recs.append(RequestRecord(index=20, intended_ns=t, sent_ns=t, end_ns=t + 920 * ms, chunk_ns=[t + 900 * ms, t + 910 * ms, t + 920 * ms],
                              chunk_tokens=[1, 1, 1], error_kind="cancelled", error="run interrupted"))
    recs.append(RequestRecord(index=21, intended_ns=t + ms, sent_ns=t + ms, end_ns=t + 920 * ms, error_kind="cancelled",
                              error="run interrupted"))
    s = summarize(recs, parse_slos({"ttft_p99": "500ms"}), window_ns=(0, t + 2 * ms), mode="concurrency")
    assert s["n_failed"] == 0 and s["n_cancelled"] == 2 and s["n_cancelled_measured"] == 1
    assert s["latency_ms"]["ttft"]["n"] == 21 and s["latency_ms"]["ttft"]["max"] == pytest.approx(900)
    assert s["latency_ms"]["itl"]["n"] == 22 and s["latency_ms"]["e2e"]["n"] == 20
    v = s["slos"][0]
    assert v["n"] == 21 and v["exceed"]["k"] == 1, v  # the queued one is censored: no sample either way
