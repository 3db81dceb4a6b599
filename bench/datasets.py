"""① Traces and datasets as workload sources (shipped under bench/data/traces with their licences).

    azure-conv, azure-code   Azure LLM inference trace 2023 (CC-BY-4.0): arrival time, ISL, OSL per row
    mooncake                 Kimi/Mooncake conversation trace (Apache-2.0): ms arrival, ISL, OSL and
                             hash_ids of 512-token prefix blocks; equal ids become equal prompt text, so a
                             server's prefix cache sees the sharing the trace recorded. `mooncake:scrambled`
                             gives every request its own blocks (same lengths, no sharing) as a control.
    sonnet                   vLLM's sonnet dataset behaviour: a fixed prefix of lines + sampled lines, to the ISL
    mt-bench                 MT-Bench two-turn questions (Apache-2.0): turn 2 is sent after turn 1 completes,
                             with the real first answer in the history (chat API)
    file:PATH                your CSV, TSV, JSON, JSONL or parquet (gzip, bz2 or zstd compressed: by extension
                             or magic bytes): columns `prompt` (text) or `messages` (chat list) or `input_tokens`;
                             optional `output_tokens`, `timestamp` (seconds; replay). Other column names are
                             mapped with `columns` (--columns prompt=question,output_tokens=n)
    mooncake:PATH            your trace in Mooncake's format (timestamp ms, input_length, output_length, hash_ids)
    azure:PATH               your Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)
    burstgpt:PATH            your BurstGPT CSV (Timestamp s, Request tokens, Response tokens, ...); rows of failed
                             requests (Response tokens 0) are left out and counted

Timed traces replay their own arrival times (scaled by `speedup`, windowed by `window_s`) when no --qps
or --concurrency is given; `--isl trace:NAME` instead samples (ISL, OSL) pairs jointly from a trace
(keeping their correlation) under the run's own arrival process. Every record names its source row.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import FILE_FIELDS, LengthDist, SpecError
from bench.records import MAX_TURNS


@dataclass(slots=True)
class WorkItem:
    index: int
    prompt: str | list  # text (completions) or chat messages
    isl: int
    osl: int
    prefix_group: int = -1
    source: str = ""
    offset_ns: int | None = None  # trace replay: intended offset from t0
    conversation: int = -1
    turn: int = -1
    followups: list = field(default_factory=list)  # later user turns of a conversation: (text, isl, osl[, think_s from the trace])
    think_s: float = 0.0  # multi-turn: pause between an answer's end and the next turn's send


# ------------------------------------------------------------------ length sampling
def sample_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """n lengths >= 1 from a distribution. lognormal takes the mean and SD of the lengths."""
    if dist.kind == "fixed":
        return np.full(n, int(dist.a), dtype=np.int64)
    if dist.kind == "uniform":
        return rng.integers(int(dist.a), int(dist.b) + 1, n)
    if dist.kind == "normal":
        x = rng.normal(dist.a, dist.b, n)
    elif dist.kind == "lognormal":
        m, s = dist.a, dist.b
        sigma2 = np.log1p((s / m) ** 2)
        x = rng.lognormal(np.log(m) - sigma2 / 2, np.sqrt(sigma2), n)
    else:
        raise SpecError(f"{dist} is a joint trace distribution; use it as --isl trace:NAME (OSL comes with it)")
    return np.maximum(1, np.rint(x)).astype(np.int64)

TRACES = Path(__file__).parent / "data" / "traces"
AZURE = {"azure-conv": "AzureLLMInferenceTrace_conv.csv", "azure-code": "AzureLLMInferenceTrace_code.csv"}
ATTRIBUTION = {
    "azure": "Azure LLM inference trace 2023 (Patel et al., Splitwise, ISCA'24), CC-BY-4.0",
    "mooncake": "Mooncake conversation trace (Moonshot AI, FAST'25), Apache-2.0",
    "mt-bench": "MT-Bench questions (LMSYS, Zheng et al. 2023), Apache-2.0",
    "sonnet": "Shakespeare's sonnets as used by vLLM's sonnet dataset (public domain)",
}
MOONCAKE_BLOCK = 512


class Source:
    name_: str = ""
    has_lengths = True
    makes_items = False
    timed = False
    wraps = False  # True: item(i) handles i >= size itself (else Workload wraps to row i mod size)

    def __init__(self):
        self.rows: list = []

    @property
    def size(self) -> int:
        return len(self.rows)

    def name(self, i: int) -> str:
        return f"{self.name_}:row {i}"

    def offset_ns(self, i: int) -> int | None:
        return None

    def describe(self) -> dict:
        return {"dataset": self.name_, "rows": self.size}

    # a source gives lengths (has_lengths) and/or whole items (makes_items); what it lacks, Workload builds
    def lengths(self, i: int, rng: np.random.Generator) -> tuple[int, int]:
        raise NotImplementedError(f"{type(self).__name__} gives no lengths")

    def item(self, i: int, rng: np.random.Generator, ctx: Any) -> WorkItem:
        raise NotImplementedError(f"{type(self).__name__} makes no items")


class TimedTrace(Source):
    """Rows of (t_seconds, isl, osl, extra); replay offsets = (t − t_first)/speedup."""

    timed = True
    failed_rows_skipped = 0  # BurstGPT: rows of requests that failed in the traced service

    def __init__(self, name: str, rows: list, speedup: float, window: tuple[float, float] | None, attribution: str):
        super().__init__()
        self.name_, self.speedup, self.attribution = name, speedup, attribution
        t0 = rows[0][0] if rows else 0.0
        lo, hi = window or (0.0, float("inf"))
        self.rows = [r for r in rows if lo <= r[0] - t0 < hi]
        self.row_ids = [k for k, r in enumerate(rows) if lo <= r[0] - t0 < hi]
        if not self.rows:
            raise SpecError(f"{name}: no rows in the window {lo:g}-{hi:g} s; the trace spans {rows[-1][0] - t0:.0f} s")
        self.t_first = self.rows[0][0]

    def lengths(self, i: int, rng) -> tuple[int, int]:
        return int(self.rows[i][1]), int(self.rows[i][2])

    def offset_ns(self, i: int) -> int:
        return int(round((self.rows[i][0] - self.t_first) / self.speedup * 1e9))

    def name(self, i: int) -> str:
        return f"{self.name_}:row {self.row_ids[i]}"

    def describe(self) -> dict:
        span = (self.rows[-1][0] - self.t_first) if self.rows else 0
        d = {"dataset": self.name_, "rows": self.size, "trace_span_s": span, "speedup": self.speedup,
             "replay_span_s": span / self.speedup, "offered_qps": self.size / (span / self.speedup) if span else None,
             "attribution": self.attribution}
        if self.failed_rows_skipped:
            d["failed_rows_skipped"] = self.failed_rows_skipped
        return d


# ------------------------------------------------------------------ reading files
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\x28\xb5\x2f\xfd": "zstd"}
_COMPRESSED = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}


def _base_ext(f: Path) -> str:
    """The format's extension under any compression suffix ('data.jsonl.gz' -> '.jsonl'), '' if none."""
    s = [x.lower() for x in f.suffixes]
    while s and s[-1] in _COMPRESSED:
        s.pop()
    return s[-1] if s else ""


