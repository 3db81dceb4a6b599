"""Metric functions on hand-made records (ms = 1e6 ns)."""

import math

import pytest

from bench import metrics
from bench.config import parse_slos
from bench.records import RequestRecord

MS = 1_000_000


def rec(i=0, intended=0, sent=1 * MS, chunks=(50, 60, 80), toks=(1, 1, 2), end=85, ok=True, out=None, warm=False, **kw):
    r = RequestRecord(index=i, intended_ns=intended, sent_ns=sent, chunk_ns=[c * MS + intended for c in chunks],
                      chunk_tokens=list(toks), end_ns=end * MS + intended, ok=ok, warmup=warm,
                      output_tokens=out if out is not None else sum(toks), osl=sum(toks), **kw)
    return r


def test_ttft_from_intended_and_from_send():
    r = rec(intended=0, sent=5 * MS)
    assert metrics.ttft_ms(r) == pytest.approx(50.0)
    assert metrics.ttft_from_send_ms(r) == pytest.approx(45.0)
    assert metrics.send_lag_ms(r) == pytest.approx(5.0)


def test_multi_token_chunk_splits_into_equal_gaps():
    # chunks at 50, 60, 80 ms carrying 1, 1, 2 tokens: gaps 10 (1 token), then 20 split over 2 tokens
    assert metrics.itl_ms(rec()) == pytest.approx([10.0, 10.0, 10.0])
    assert metrics.chunk_gaps_ms(rec()) == pytest.approx([10.0, 20.0])


def test_tpot_uses_e2e_and_output_tokens():
    r = rec()  # E2E 85, TTFT 50, 4 tokens -> (85-50)/3
    assert metrics.tpot_ms(r) == pytest.approx(35 / 3)
    assert math.isnan(metrics.tpot_ms(rec(chunks=(50,), toks=(1,), end=50)))


def test_e2e_from_intended():
    assert metrics.e2e_ms(rec(intended=7 * MS, end=85)) == pytest.approx(85.0)


def test_summary_excludes_warmup_and_counts_failures():
    recs = [rec(i, intended=i * 100 * MS) for i in range(10)]
    recs[0].warmup = True
    recs[5] = rec(5, intended=500 * MS, chunks=(), toks=(), end=10, ok=False, out=0, error_kind="http", status=500)
    s = metrics.summarize(recs, parse_slos("ttft_p50=100ms"), offered_qps=10)
    assert s["n_measured"] == 9 and s["n_warmup"] == 1
    assert s["n_ok"] == 8 and s["n_failed"] == 1 and s["errors"] == {"http": 1}
    # window: first measured intended (100 ms) to last end (900+85 ms)
    assert s["window_s"] == pytest.approx(0.885)
    assert s["output_tps"] == pytest.approx(8 * 4 / 0.885)
    assert s["latency_ms"]["ttft"]["p50"] == pytest.approx(50.0)
    assert s["attainment"] == pytest.approx(8 / 9)


def test_slo_verdict_counts_failed_requests_as_slow():
    recs = [rec(i, intended=i * 100 * MS) for i in range(4)] + [rec(9, ok=False, chunks=(), toks=(), out=0, end=1)]
    v = metrics.slo_verdict(recs, parse_slos("ttft_p90=100ms")[0])
    assert not v["met"]  # the failure sits above p80
    v = metrics.slo_verdict(recs[:4], parse_slos("ttft_p90=100ms")[0])
    assert v["met"] and v["value_ms"] == pytest.approx(50.0)


def test_request_meets_itl_uses_own_percentile():
    slow = rec(chunks=(50, 60, 200), toks=(1, 1, 1), end=200)
    assert not metrics.request_meets(slow, parse_slos("itl_p99=50ms"))
    assert metrics.request_meets(rec(), parse_slos("itl_p99=50ms,ttft_p99=60ms"))


def test_warnings_name_their_remedy():
    recs = [rec(i, intended=i * 100 * MS, sent=i * 100 * MS + 20 * MS) for i in range(30)]
    s = metrics.summarize(recs, [], offered_qps=10)
    text = " ".join(s["warnings"])
    assert "send lag" in text and "lower the rate" in text
    assert "too few samples" in text and "raise --duration" in text


def test_token_mismatch_detected():
    r = rec(out=3)  # chunk tokens say 4, usage says 3, osl 4
    s = metrics.summarize([r], [])
    assert s["token_mismatch"]["output"] == 1
    assert any("token-count mismatch" in w for w in s["warnings"])


def test_saturation_signal_from_rising_ttft():
    recs = [rec(i, intended=i * 100 * MS, chunks=(50 + 10 * i, 60 + 10 * i), toks=(1, 1), end=70 + 10 * i) for i in range(40)]
    sat = metrics.saturation(recs, "qps")
    assert sat["saturated"] and "TTFT rose" in sat["reason"]
    flat = [rec(i, intended=i * 100 * MS) for i in range(40)]
    assert not metrics.saturation(flat, "qps")["saturated"]


def test_steady_state_window_excludes_drain():
    # one request every 100 ms for 3 s; each lasts 1 s and streams 4 tokens at 250 ms spacing
    recs = [rec(i, intended=i * 100 * MS, chunks=(250, 500, 750, 1000), toks=(1, 1, 1, 1), end=1000) for i in range(31)]
    s = metrics.summarize(recs, [])
    assert s["window_kind"] == "send" and s["window_s"] == pytest.approx(3.0)
    # requests ending in [0, 3 s): those sent at 0..1.9 s -> 20; steady rate would be 10/s with ramp-up
    assert s["request_throughput"] == pytest.approx(20 / 3.0)
    # tokens arriving in [0, 3 s): every request's chunks before 3 s
    expected = sum(1 for i in range(31) for c in (250, 500, 750, 1000) if i * 100 + c < 3000)
    assert s["output_tps"] == pytest.approx(expected / 3.0)
    assert s["output_tps_incl_drain"] == pytest.approx(31 * 4 / 4.0)
