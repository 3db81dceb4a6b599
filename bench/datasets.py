"""① Traces and datasets as workload sources (shipped under bench/data/traces with their licences).

    azure-conv, azure-code   Azure LLM inference trace 2023 (CC-BY-4.0): arrival time, ISL, OSL per row
    mooncake                 Kimi/Mooncake conversation trace (Apache-2.0): ms arrival, ISL, OSL and
                             hash_ids of 512-token prefix blocks; equal ids become equal prompt text, so a
                             server's prefix cache sees the sharing the trace recorded. `mooncake:scrambled`
                             gives every request its own blocks (same lengths, no sharing) as a control.
    sonnet                   vLLM's sonnet dataset behaviour: a fixed prefix of lines + sampled lines, to the ISL
    mt-bench                 MT-Bench two-turn questions (Apache-2.0): turn 2 is sent after turn 1 completes,
                             with the real first answer in the history (chat API)
    file:PATH                your CSV or JSONL: columns `prompt` (text) or `messages` (chat list) or
                             `input_tokens`; optional `output_tokens`, `timestamp` (seconds; replay)

Timed traces replay their own arrival times (scaled by `speedup`, windowed by `window_s`) when no --qps
or --concurrency is given; `--isl trace:NAME` instead samples (ISL, OSL) pairs jointly from a trace
(keeping their correlation) under the run's own arrival process. Every record names its source row.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.config import LengthDist, SpecError


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
    followups: list = field(default_factory=list)  # later user turns of a multi-turn conversation


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
        return {"dataset": self.name_, "rows": self.size, "trace_span_s": span, "speedup": self.speedup,
                "replay_span_s": span / self.speedup, "offered_qps": self.size / (span / self.speedup) if span else None,
                "attribution": self.attribution}


def _azure_rows(name: str) -> list:
    from datetime import datetime

    path = TRACES / "azure-llm-2023" / AZURE[name]
    rows = []
    with open(path) as f:
        for rec in csv.DictReader(f):
            ts = rec["TIMESTAMP"]
            main, frac = (ts.split(".") + ["0"])[:2]
            t = datetime.strptime(main, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + frac)
            rows.append((t, max(1, int(rec["ContextTokens"])), max(1, int(rec["GeneratedTokens"])), None))
    rows.sort(key=lambda r: r[0])
    return rows


def _mooncake_rows() -> list:
    rows = []
    with open(TRACES / "mooncake" / "conversation_trace.jsonl") as f:
        for line in f:
            d = json.loads(line)
            rows.append((d["timestamp"] / 1000.0, int(d["input_length"]), int(d["output_length"]), list(d["hash_ids"])))
    rows.sort(key=lambda r: r[0])
    return rows


class Mooncake(TimedTrace):
    """Prompts built from 512-token blocks; equal hash_id -> identical text. Scrambled: unique blocks."""

    makes_items = True

    def __init__(self, rows, speedup, window, scrambled: bool, seed: int):
        super().__init__("mooncake:scrambled" if scrambled else "mooncake", rows, speedup, window, ATTRIBUTION["mooncake"])
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

    def __init__(self, osl: int):
        super().__init__()
        self.name_ = "mt-bench"
        with open(TRACES / "mt-bench" / "question.jsonl") as f:
            self.rows = [json.loads(ln) for ln in f if ln.strip()]
        self.osl = osl

    def item(self, i: int, rng, wl):

        q = self.rows[i % len(self.rows)]
        msgs = [{"role": "user", "content": q["turns"][0]}]
        isl = wl.builder.tok.count_chat(msgs) if wl.builder else len(q["turns"][0].split())
        follow = [(t, 0, self.osl) for t in q["turns"][1:]]
        return WorkItem(i * 16, msgs, isl, self.osl, source=f"mt-bench:q{q['question_id']}:turn0", conversation=int(q["question_id"]),
                        turn=0, followups=follow)

    def describe(self) -> dict:
        return {"dataset": "mt-bench", "conversations": self.size, "turns": 2, "attribution": ATTRIBUTION["mt-bench"]}


class UserFile(Source):
    """A user's CSV/JSONL, validated with line-numbered errors."""

    makes_items = True

    def __init__(self, path: str, spec):
        super().__init__()
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"--dataset file:{path}: no such file")
        self.name_ = f"file:{p.name}"
        self.rows = []
        if p.suffix.lower() == ".csv":
            with open(p, newline="") as f:
                for ln, rec in enumerate(csv.DictReader(f), start=2):
                    self.rows.append(self._row(rec, p, ln))
        else:
            with open(p) as f:
                lines = list(f)
            for ln, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SpecError(f"{p}:{ln}: not valid JSON ({e.msg}); one JSON object per line") from None
                if not isinstance(rec, dict):
                    raise SpecError(f"{p}:{ln}: expected a JSON object with prompt/messages/input_tokens")
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
        isl = num("input_tokens")
        if prompt is None and msgs is None and isl is None:
            raise SpecError(f"{p}:{ln}: give one of the columns prompt, messages or input_tokens")
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
        return MTBench(int(spec.osl.a) if spec.osl.kind == "fixed" else 128)
    if name.startswith("file:"):
        return UserFile(name[5:], spec)
    raise SpecError(f"dataset '{name}' is not known; use azure-conv, azure-code, mooncake, mooncake:scrambled, sonnet, "
                    "mt-bench or file:PATH")