def read_bytes(p: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip, bz2 or zstd (told by its magic bytes, whatever its name)."""
    raw = p.read_bytes()
    kind = next((c for m, c in _MAGIC.items() if raw.startswith(m)), None)
    try:
        if kind == "gzip":
            import gzip

            return gzip.decompress(raw)
        if kind == "bz2":
            import bz2

            return bz2.decompress(raw)
        if kind == "zstd":
            import pyarrow as pa

            with pa.CompressedInputStream(pa.BufferReader(raw), "zstd") as z:
                return bytes(z.read())
    except (OSError, EOFError, ValueError) as e:
        raise SpecError(f"{p}: looks {kind}-compressed but does not decompress ({e})") from None
    return raw


def _text(p: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: not UTF-8 text (byte {e.start}); give CSV, TSV, JSON, JSONL or parquet, "
                        "optionally gzip, bz2 or zstd compressed") from None


def read_table(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) pairs of a CSV, TSV, JSON (a list of objects), JSONL or parquet file, any of them
    compressed. The format comes from the extension under the compression suffix, else from the content
    ('[' a JSON list, '{' JSON lines, else CSV). `line` is the file's line number (CSV: the header is line
    1; parquet and JSON lists: the row number from 1) for error messages.

    A directory is a local dataset snapshot (a Hugging Face `save_to_disk` directory of .arrow files, or a
    hub snapshot of parquet/JSONL files): its data files in name order, rows numbered through them all."""
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _data_file(f))
        if not files:
            raise SpecError(f"{p}: a directory with no data files (.parquet, .arrow, .jsonl, .json, .csv, .tsv, compressed or not)")
        k = 0
        for f in files:
            for _, row in read_table(f):
                k += 1
                yield k, row
        return
    ext = _base_ext(p)
    data = read_bytes(p)
    arrow = ext == ".arrow" or data[:6] == b"ARROW1" or data[:4] == b"\xff\xff\xff\xff"  # Arrow IPC file or stream (save_to_disk)
    if arrow or ext == ".parquet" or data[:4] == b"PAR1":
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        buf = pa.BufferReader(data)
        try:
            if not arrow:
                t = pq.read_table(buf)
            else:
                t = (ipc.open_file(buf) if data[:6] == b"ARROW1" else ipc.open_stream(buf)).read_all()
        except pa.ArrowInvalid as e:
            raise SpecError(f"{p}: not a readable {'Arrow' if arrow else 'parquet'} file ({e})") from None
        yield from enumerate(t.to_pylist(), start=1)
        return
    text = _text(p, data)
    first = text.lstrip()[:1]
    if ext in (".csv", ".tsv", ".txt") or (ext not in (".json", ".jsonl", ".ndjson") and first not in ("[", "{")):
        delim = "\t" if ext == ".tsv" or (ext != ".csv" and "\t" in text.split("\n", 1)[0]) else ","
        for ln, rec in enumerate(csv.DictReader(io.StringIO(text, newline=""), delimiter=delim), start=2):
            yield ln, {k.strip() if isinstance(k, str) else k: v for k, v in rec.items()}
        return
    if first == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); give a list of objects, or one object per line (JSONL)") from None
        for k, rec in enumerate(rows, start=1):
            if not isinstance(rec, dict):
                raise SpecError(f"{p}: item {k} of the JSON list is a {type(rec).__name__}, expected an object")
            yield k, rec
        return
    for ln, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{p}:{ln}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise SpecError(f"{p}:{ln}: expected a JSON object, found a {type(rec).__name__}")
        yield ln, rec


