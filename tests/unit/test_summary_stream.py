"""A run's summary streamed from disk (token arrays never all in memory) equals the in-memory summary."""

import json
import math

import numpy as np
import pytest

from bench import metrics
from bench.config import parse_slos
from bench.records import IncrementalWriter, read_records
from tests.synthetic import synth_records

SLOS = parse_slos("ttft_p99=200ms,itl_p99=11ms,itl_p90=9ms,tpot_p50=10ms")


def _run(tmp_path):
    recs = synth_records(600, 20.0, osl=48, fail_frac=0.02, seed=3)
    for r in recs[:40]:
        r.warmup = True
    for r in recs[300:305]:  # cancelled mid-stream: TTFT and gaps so far are measured
        r.ok, r.error_kind = False, "cancelled"
        r.chunk_ns, r.chunk_tokens = r.chunk_ns[:5], r.chunk_tokens[:5]
    for r in recs[100:140]:  # events carrying several tokens
        if r.ok:
            r.chunk_ns, r.chunk_tokens = r.chunk_ns[::3], [1] + [3] * (len(r.chunk_ns[::3]) - 1)
    w = IncrementalWriter(tmp_path)
    for i, r in enumerate(recs):
        w.add(r)
        if i % 97 == 0:
            w.flush()  # several part files, as a live run writes them
    w.close()
    return recs


def _same(a, b):
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.mark.parametrize("window", [None, "schedule"])
def test_streamed_summary_equals_the_in_memory_one(tmp_path, window):
    recs = _run(tmp_path)
    w = (recs[40].intended_ns, recs[-60].intended_ns) if window else None
    full = metrics.summarize(read_records(tmp_path), SLOS, offered_qps=20.0, window_ns=w)
    streamed, light = metrics.summarize_run(tmp_path, SLOS, offered_qps=20.0, window_ns=w)
    assert _same(full, streamed), (full["latency_ms"]["itl"], streamed["latency_ms"]["itl"])
    assert full["n_cancelled_measured"] == 5 and full["window_tokens"]["output"] > 0
    # what is kept: one value per request and field, no token arrays; each request's first chunk time (its TTFT)
    assert not {"chunk_ns", "chunk_tokens", "server_chunk_ns", "output_text"} & set(light.names)
    assert len(light) == len(recs) and all(v.ndim == 1 and len(v) == len(recs) for v in map(light.__getattr__, light.names))
    assert light.first_ns.tolist() == [r.chunk_ns[0] if len(r.chunk_ns) else 0 for r in recs]


def test_past_the_exact_cap_gaps_are_binned_within_their_stated_error(tmp_path, monkeypatch):
    _run(tmp_path)
    full = metrics.summarize(read_records(tmp_path), SLOS, offered_qps=20.0)
    monkeypatch.setattr(metrics.GapStats, "EXACT_CAP", 1000)
    binned, _ = metrics.summarize_run(tmp_path, SLOS, offered_qps=20.0)
    a, b = full["latency_ms"]["itl"], binned["latency_ms"]["itl"]
    assert b["binned"] and a["n"] == b["n"] and a["max"] == b["max"] and b["mean"] == pytest.approx(a["mean"], rel=1e-12)
    for k in ("p50", "p90", "p95", "p99"):
        assert abs(b[k] / a[k] - 1) <= 5e-4, (k, a[k], b[k])
    for lo_hi in zip(a["p99_ci"], b["p99_ci"]):
        assert abs(lo_hi[1] / lo_hi[0] - 1) <= 5e-4
    # the SLO tests count exceedances exactly: identical decisions and intervals
    for x, y in zip(full["slos"], binned["slos"]):
        assert (x["decision"], x["exceed"], x["fraction_within"], x["n"]) == (y["decision"], y["exceed"], y["fraction_within"], y["n"])
    assert full["attainment"] == binned["attainment"]


def test_gap_stats_memory_does_not_grow_past_the_cap():
    g = metrics.GapStats()
    rng = np.random.default_rng(0)
    for _ in range(30):
        g.add(rng.lognormal(3.0, 0.5, 100_000))
    assert g.n == 3_000_000 and g._parts == [] and g._hist.size == metrics.GapStats.NBINS
    exact = np.random.default_rng(0)
    allv = np.concatenate([exact.lognormal(3.0, 0.5, 100_000) for _ in range(30)])
    assert abs(g.stats()["p99"] / np.percentile(allv, 99) - 1) <= 5e-4 and math.isclose(g.stats()["max"], allv.max())


def test_columns_hold_what_the_records_hold(tmp_path):
    from bench.records import read_columns

    recs = _run(tmp_path)
    recs[3].model, recs[4].error = "m-a", "boom"
    w = IncrementalWriter(tmp_path)  # a live run's part file beside the compacted results (an interrupted rerun)
    w.add(recs[3])
    w.add(recs[4])
    w.flush()
    back = read_records(tmp_path)
    cols = read_columns(tmp_path)
    assert len(cols) == len(back) == 602
    for name in set(cols.names) - {"row", "n_chunks", "first_ns"}:
        assert getattr(cols, name).tolist() == [getattr(r, name) for r in back], name
    sub = cols.where(cols.ok & (cols.index % 2 == 0))
    assert sub.row.tolist() == [i for i, r in enumerate(back) if r.ok and r.index % 2 == 0]
    assert sub.where(sub.index % 4 == 0).index.tolist() == [r.index for r in back if r.ok and r.index % 4 == 0]


def test_compaction_gathers_parts_into_few_row_groups_and_flags_warmup_by_send_time(tmp_path, monkeypatch):
    """A live run writes one part a second; the compacted file gathers them into row groups of ~_ROW_GROUP_BYTES
    (one group per part kept every group's metadata in the writer: a long run's compaction grew with its length),
    every row kept in order, and warmup flagged against the warmup's final end."""
    import pyarrow.parquet as pq

    from bench import records

    recs = synth_records(600, 20.0, osl=48, seed=5)
    w = IncrementalWriter(tmp_path)
    for i, r in enumerate(recs):
        w.add(r)
        if i % 10 == 9:
            w.flush()  # 60 parts
    per_part = pq.read_table(next((tmp_path / "requests.parts").glob("*.parquet"))).nbytes
    monkeypatch.setattr(records, "_ROW_GROUP_BYTES", 8 * per_part)  # ~8 parts a group
    cut = recs[100].intended_ns
    w.close(warm_until_ns=cut)
    meta = pq.ParquetFile(tmp_path / "requests.parquet").metadata
    assert meta.num_rows == 600 and 5 <= meta.num_row_groups <= 10, meta.num_row_groups
    back = read_records(tmp_path)
    assert [r.index for r in back] == [r.index for r in recs]
    assert [r.warmup for r in back] == [r.intended_ns < cut for r in recs]
    assert not (tmp_path / "requests.parts").exists()
