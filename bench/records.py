"""④ RequestRecord: the facts of one request in integer nanoseconds, its Arrow schema, and the
incremental writer that keeps a kill from losing more than the last second of results.

Times are `time.perf_counter_ns()` (CLOCK_MONOTONIC on Linux, shared by all processes on a host);
run.json holds one wall-clock anchor to convert them. Every metric is derived from these facts later.

On-disk: while a run is live, records go to `requests.parts/part-NNNNN.parquet` (one small file per
flush, written to a temp name and renamed, so a kill leaves only whole files). When the run ends the
parts are compacted into `requests.parquet`. `read_records` reads either.
"""

from __future__ import annotations

import os
import threading
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# Error kinds (fixed set; reports group by them)
ERROR_KINDS = ("connect", "timeout", "http", "stream_cut", "malformed", "server_error_event", "cancelled", "client")


MAX_TURNS = 16  # a conversation's turns take consecutive request indices: its first is 16·i, turn k is 16·i + k


def _ints() -> array[int]:
    return array("q")


@dataclass(slots=True)
class RequestRecord:
    index: int
    intended_ns: int  # scheduled send time (closed loop: = sent_ns)
    sent_ns: int = 0  # when the request was handed to the connection
    slot_ns: int = 0  # open loop with an in-flight cap: when a slot freed for it (0: it did not wait for one)
    first_byte_ns: int = 0  # first response body bytes
    end_ns: int = 0  # last byte (or failure)
    # live records hold int64 arrays (8 bytes a token; a list of Python ints costs ~36); any int sequence is accepted
    chunk_ns: Sequence[int] = field(default_factory=_ints)  # arrival of each token-bearing SSE event
    chunk_tokens: Sequence[int] = field(default_factory=_ints)  # tokens in that event
    warmup: bool = False
    isl: int = 0  # requested prompt tokens
    osl: int = 0  # requested output tokens (max_tokens)
    prompt_tokens_local: int = -1  # counted by the harness' tokenizer (-1: not counted)
    prompt_tokens: int = -1  # server usage.prompt_tokens (-1: not reported)
    cached_tokens: int = -1  # server usage.prompt_tokens_details.cached_tokens: prompt tokens served from its prefix cache (-1: not reported)
    output_tokens: int = -1  # server usage.completion_tokens, else client count
    tokens_from_usage: bool = True  # False: output/chunk token counts are client-side estimates
    ok: bool = False
    status: int = 0  # HTTP status (0: none)
    error_kind: str = ""
    error: str = ""
    retries: int = 0  # resends after a pooled keep-alive connection was closed under the request (no response yet)
    finish_reason: str = ""
    response_id: str = ""
    prefix_group: int = -1
    source: str = ""  # trace row / dataset item / conversation:turn that produced this request
    conversation: int = -1
    turn: int = -1
    stage: int = 0  # open loop with --ramp-up/--stages: -1 the ramp, k the k-th stage, by intended send time
    model: str = ""  # the model name the request asked for
    server_recv_ns: int = 0  # simulator ground truth (0 elsewhere)
    server_chunk_ns: Sequence[int] = field(default_factory=_ints)
    output_text: str = ""  # kept only when needed (multi-turn history)
    done_marker: bool = True  # False: the stream ended after its finish_reason without `data: [DONE]` (complete)
    worker: int = 0  # the worker process that sent it (--workers; 0 with one process)
    endpoint: int = 0  # which of the target's addresses served it (several replicas; 0 with one)


_INT_LIST = pa.list_(pa.int64())


def _arrow_type(f: Field[Any]) -> pa.DataType:
    t = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string(), "Sequence[int]": _INT_LIST}[t]


# Arrow's default mimalloc pool keeps the pages of freed buffers; decoding a long run's parquet then holds
# ~3x the data. The system allocator returns them (measured: scripts/memory_check.py).
pa.set_memory_pool(pa.system_memory_pool())