def _data_file(f: Path) -> bool:
    return _base_ext(f) in (".parquet", ".arrow", ".jsonl", ".ndjson", ".json", ".csv", ".tsv") and not f.name.startswith(
        ("dataset_info", "state", "dataset_dict"))


def _user_path(spec_name: str, path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise SpecError(f"--dataset {spec_name}: no such file '{path}'")
    return p


def _field(p: Path, ln: int, rec: dict[str, Any], key: str, cast: Any = int) -> Any:
    if key not in rec:
        raise SpecError(f"{p}:{ln}: no column '{key}' (found: {', '.join(map(str, rec)) or 'none'})")
    try:
        return cast(rec[key])
    except (TypeError, ValueError):
        raise SpecError(f"{p}:{ln}: column '{key}' must be a number, got {rec[key]!r}") from None


def _azure_rows(name: str, path: Path | None = None) -> list:
    """Azure LLM inference trace CSV: TIMESTAMP (date and time), ContextTokens, GeneratedTokens."""
    from datetime import datetime

    path = path or TRACES / "azure-llm-2023" / AZURE[name]
    rows = []
    for ln, rec in read_table(path):
        ts = str(rec.get("TIMESTAMP", ""))
        main, frac = (ts.split(".") + ["0"])[:2]
        try:
            t = datetime.strptime(main, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + (frac or "0"))
        except ValueError:
            raise SpecError(f"{path}:{ln}: TIMESTAMP must look like 2023-11-16 18:15:46.6805900, got {ts!r}") from None
        rows.append((t, max(1, _field(path, ln, rec, "ContextTokens")), max(1, _field(path, ln, rec, "GeneratedTokens")), None))
    if not rows:
        raise SpecError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])
    return rows


