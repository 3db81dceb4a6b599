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
    s = metrics.summarize(recs, parse_slos("ttft_p50=100ms"), offered_qps=10, window_ns=(100 * MS, 1000 * MS))
    assert s["n_measured"] == 9 and s["n_warmup"] == 1
    assert s["n_ok"] == 8 and s["n_failed"] == 1 and s["errors"] == {"http": 1}
    assert s["window_s"] == pytest.approx(0.9)
    assert s["output_tps"] == pytest.approx(8 * 4 / 0.9)  # the window's sends that completed, with their tokens
    assert s["latency_ms"]["ttft"]["p50"] == pytest.approx(50.0)
    assert s["attainment"] == pytest.approx(8 / 9)


def test_slo_verdict_counts_failed_requests_as_slow():
    recs = [rec(i, intended=i * 100 * MS) for i in range(4)] + [rec(9, ok=False, chunks=(), toks=(), out=0, end=1)]
    v = metrics.slo_verdict(recs, parse_slos("ttft_p90=100ms")[0])
    assert not v["met"] and v["value_ms"] == math.inf  # the failure sits above p80: inf, not a huge number
    assert v["exceed"]["k"] == 1 and v["decision"] == "undecided"  # 1 of 5 over: 5 samples cannot decide p90
    v = metrics.slo_verdict(recs[:4], parse_slos("ttft_p90=100ms")[0])
    assert v["met"] and v["value_ms"] == pytest.approx(50.0) and v["decision"] == "undecided"


def test_attainment_tests_each_requests_own_itl_percentile():
    slow = rec(0, chunks=(50, 60, 200), toks=(1, 1, 1), end=200)  # its own ITL p99 is ~139 ms
    fast = [rec(i, intended=i * 10 * MS) for i in range(1, 10)]  # gaps of 10 ms, TTFT 50 ms
    w = (0, 100 * MS)
    assert metrics.summarize([slow, *fast], parse_slos("itl_p99=50ms"), window_ns=w)["attainment"] == pytest.approx(0.9)
    assert metrics.summarize([slow, *fast], parse_slos("itl_p99=50ms,ttft_p99=60ms"), window_ns=w)["attainment"] == pytest.approx(0.9)
    assert metrics.summarize([slow, *fast], parse_slos("ttft_p99=40ms"), window_ns=w)["attainment"] == 0


def test_warnings_name_their_remedy():
    recs = [rec(i, intended=i * 100 * MS, sent=i * 100 * MS + 20 * MS) for i in range(30)]
    s = metrics.summarize(recs, [], offered_qps=10)
    by = {w["code"]: w for w in s["warnings"]}
    assert set(by) == {"send_lag", "too_few_samples"}, by
    assert "lower the rate" in by["send_lag"]["remedy"] and by["send_lag"]["values"]["p99_ms"] > by["send_lag"]["values"]["limit_ms"]
    assert by["too_few_samples"]["values"] == {"n": 30, "need": 299} and "raise --duration" in by["too_few_samples"]["remedy"]
    assert all(w["text"] == f"{w['message']}; {w['remedy']}" for w in s["warnings"])


def test_token_mismatch_detected():
    r = rec(out=3)  # chunk tokens say 4, usage says 3, osl 4
    s = metrics.summarize([r], [])
    assert s["token_mismatch"]["output"] == 1
    assert [w["values"]["output"] for w in s["warnings"] if w["code"] == "token_mismatch"] == [1]


def test_steady_state_flags_a_growing_queue_not_a_stable_one():
    # arrivals every 100 ms for 20 s; the stable server answers each in 300 ms, the overloaded one
    # completes one request per 200 ms in arrival order (FIFO), so its queue grows by 5 per second
    starts = [i * 100 * MS for i in range(200)]
    stable = [s + 300 * MS for s in starts]
    over = [(i + 1) * 200 * MS + 300 * MS for i in range(200)]
    meas = [s >= 2000 * MS for s in starts]
    t0, t1 = 2000 * MS, 20_000 * MS
    ok = metrics.steady_state(starts, stable, meas, t0, t1, "qps")
    assert not ok["saturated"] and ok["steady"] and ok["keep_up"]["ratio"] == pytest.approx(1.0, abs=0.05)
    bad = metrics.steady_state(starts, [e if e < t1 else 0 for e in over], meas, t0, t1, "qps")
    assert bad["saturated"] and "not keeping up" in bad["reason"] and "queue is growing" in bad["reason"]


def test_steady_state_needs_several_lifetimes():
    starts = [i * 100 * MS for i in range(30)]
    ends = [s + 1500 * MS for s in starts]  # 1.5 s lifetimes in a 3 s window: 2 lifetimes
    s = metrics.steady_state(starts, ends, [True] * 30, 0, 3000 * MS, "qps")
    assert not s["steady"] and not s["saturated"] and "request lifetimes" in s["reason"]


def test_throughput_is_unbiased_by_ramp_up_and_drain():
    # one request every 100 ms for 3 s, no warmup; each lasts 1 s and streams 4 tokens at 250 ms spacing.
    # Offered: 10 req/s, 40 tok/s. Completions inside the window read 20/3 (the first second has none).
    recs = [rec(i, intended=i * 100 * MS, chunks=(250, 500, 750, 1000), toks=(1, 1, 1, 1), end=1000) for i in range(30)]
    s = metrics.summarize(recs, [], window_ns=(0, 3000 * MS))
    assert s["window_kind"] == "schedule" and s["window_s"] == pytest.approx(3.0)
    assert s["throughput"]["estimator"] == "arrivals"
    assert s["request_throughput"] == pytest.approx(10.0) and s["output_tps"] == pytest.approx(40.0)
    assert s["throughput"]["departures"]["request_throughput"] == pytest.approx(20 / 3.0)
    assert s["output_tps_incl_drain"] == pytest.approx(30 * 4 / 3.9)  # vllm bench: all tokens / first send to last end


def test_prompt_cache_counts_a_request_without_the_details_as_zero_once_the_server_reports_them():
    """vLLM and SGLang send usage.prompt_tokens_details only when something was cached: in a run where any
    request carried it, the others hit nothing (0), they are not dropped (which would report hits only); a run
    where none carried it reports nothing."""
    hit = [rec(i, prompt_tokens=100, cached_tokens=80) for i in range(2)]
    miss = [rec(i + 2, prompt_tokens=100) for i in range(2)]  # cached_tokens -1: the field was absent
    s = metrics.summarize(hit + miss, [], offered_qps=10)
    assert s["prompt_cache"] == {"requests": 4, "cached_fraction": 160 / 400, "hit_requests": 2}
    assert "prompt_cache" not in metrics.summarize(miss, [], offered_qps=10)
    assert metrics.cached_fraction(miss) is None and metrics.cached_fraction(hit + miss) == 0.8