# requests.parquet schema history (the file's metadata key `trilemma.record_schema`; files without it are 1):
# 1: the RequestRecord columns; columns added since, each absent in older files and read as its default:
#    done_marker (True), stage, slot_ns, worker, endpoint (0), cached_tokens (-1). A file from a newer version is refused with one line.
RECORD_SCHEMA_VERSION = 1
SCHEMA = pa.schema([(f.name, _arrow_type(f)) for f in fields(RequestRecord)],
                   metadata={"trilemma.record_schema": str(RECORD_SCHEMA_VERSION)})


def check_record_schema(path: Path, schema: pa.Schema) -> None:
    """Refuse, in one line, a requests file written by a newer trilemma than this one."""
    v = int((schema.metadata or {}).get(b"trilemma.record_schema", b"1"))
    if v > RECORD_SCHEMA_VERSION:
        raise ValueError(f"{path}: request record schema {v} is newer than this trilemma reads ({RECORD_SCHEMA_VERSION}); upgrade trilemma")


def _int_lists(vals: list[Any]) -> pa.Array:
    """list<int64> column from int sequences of any kind (array('q'), list, numpy), via one flat buffer."""
    import numpy as np

    off = np.zeros(len(vals) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in vals], out=off[1:])
    flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in vals]) if vals else np.empty(0, dtype=np.int64)
    return pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(flat, pa.int64()))


def records_to_table(recs: list[RequestRecord]) -> pa.Table:
    cols = {f.name: (_int_lists([getattr(r, f.name) for r in recs]) if SCHEMA.field(f.name).type == _INT_LIST
                     else [getattr(r, f.name) for r in recs]) for f in fields(RequestRecord)}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def table_to_records(t: pa.Table) -> list[RequestRecord]:
    names = {f.name for f in fields(RequestRecord)}
    out = []
    for row in t.to_pylist():
        out.append(RequestRecord(**{k: v for k, v in row.items() if k in names}))
    return out


class IncrementalWriter:
    """Append records; `flush()` writes a new part file atomically. Thread-safe."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.parts = self.dir / "requests.parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self._pending: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._n = len(list(self.parts.glob("part-*.parquet")))
        self.written = 0
        self._warm_up()

    @staticmethod
    def _warm_up() -> None:
        """The first Arrow conversion + parquet write in a process costs ~300 ms (lazy initialisation);
        pay it before the run starts, not in the first flush mid-run where it would stall the client."""
        import io

        import pyarrow.parquet as pq

        rec = RequestRecord(index=0, intended_ns=0, chunk_ns=[0, 1], chunk_tokens=[1, 1], server_chunk_ns=[0])
        pq.write_table(records_to_table([rec]), io.BytesIO())

    def add(self, rec: RequestRecord) -> None:
        self._pending.append(rec)  # list.append is atomic under the GIL; flush swaps the list

    def flush(self) -> int:
        import pyarrow.parquet as pq

        with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            self._n += 1
            final = self.parts / f"part-{self._n:05d}.parquet"
            tmp = final.with_suffix(".tmp")
            pq.write_table(records_to_table(batch), tmp)
            os.replace(tmp, final)
            self.written += len(batch)
            return len(batch)

    def close(self, warm_until_ns: int | None = None) -> Path:
        """Flush and compact parts into requests.parquet; `warm_until_ns`: flag warmup by send time against
        the warmup's final end (known only when the run is over)."""
        self.flush()
        return compact(self.dir, warm_until_ns)