def _mooncake_rows(path: Path | None = None) -> list:
    """Mooncake trace JSONL: timestamp (ms), input_length, output_length, hash_ids (512-token blocks)."""
    path = path or TRACES / "mooncake" / "conversation_trace.jsonl"
    rows = []
    for ln, d in read_table(path):
        ids = d.get("hash_ids", [])
        if isinstance(ids, str):  # a CSV column holding a JSON list
            try:
                ids = json.loads(ids or "[]")
            except json.JSONDecodeError:
                ids = None
        if not isinstance(ids, list) or not all(isinstance(x, int) for x in ids):
            raise SpecError(f"{path}:{ln}: hash_ids must be a list of integers, got {d.get('hash_ids')!r}")
        rows.append((_field(path, ln, d, "timestamp", float) / 1000.0, _field(path, ln, d, "input_length"),
                     _field(path, ln, d, "output_length"), ids))
    if not rows:
        raise SpecError(f"{path}: no rows")
    rows.sort(key=lambda r: r[0])
    return rows


def _burstgpt_rows(path: Path) -> tuple[list, int]:
    """BurstGPT CSV: Timestamp (s), Model, Request tokens, Response tokens, Total tokens, Log Type. A row
    with 0 response tokens is a request that failed in the traced service: left out (and counted), since
    replaying it would send a request the trace never saw answered."""
    rows, failed = [], 0
    for ln, rec in read_table(path):
        t = _field(path, ln, rec, "Timestamp", float)
        isl, osl = _field(path, ln, rec, "Request tokens"), _field(path, ln, rec, "Response tokens")
        if osl <= 0:
            failed += 1
            continue
        rows.append((t, max(1, isl), osl, None))
    if not rows:
        raise SpecError(f"{path}: no rows with a response (failed rows: {failed})")
    rows.sort(key=lambda r: r[0])
    return rows, failed


class Mooncake(TimedTrace):
    """Prompts built from 512-token blocks; equal hash_id -> identical text. Scrambled: unique blocks."""

    makes_items = True

    def __init__(self, rows, speedup, window, scrambled: bool, seed: int, name: str | None = None):
        super().__init__(name or ("mooncake:scrambled" if scrambled else "mooncake"), rows, speedup, window,
                         ATTRIBUTION["mooncake"] if name is None else "your trace (Mooncake format)")
        self.scrambled, self.seed = scrambled, seed
        self.blocks: dict = {}

    def block_text(self, builder, key, n: int) -> str:
        if key not in self.blocks:
            # seeded from the key's integers, not hash(): str hashes change with PYTHONHASHSEED, and equal seeds
            # must send byte-identical prompts in every process
            kind, *ints = key
            rng = np.random.default_rng([self.seed, 99, 0 if kind == "blk" else 1, *(int(x) for x in ints)])
            self.blocks[key] = list(rng.choice(builder.pieces, MOONCAKE_BLOCK))
        return "".join(self.blocks[key][:n])

    def item(self, i: int, rng, wl):

        isl, osl = wl._clip(*self.lengths(i, rng))
        ids = self.rows[i][3]
        body = max(1, isl - wl.builder.overhead)
        parts, left = [], body
        for k, h in enumerate(ids):
            if left <= 0:
                break
            key = ("req", self.row_ids[i], k) if self.scrambled else ("blk", h)
            n = min(MOONCAKE_BLOCK, left)
            parts.append(self.block_text(wl.builder, key, n))
            left -= n
        if left > 0:
            parts.append("".join(rng.choice(wl.builder.pieces, left)))
        return WorkItem(i, "".join(parts), isl, osl, prefix_group=ids[0] if ids and not self.scrambled else -1,
                        source=self.name(i), offset_ns=self.offset_ns(i))


class LengthPairs(Source):
    """(ISL, OSL) pairs sampled jointly from a trace, for synthetic prompts under the run's schedule."""

    def __init__(self, name: str, rows: list):
        super().__init__()
        self.name_ = f"pairs:{name}"
        self.pairs = np.array([(r[1], r[2]) for r in rows], dtype=np.int64)

    @property
    def size(self):
        return None

    def lengths(self, i: int, rng) -> tuple[int, int]:
        a, b = self.pairs[int(rng.integers(0, len(self.pairs)))]
        return int(a), int(b)

    def name(self, i: int) -> str:
        return self.name_

    def describe(self) -> dict:
        return {"dataset": self.name_, "pairs": len(self.pairs), "isl_p50": float(np.median(self.pairs[:, 0])),
                "osl_p50": float(np.median(self.pairs[:, 1]))}


class Sonnet(Source):
    """vLLM's sonnet behaviour: the first lines form a fixed prefix (`prefix_tokens`, default 200), then
    lines are sampled until the ISL; the builder pads/trims to the exact count."""

    has_lengths = False
    makes_items = True

    def __init__(self, spec):
        super().__init__()
        self.name_ = "sonnet"
        self.lines = [ln.strip() for ln in (TRACES / "vllm-sonnet" / "sonnet.txt").read_text().splitlines() if ln.strip()]
        self.prefix_tokens = spec.prefix_tokens or 200

    @property
    def size(self):
        return None

    def item(self, i: int, rng, wl):

        isl = int(sample_lengths(wl.spec.isl, 1, rng)[0])
        osl = int(sample_lengths(wl.spec.osl, 1, rng)[0])
        isl, osl = wl._clip(isl, osl)
        b = wl.builder
        words_per_token = 0.75  # sonnet text: ~1.3 tokens per word for BPE tokenizers; fixed by b.fix below
        prefix, n = [], 0
        for ln in self.lines:
            if n >= self.prefix_tokens * words_per_token:
                break
            prefix.append(ln)
            n += len(ln.split())
        body, n_body = [], 0
        target = (isl - self.prefix_tokens) * words_per_token
        while n_body < target:
            ln = self.lines[int(rng.integers(0, len(self.lines)))]
            body.append(ln)
            n_body += len(ln.split())
        text = "\n".join(prefix + body)
        text, _ = b.fix(text, isl, rng)
        return WorkItem(i, text, isl, osl, source="sonnet", prefix_group=0)

    def describe(self) -> dict:
        return {"dataset": "sonnet", "prefix_tokens": self.prefix_tokens, "attribution": ATTRIBUTION["sonnet"]}


class MTBench(Source):
    """Two-turn conversations; item i is conversation i's first turn with the second as a follow-up."""

    has_lengths = False
    makes_items = True
    wraps = True

    def __init__(self, osl: int, think_s: float = 0.0):
        super().__init__()
        self.name_ = "mt-bench"
        self.think_s = think_s
        with open(TRACES / "mt-bench" / "question.jsonl") as f:
            self.rows = [json.loads(ln) for ln in f if ln.strip()]
        self.osl = osl

    def item(self, i: int, rng, wl):

        q = self.rows[i % len(self.rows)]
        msgs = [{"role": "user", "content": q["turns"][0]}]
        isl = wl.builder.tok.count_chat(msgs) if wl.builder else len(q["turns"][0].split())
        follow = [(t, 0, self.osl) for t in q["turns"][1:]]
        return WorkItem(i * MAX_TURNS, msgs, isl, self.osl, source=f"mt-bench:q{q['question_id']}:turn0", conversation=int(q["question_id"]),
                        turn=0, followups=follow, think_s=self.think_s)

    def describe(self) -> dict:
        return {"dataset": "mt-bench", "conversations": self.size, "turns": 2, "attribution": ATTRIBUTION["mt-bench"]}