def _conform(t: pa.Table) -> pa.Table:
    """A table in SCHEMA's column order; columns older files lack get the field's default (e.g. done_marker)."""
    defaults = {f.name: f.default for f in fields(RequestRecord)}
    cols = []
    for f in SCHEMA:
        if f.name in t.column_names:
            c = t.column(f.name)
            cols.append(c if c.type == f.type else c.cast(f.type))
        else:
            d = defaults.get(f.name)
            cols.append(pa.array([d if isinstance(d, (int, bool, str)) else []] * t.num_rows, type=f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


# compacted row groups gather parts (one a second) up to this much Arrow data: each row group's metadata stays in
# the writer until it closes (~50 KB a group, measured), so one group a second grew a long run's compaction with its length
_ROW_GROUP_BYTES = 4 << 20


def compact(run_dir: Path, warm_until_ns: int | None = None) -> Path:
    """requests.parquet (if any) and the part files streamed into a new requests.parquet, in row groups of
    ~_ROW_GROUP_BYTES — memory bounded by one row group, however long the run. Rows are in completion order;
    `index` is the send order."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    parts_dir = run_dir / "requests.parts"
    out = run_dir / "requests.parquet"
    files = _files(run_dir)
    tmp = out.with_suffix(".tmp")
    w = pq.ParquetWriter(tmp, SCHEMA)
    held: list[pa.Table] = []
    held_bytes = 0

    try:
        for f in files:
            # no pre-buffering, no reader threads: each leaves freed decode buffers behind in this process
            # (per-thread malloc arenas), ~40 MB for a 2 M-token run (scripts/memory_check.py)
            pf = pq.ParquetFile(f, pre_buffer=False)
            for g in range(pf.num_row_groups):
                tb = _conform(pf.read_row_group(g, use_threads=False))
                if warm_until_ns is not None:  # numpy, not pyarrow.compute: its kernels cost ~30 MB when first loaded
                    warm = tb.column("intended_ns").to_numpy() < warm_until_ns
                    tb = tb.set_column(SCHEMA.get_field_index("warmup"), "warmup", pa.array(warm))
                held.append(tb)
                held_bytes += tb.nbytes
                if held_bytes >= _ROW_GROUP_BYTES:
                    w.write_table(pa.concat_tables(held))
                    held, held_bytes = [], 0
        if held:
            w.write_table(pa.concat_tables(held))
    finally:
        w.close()
    os.replace(tmp, out)
    if parts_dir.exists():
        for p in parts_dir.glob("*"):
            p.unlink()
        parts_dir.rmdir()
    return out


# not needed to summarise a run: dropped by the compact reader
_HEAVY = ("server_chunk_ns", "output_text")
_CHUNKS = ("chunk_ns", "chunk_tokens")


def _files(run_dir: Path) -> list[Path]:
    """requests.parquet, then any part files (a live run, or one that was killed)."""
    run_dir = Path(run_dir)
    parts = run_dir / "requests.parts"
    return ([run_dir / "requests.parquet"] if (run_dir / "requests.parquet").exists() else []) + \
        (sorted(parts.glob("part-*.parquet")) if parts.exists() else [])


def read_table(run_dir: Path) -> pa.Table:
    """All records of a run, every column."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in _files(run_dir)]
    for f, t in zip(_files(run_dir), tables):
        check_record_schema(f, t.schema)
    return pa.concat_tables(tables, promote_options="default") if tables else records_to_table([])


def compact_records(b: pa.RecordBatch) -> list[RequestRecord]:
    """Records whose chunk lists are numpy views into the batch's own buffers (8 bytes a token, not the
    ~36 of a Python int in a list): what summaries, knee and compare read, in bounded memory."""
    lists = [n for n in ("chunk_ns", "chunk_tokens") if n in b.schema.names]
    scalars = {n: b.column(n).to_pylist() for n in b.schema.names if n not in lists}
    views = {n: _list_views(b.column(n)) for n in lists}
    cols: dict[str, Any] = {**scalars, **views}
    return [RequestRecord(**{n: v[i] for n, v in cols.items()}) for i in range(b.num_rows)]


def read_records(run_dir: Path, compact: bool = True, chunks: bool = True, skip: tuple[str, ...] = ()) -> list[RequestRecord]:
    """A run's records. compact (default): chunk times as numpy views, server timestamps and output text
    left out, decoded a batch at a time (see compact_records); compact=False: every field as written;
    chunks=False: no per-token arrays at all (scalars only: what iter_chunks streams is left on disk);
    `skip`: more columns left at their defaults."""
    if not compact:
        return table_to_records(read_table(run_dir))
    import pyarrow.parquet as pq

    skip = _HEAVY + tuple(skip) + (() if chunks else _CHUNKS)
    cols = [f.name for f in fields(RequestRecord) if f.name not in skip]
    out: list[RequestRecord] = []
    for f in _files(run_dir):
        pf = pq.ParquetFile(f, pre_buffer=False)
        check_record_schema(f, pf.schema_arrow)
        have = set(pf.schema_arrow.names)
        for b in pf.iter_batches(batch_size=2048, columns=[c for c in cols if c in have], use_threads=False):
            out += compact_records(b)
    return out


class Columns:
    """Records as one numpy array per scalar field, plus each request's first token-bearing chunk (`first_ns`;
    `n_chunks` 0: none) and its position `row`: what a summary reads, ~200 bytes a request. A list of
    RequestRecord costs ~700 (boxed values) and leaves its decoding temporaries fragmenting the heap: measured
    ~2.5x that in RSS, so a 5x longer run peaked higher (scripts/memory_check.py). Strings are object arrays
    sharing one str per distinct value."""

    def __init__(self, data: dict[str, np.ndarray], rows: np.ndarray | None = None) -> None:
        self._d: dict[str, np.ndarray] = data
        self._rows = rows  # a subset: the positions it holds (None: every row); its columns are gathered when read

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            col: np.ndarray = self.__dict__["_d"][name]
        except KeyError:
            raise AttributeError(name) from None
        rows = self.__dict__["_rows"]
        return col if rows is None else col[rows]

    def __len__(self) -> int:
        return len(self._d["row"]) if self._rows is None else len(self._rows)

    @property
    def names(self) -> list[str]:
        return list(self._d)

    def where(self, mask: np.ndarray) -> Columns:
        """The rows where `mask` is true (their `row` keeps each one's position in the run). A subset holds only
        their positions, not copies of the columns: a summary's several subsets of a long run cost ~8 bytes a row each."""
        at = np.flatnonzero(mask)
        return Columns(self._d, at if self._rows is None else self._rows[at])

    def set_first_chunks(self, n_chunks: np.ndarray, first_ns: np.ndarray) -> None:
        self._d.update(n_chunks=n_chunks, first_ns=first_ns)

    @classmethod
    def from_records(cls, recs: Sequence[RequestRecord]) -> Columns:
        n = len(recs)
        d = {f: np.array([getattr(r, f) for r in recs], dtype=dt) if n else np.empty(0, dt) for f, dt in _SCALARS.items()}
        d["n_chunks"] = np.fromiter((len(r.chunk_ns) for r in recs), np.int64, n)
        d["first_ns"] = np.fromiter((r.chunk_ns[0] if len(r.chunk_ns) else 0 for r in recs), np.int64, n)
        d["row"] = np.arange(n)
        return cls(d)


_DTYPES = {pa.int64(): np.dtype(np.int64), pa.bool_(): np.dtype(bool), pa.string(): np.dtype(object)}
_SCALARS = {f.name: _DTYPES[SCHEMA.field(f.name).type] for f in fields(RequestRecord) if SCHEMA.field(f.name).type != _INT_LIST}


def _numpy_column(col: pa.Array, dtype: np.dtype) -> np.ndarray:
    """One scalar column as numpy, read from the Arrow buffers (as _list_views: pyarrow's to_numpy left ~40 MB behind
    in the process over a 45 k-request run's columns, scripts/memory_check.py); strings share one str per distinct value."""
    if dtype.kind == "O":  # read as a dictionary column (read_columns): each distinct value once
        words = np.array([w or "" for w in col.dictionary.to_pylist()] + [""], dtype=object)
        idx = col.indices
        at = np.frombuffer(idx.buffers()[1], dtype=np.int32, count=idx.offset + len(idx))[idx.offset:] if len(col) else np.empty(0, np.int32)
        if idx.null_count:  # a null reads as "" (the last word)
            valid = np.unpackbits(np.frombuffer(idx.buffers()[0], dtype=np.uint8), bitorder="little")[idx.offset:idx.offset + len(idx)]
            at = np.where(valid.astype(bool), at, len(words) - 1)
        return words[at]
    want = pa.bool_() if dtype.kind == "b" else pa.int64()
    if col.type != want:  # (a file written by an older version)
        col = col.cast(want)
    if col.null_count:
        col = col.fill_null(False if dtype.kind == "b" else 0)
    buf = col.buffers()[1]
    if dtype.kind == "b":  # bit-packed, least significant bit first
        bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
        return bits[col.offset:col.offset + len(col)].astype(bool)
    out: np.ndarray = np.frombuffer(buf, dtype=np.int64, count=col.offset + len(col))[col.offset:]
    return out


def read_columns(run_dir: Path, skip: tuple[str, ...] = ()) -> Columns:
    """A run's scalar fields as Columns (read_records' row order), `skip`ped ones left out; the first-chunk
    columns are zero until the caller streams the token arrays (iter_chunks) and sets them. Each column is
    allocated once at the run's size and filled a batch at a time."""
    import pyarrow.parquet as pq

    want = {n: dt for n, dt in _SCALARS.items() if n not in skip and n not in _HEAVY}
    defaults = {f.name: f.default for f in fields(RequestRecord)}
    strings = [n for n, dt in want.items() if dt.kind == "O"]
    files = [pq.ParquetFile(f, pre_buffer=False, read_dictionary=strings) for f in _files(run_dir)]
    for f, pf in zip(_files(run_dir), files):
        check_record_schema(f, pf.schema_arrow)
    rows = sum(pf.metadata.num_rows for pf in files)
    d = {n: np.empty(rows, dt) for n, dt in want.items()}
    i = 0
    for pf in files:
        have = [n for n in want if n in pf.schema_arrow.names]
        for b in pf.iter_batches(batch_size=8192, columns=have, use_threads=False):
            j = i + b.num_rows
            for n, dt in want.items():
                d[n][i:j] = _numpy_column(b.column(n), dt) if n in have else defaults[n]
            i = j
    d.update(row=np.arange(rows), n_chunks=np.zeros(rows, np.int64), first_ns=np.zeros(rows, np.int64))
    return Columns(d)


def iter_chunks(run_dir: Path, batch_size: int = 256) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """(chunk_ns, chunk_tokens) per record, a batch at a time, in read_records' row order: numpy views
    into one batch's buffers, released when the caller moves on (a summary streams a run of any length)."""
    import pyarrow.parquet as pq

    for f in _files(run_dir):
        pf = pq.ParquetFile(f, pre_buffer=False)
        check_record_schema(f, pf.schema_arrow)
        for b in pf.iter_batches(batch_size=batch_size, columns=list(_CHUNKS), use_threads=False):
            yield _list_views(b.column("chunk_ns")), _list_views(b.column("chunk_tokens"))


def _list_views(col: pa.Array) -> list[np.ndarray]:
    """One numpy view per row of an int64 list column (zero-copy into the column's values buffer)."""
    if col.null_count:
        col = col.fill_null(pa.scalar([], type=col.type))
    # np.frombuffer on the Arrow buffers, not to_numpy(): the same zero-copy view, but to_numpy leaves ~40 MB
    # of a 2 M-token run behind in the process (measured: scripts/memory_check.py)
    vals = col.values
    flat = np.frombuffer(vals.buffers()[1], dtype=np.int64, count=vals.offset + len(vals))[vals.offset:]
    off = np.frombuffer(col.buffers()[1], dtype=np.int32, count=col.offset + len(col) + 1)[col.offset:]
    return [flat[off[i]:off[i + 1]] for i in range(len(col))]