def _timestamp(m: dict, p: Path, ln: int) -> float | None:
    """A turn's `timestamp` (or `created_at`) in seconds: epoch seconds (milliseconds when > 1e11) or ISO 8601."""
    v = m.get("timestamp", m.get("created_at"))
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v) / 1000 if v > 1e11 else float(v)
    if isinstance(v, str):
        from datetime import datetime, timezone

        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    raise SpecError(f"{p}:{ln}: timestamp {v!r} is neither epoch seconds nor ISO 8601 (e.g. 2024-05-01T12:00:03Z)")


class Conversations(Source):
    """Multi-turn sessions from a ShareGPT-format file (`conversations`: [{from: human|gpt, value}, ...]) or a chat
    JSONL (`messages`: [{role: user|assistant, content}, ...]). Item i is conversation i's first user turn; each
    later user turn is sent after the previous answer ends plus a think time, with the real history (the server's
    own answers, so its prefix cache sees what production traffic gives it). The think time is the trace's own
    where its turns carry a `timestamp` (or `created_at`: epoch seconds or ISO 8601): the gap between a recorded
    answer and the next user turn; else `think_s`. A turn's output length is the recorded answer's token count
    where the file has one, else --osl. At most 16 turns a conversation."""

    has_lengths = False
    makes_items = True
    wraps = True

    def __init__(self, kind: str, path: Path, spec, think_s: float, max_think_s: float = 60.0):
        super().__init__()
        self.name_ = f"{kind}:{path.name}"
        self.think_s = think_s
        self.max_think_s = max_think_s
        self.special: int | None = None
        self.default_osl = int(spec.osl.a) if spec.osl.kind == "fixed" else 128
        self.truncated = 0
        self.traced_think = 0  # follow-up turns whose think time the file gives
        self.think_cut = 0  # ... of which longer than max_think_s, cut to it
        self.think_longest = 0.0  # the longest the file gives (s)
        for ln, rec in read_table(path):
            system, turns = self._turns(rec, path, ln)
            if turns:
                traced = [t[2] for t in turns[1:MAX_TURNS] if t[2] is not None]
                self.traced_think += len(traced)
                self.think_cut += sum(x > max_think_s for x in traced)
                self.think_longest = max([self.think_longest, *traced])
                turns = [(q, a, None if t is None else min(t, max_think_s)) for q, a, t in turns]
                self.rows.append((ln, system, turns[:MAX_TURNS]))
                self.truncated += len(turns) > MAX_TURNS
        if not self.rows:
            raise SpecError(f"{path}: no conversation with a user turn")

    @staticmethod
    def _turns(rec: dict, p: Path, ln: int) -> tuple[list[dict[str, str]], list[tuple[str, str | None, float | None]]]:
        """(system messages before the first user turn, [(user text, the recorded answer or None, the think time
        before this turn from the file's timestamps or None)] in order)."""
        conv = rec.get("conversations")
        user: tuple[str, ...]
        assistant: tuple[str, ...]
        if conv is not None:
            who, text = "from", "value"
            user, assistant = ("human", "user"), ("gpt", "assistant", "chatgpt", "bing", "bard")
        elif rec.get("messages") is not None:
            conv, who, text = rec["messages"], "role", "content"
            user, assistant = ("user",), ("assistant",)
        else:
            raise SpecError(f"{p}:{ln}: expected 'conversations' (ShareGPT: from/value turns) or 'messages' (role/content); "
                            f"found: {', '.join(map(str, rec)) or 'none'}")
        if not isinstance(conv, list) or not all(isinstance(m, dict) and isinstance(m.get(text), str) for m in conv):
            raise SpecError(f"{p}:{ln}: each turn must be an object with a text '{text}'")
        out: list[tuple[str, str | None, float | None]] = []
        system = []
        answered_at: float | None = None  # the last recorded answer's timestamp
        for m in conv:
            if m.get(who) == "system" and not out:
                system.append({"role": "system", "content": m[text]})
            elif m.get(who) in user:
                t = _timestamp(m, p, ln)
                think = None
                if t is not None and answered_at is not None and out:
                    if t < answered_at:
                        raise SpecError(f"{p}:{ln}: turn {len(out)}'s timestamp is before the answer it follows; "
                                        "give each turn the time it was written (epoch seconds or ISO 8601)")
                    think = t - answered_at
                out.append((m[text], None, think))
                answered_at = None
            elif m.get(who) in assistant and out and out[-1][1] is None:
                out[-1] = (out[-1][0], m[text], out[-1][2])
                answered_at = _timestamp(m, p, ln)
        return system, out

    @property
    def size(self) -> int:
        return len(self.rows)

    def item(self, i: int, rng, wl):
        ln, system, turns = self.rows[i % len(self.rows)]

        def osl(answer: str | None) -> int:
            if answer and wl.builder is not None:
                if self.special is None:  # what the tokenizer adds to any prompt (BOS): not part of an answer
                    self.special = wl.builder.count("")
                return max(1, wl.builder.count(answer) - self.special)
            return self.default_osl

        first = [*system, {"role": "user", "content": turns[0][0]}]
        isl = wl.builder.tok.count_chat(first) if wl.builder else len(turns[0][0].split())
        follow = [(q, 0, osl(a), think) for q, a, think in turns[1:]]
        return WorkItem(i * MAX_TURNS, first, isl, osl(turns[0][1]), source=f"{self.name_}:line {ln}:turn0", conversation=i,
                        turn=0, followups=follow, think_s=self.think_s)

    def describe(self) -> dict:
        n = [len(t) for _, _, t in self.rows]  # user turns per conversation
        return {"dataset": self.name_, "conversations": self.size, "turns_mean": float(np.mean(n)), "turns_max": max(n),
                "think_s": self.think_s, "think_from_trace": self.traced_think,
                **({"think_longest_s": self.think_longest, "think_cut_to_max": self.think_cut} if self.traced_think else {}),
                "truncated_to_16_turns": self.truncated}


class UserFile(Source):
    """A user's CSV, TSV, JSON, JSONL or parquet file (compressed or not), validated with line-numbered
    errors. `columns` maps the fields trilemma reads to the file's own column names ({"prompt": "question"})."""

    makes_items = True

    def __init__(self, path: str, spec):
        super().__init__()
        p = Path(path).expanduser()
        if not p.exists():
            raise SpecError(f"--dataset file:{path}: no such file or directory")
        self.name_ = f"file:{p.name}"
        cols = dict(getattr(spec, "columns", None) or {})
        self.columns = cols
        self.rows = []
        for ln, rec in read_table(p):
            if cols:
                missing = [src for src in cols.values() if src not in rec]
                if missing:
                    raise SpecError(f"{p}:{ln}: no column {', '.join(repr(m) for m in missing)} to map "
                                    f"(found: {', '.join(map(str, rec)) or 'none'})")
                rec = {**rec, **{dst: rec[src] for dst, src in cols.items()}}
            self.rows.append(self._row(rec, p, ln))
        if not self.rows:
            raise SpecError(f"{p}: no rows")
        self.timed = all(r["timestamp"] is not None for r in self.rows)
        self.default_osl = int(spec.osl.a) if spec.osl.kind == "fixed" else 64
        self.speedup = spec.speedup
        if self.timed:
            self.rows.sort(key=lambda r: r["timestamp"])

    @staticmethod
    def _row(rec: dict, p: Path, ln: int) -> dict:
        def num(key, cast=int):
            v = rec.get(key)
            if v in (None, ""):
                return None
            try:
                x = cast(v)
            except (TypeError, ValueError):
                raise SpecError(f"{p}:{ln}: column '{key}' must be a number, got {v!r}") from None
            if x < 0:
                raise SpecError(f"{p}:{ln}: column '{key}' must be >= 0")
            return x

        msgs = rec.get("messages")
        if isinstance(msgs, str) and msgs.strip():
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError:
                raise SpecError(f"{p}:{ln}: 'messages' must be a JSON list of {{role, content}}") from None
        prompt = rec.get("prompt") or None
        if prompt is not None and not isinstance(prompt, str):
            raise SpecError(f"{p}:{ln}: 'prompt' must be text, got {type(prompt).__name__}")
        isl = num("input_tokens")
        if prompt is None and msgs is None and isl is None:
            found = ", ".join(str(k) for k in rec if k not in FILE_FIELDS) or "none"
            raise SpecError(f"{p}:{ln}: give one of the columns prompt, messages or input_tokens (other columns found: {found}; "
                            "map one with --columns, e.g. prompt=question or input_tokens=num_prefill_tokens)")
        if msgs is not None and not (isinstance(msgs, list) and all(isinstance(m, dict) and "content" in m for m in msgs)):
            raise SpecError(f"{p}:{ln}: 'messages' must be a list of {{role, content}} objects")
        for k, m in enumerate(msgs or []):
            if not isinstance(m["content"], str):
                raise SpecError(f"{p}:{ln}: messages[{k}].content must be a string (text), got {type(m['content']).__name__}; "
                                "multimodal content is not supported: keep the text only")
        return {"prompt": prompt, "messages": msgs, "isl": isl, "osl": num("output_tokens"), "timestamp": num("timestamp", float),
                "line": ln}

    def item(self, i: int, rng, wl):

        r = self.rows[i]
        osl = r["osl"] or self.default_osl
        if r["messages"] is not None:
            prompt = r["messages"]
            isl = wl.builder.tok.count_chat(prompt) if wl.builder else 0
        elif r["prompt"] is not None:
            prompt = r["prompt"]
            isl = wl.builder.count(prompt) if wl.builder else len(prompt.split())
        else:
            isl, osl = wl._clip(r["isl"], osl)
            prompt = wl.builder.text(rng, isl) if wl.builder else " ".join(["hello"] * isl)
        it = WorkItem(i, prompt, isl, osl, source=f"{self.name_}:line {r['line']}")
        if self.timed:
            it.offset_ns = int(round((r["timestamp"] - self.rows[0]["timestamp"]) / self.speedup * 1e9))
        return it


def open_source(name: str, spec, seed: int) -> Source:
    """Resolve a --dataset / trace:NAME spec."""
    window = tuple(spec.window_s) if spec.window_s else None
    if name.startswith("trace:"):
        base = name[6:]
        if base in AZURE:
            return LengthPairs(base, _azure_rows(base))
        if base == "mooncake":
            return LengthPairs(base, _mooncake_rows())
        raise SpecError(f"--isl {name}: unknown trace; use trace:azure-conv, trace:azure-code or trace:mooncake")
    if name in AZURE:
        return TimedTrace(name, _azure_rows(name), spec.speedup, window, ATTRIBUTION["azure"])
    if name in ("mooncake", "mooncake:scrambled"):
        return Mooncake(_mooncake_rows(), spec.speedup, window, name.endswith("scrambled"), seed)
    if name == "sonnet":
        return Sonnet(spec)
    if name == "mt-bench":
        return MTBench(int(spec.osl.a) if spec.osl.kind == "fixed" else 128, spec.think_s)
    if name.startswith("file:"):
        return UserFile(name[5:], spec)
    kind, _, path = name.partition(":")
    if kind in ("sharegpt", "chat") and path:
        return Conversations(kind, _user_path(name, path), spec, spec.think_s, spec.max_think_s)
    if kind == "mooncake" and path:
        rows = _mooncake_rows(_user_path(name, path))
        return Mooncake(rows, spec.speedup, window, False, seed, name=f"mooncake:{Path(path).name}")
    if kind == "azure" and path:
        return TimedTrace(f"azure:{Path(path).name}", _azure_rows("", _user_path(name, path)), spec.speedup, window,
                          "your trace (Azure LLM inference format)")
    if kind == "burstgpt" and path:
        rows, failed = _burstgpt_rows(_user_path(name, path))
        src = TimedTrace(f"burstgpt:{Path(path).name}", rows, spec.speedup, window, "your trace (BurstGPT format)")
        src.failed_rows_skipped = failed
        return src
    raise SpecError(f"dataset '{name}' is not known; use azure-conv, azure-code, mooncake, mooncake:scrambled, sonnet, "
                    "mt-bench, file:PATH, your own trace as mooncake:PATH, azure:PATH or burstgpt:PATH, or conversations as "
                    "sharegpt:PATH or chat:PATH")
