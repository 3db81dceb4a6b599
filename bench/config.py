"""Pydantic specs for runs and sweeps, and the small parsers behind CLI options.

Every user error surfaces as `SpecError` with one line naming the field and the fix; the CLI prints
that line and exits 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_serializer, model_validator


class SpecError(ValueError):
    """A user-facing configuration error: one line, says what is wrong and how to fix it."""


# ---------------------------------------------------------------- lengths
class LengthDist(BaseModel):
    """A token-length distribution: `128`, `uniform:LO:HI`, `normal:MEAN:SD`, `lognormal:MEAN:SD`,
    or `trace:NAME` (joint ISL/OSL pairs sampled from a shipped trace; see datasets.py)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["fixed", "uniform", "normal", "lognormal", "trace"] = "fixed"

    @model_serializer
    def _ser(self) -> str:
        return str(self)
    a: float = 0.0
    b: float = 0.0
    trace: str = ""

    @classmethod
    def parse(cls, text: str | int | "LengthDist", what: str = "length") -> "LengthDist":
        if isinstance(text, LengthDist):
            return text
        s = str(text).strip()
        if re.fullmatch(r"\d+", s):
            n = int(s)
            if n < 1:
                raise SpecError(f"{what} must be >= 1 token, got {s}")
            return cls(kind="fixed", a=n)
        parts = s.split(":")
        kind = parts[0].lower()
        if kind == "trace" and len(parts) == 2 and parts[1]:
            return cls(kind="trace", trace=parts[1])
        if kind in ("uniform", "normal", "lognormal") and len(parts) == 3:
            try:
                a, b = float(parts[1]), float(parts[2])
            except ValueError:
                raise SpecError(f"{what} '{s}': both parameters must be numbers") from None
            if kind == "uniform" and not (1 <= a <= b):
                raise SpecError(f"{what} '{s}': need 1 <= LO <= HI")
            if kind != "uniform" and (a <= 0 or b < 0):
                raise SpecError(f"{what} '{s}': need MEAN > 0 and SD >= 0")
            return cls(kind=kind, a=a, b=b)
        raise SpecError(
            f"{what} '{s}' is not understood; use N, uniform:LO:HI, normal:MEAN:SD, lognormal:MEAN:SD or trace:NAME"
        )

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        if self.kind == "trace":
            return f"trace:{self.trace}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a


# ---------------------------------------------------------------- SLOs
_UNITS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1000.0}
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")

# Named presets (MLPerf Inference LLM latency limits, mlperf.conf; TTFT/TPOT at p99).
SLO_PRESETS = {
    "mlperf-llama2-70b": "ttft_p99=2000ms,tpot_p99=200ms",
    "mlperf-llama2-70b-interactive": "ttft_p99=450ms,tpot_p99=40ms",
    "mlperf-llama3.1-8b": "ttft_p99=2000ms,tpot_p99=100ms",
    "mlperf-llama3.1-8b-interactive": "ttft_p99=500ms,tpot_p99=30ms",
    "mlperf-llama3.1-405b": "ttft_p99=6000ms,tpot_p99=175ms",
}


class SLO(BaseModel):
    """A latency objective: `metric` at percentile `pct` must be <= `threshold_ms`."""

    model_config = ConfigDict(frozen=True)
    metric: Literal["ttft", "tpot", "itl", "e2e"]
    pct: float = Field(gt=0, lt=100)
    threshold_ms: float = Field(gt=0)

    @property
    def name(self) -> str:
        return f"{self.metric}_p{self.pct:g}"

    def __str__(self) -> str:
        return f"{self.name}<={self.threshold_ms:g}ms"


def parse_duration_ms(text: str | float | int, what: str) -> float:
    """'500ms', '2s', '750us', or a bare number of milliseconds -> milliseconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s)?\s*", str(text))
    if not m:
        raise SpecError(f"{what}: '{text}' is not a duration; write e.g. 500ms or 2s")
    return float(m.group(1)) * _UNITS[m.group(2) or "ms"]


def parse_slo_item(key: str, value: str | float) -> SLO:
    m = re.fullmatch(r"(ttft|tpot|itl|e2e)_p(\d+(?:\.\d+)?)", key.strip().lower())
    if not m:
        raise SpecError(f"SLO '{key}': name it METRIC_pPCT with METRIC one of {', '.join(SLO_METRICS)}, e.g. ttft_p99")
    try:
        return SLO(metric=m.group(1), pct=float(m.group(2)), threshold_ms=parse_duration_ms(value, f"SLO {key}"))
    except ValidationError:
        raise SpecError(f"SLO '{key}={value}': percentile must be in (0, 100) and threshold > 0") from None


def parse_slos(text: str | dict | list | None) -> list[SLO]:
    """Parse `ttft_p99=500ms,itl_p99=50ms`, a preset name, or a mapping {ttft_p99: 500ms}."""
    if not text:
        return []
    if isinstance(text, list):
        return [s if isinstance(s, SLO) else SLO(**s) for s in text]
    if isinstance(text, dict):
        return [parse_slo_item(k, v) for k, v in text.items()]
    text = SLO_PRESETS.get(text.strip(), text)
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise SpecError(f"SLO '{item}': write METRIC_pPCT=VALUE, e.g. ttft_p99=500ms (presets: {', '.join(SLO_PRESETS)})")
        k, v = item.split("=", 1)
        out.append(parse_slo_item(k, v))
    return out


# ---------------------------------------------------------------- arrivals
class Arrival(BaseModel):
    """Inter-arrival process: poisson (CV 1), gamma with a coefficient of variation, or constant."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["poisson", "gamma", "constant"] = "poisson"
    cv: float = 1.0

    @model_serializer
    def _ser(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, text: str | "Arrival") -> "Arrival":
        if isinstance(text, Arrival):
            return text
        s = str(text).strip().lower()
        if s in ("poisson", "constant"):
            return cls(kind=s, cv=1.0 if s == "poisson" else 0.0)
        m = re.fullmatch(r"gamma:([0-9]*\.?[0-9]+)", s)
        if m and float(m.group(1)) > 0:
            return cls(kind="gamma", cv=float(m.group(1)))
        raise SpecError(f"arrival '{text}' is not understood; use poisson, constant or gamma:CV (CV > 0)")

    def __str__(self) -> str:
        return f"gamma:{self.cv:g}" if self.kind == "gamma" else self.kind


def parse_amount(text: str | float | None, what: str) -> tuple[float, str]:
    """Warmup as seconds ('10s', '10') or a request count ('50r', '50req') -> (value, 's'|'r')."""
    if text is None or text == "":
        return 0.0, "s"
    s = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(s|sec|r|req|requests)?", s)
    if not m:
        raise SpecError(f"{what} '{text}': write seconds (10s) or a request count (50r)")
    unit = "r" if (m.group(2) or "s").startswith("r") else "s"
    return float(m.group(1)), unit


# ---------------------------------------------------------------- run spec
class TargetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = "http://127.0.0.1:8000"
    model: str | None = None
    api: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"
    tokenizer: str | None = None  # local HF tokenizer dir/tokenizer.json; else the server's /tokenize
    ignore_eos: bool = True
    continuous_usage: bool = True
    request_timeout_s: float = 600.0
    # production request settings: body fields sent with every request (temperature, top_p, seed, stop,
    # response_format, tools, ...) and extra HTTP headers (their values are never written to results)
    request: dict[str, Any] = {}
    headers: dict[str, str] = {}
    # a model mix (multi-LoRA servers, several served names): each request (a conversation: all its turns)
    # goes to one name, drawn by weight from the run's seed; `model: {base: 0.7, lora-a: 0.3}` or --model base=0.7,lora-a=0.3
    model_mix: dict[str, float] | None = None
    # several replicas measured as one system: every address (`url: [a, b]` or --url repeated; `url` is the first),
    # each request to one of them, the least-loaded (fewest in flight) or in turn
    endpoints: list[str] = []
    spread: Literal["least", "round-robin"] = "least"

    @model_validator(mode="before")
    @classmethod
    def _mix(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("url"), (list, tuple)):
            urls = [str(u).strip().rstrip("/").removesuffix("/v1") for u in data["url"] if str(u).strip()]
            if not urls:
                raise ValueError("url: give at least one server address, e.g. http://127.0.0.1:8000")
            if len(set(u.rstrip("/") for u in urls)) < len(urls):
                raise ValueError(f"url: an address is given twice ({', '.join(urls)}); give each replica once")
            data = {**data, "url": urls[0], "endpoints": urls if len(urls) > 1 else []}
        if isinstance(data, dict):
            m = data.get("model")
            if isinstance(m, str) and "=" in m:
                try:
                    m = {k.strip(): float(v) for k, _, v in (part.partition("=") for part in m.split(","))}
                except ValueError:
                    raise ValueError(f"model mix '{data['model']}': write NAME=WEIGHT pairs, e.g. base=0.7,lora-a=0.3") from None
            if isinstance(m, dict):
                data = {**data, "model_mix": m, "model": max(m, key=lambda k: m[k]) if m else None}
        return data

    @field_validator("model_mix")
    @classmethod
    def _mix_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("a model mix needs two or more names with weights, e.g. {base: 0.7, lora-a: 0.3}")
            if not all(math.isfinite(w) and w > 0 for w in v.values()) or not all(k for k in v):
                raise ValueError("model mix: give each named model a positive weight, e.g. {base: 0.7, lora-a: 0.3}")
        return v

    @field_validator("request")
    @classmethod
    def _request(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = {"model": "--model", "stream": "streaming (always on)", "stream_options": "--continuous-usage",
                 "prompt": "the workload", "messages": "the workload", "max_tokens": "--osl", "max_completion_tokens": "--osl"}
        bad = [k for k in v if k in owned]
        if bad:
            raise ValueError(f"'{bad[0]}' is set by {owned[bad[0]]}; the request block adds other fields (temperature, top_p, seed, stop, ...)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", k):
                raise ValueError(f"header name {k!r} is not a valid HTTP header name")
            if k.lower() in ("authorization", "content-type", "accept", "content-length", "host"):
                raise ValueError(f"header {k!r} is set by trilemma (the API key: --api-key or TRILEMMA_API_KEY)")
        return {str(k): str(x) for k, x in v.items()}

    @field_serializer("headers", when_used="json")
    def _hide_headers(self, v: dict[str, str]) -> dict[str, str]:
        return {k: "<not stored>" for k in v}

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:8000")
        return v.rstrip("/").removesuffix("/v1")

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        return [cls._url(u) for u in v]

    @field_validator("request_timeout_s")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--timeout must be a number of seconds > 0, got {v:g}; e.g. --timeout 600")
        return v


MAX_PLANNED_REQUESTS = 1_000_000  # one load point; beyond this the prompts alone need gigabytes


def _finite(v: float | None, what: str, example: str) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, got {v}; e.g. {example}")
    return v


def _gpu_telemetry(v: str) -> str:
    if v in ("auto", "off", "nvml") or re.match(r"^dcgm:https?://\S+$", v):
        return v
    raise ValueError(f"'{v}' is not a GPU telemetry source; use auto, off, nvml or dcgm:URL (a DCGM exporter, e.g. dcgm:http://gpu-box:9400/metrics)")


FILE_FIELDS = ("prompt", "messages", "input_tokens", "output_tokens", "timestamp")


def parse_columns(v: str | dict | None) -> dict[str, str] | None:
    """A column mapping, `prompt=question,output_tokens=n` or a dict: field trilemma reads -> the file's column."""
    if v is None or v == "" or v == {}:
        return None
    if isinstance(v, str):
        out = {}
        for part in v.split(","):
            k, eq, col = part.partition("=")
            if not eq or not k.strip() or not col.strip():
                raise ValueError(f"columns '{v}': write FIELD=COLUMN pairs, e.g. prompt=question,output_tokens=n")
            out[k.strip()] = col.strip()
        v = out
    if not isinstance(v, dict):
        raise ValueError("columns: a mapping of field to column, e.g. {prompt: question}")
    bad = [k for k in v if k not in FILE_FIELDS]
    if bad:
        raise ValueError(f"columns: unknown field {', '.join(map(repr, bad))}; map {', '.join(FILE_FIELDS)}")
    return {str(k): str(c) for k, c in v.items()}


class WorkloadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    isl: LengthDist = LengthDist(kind="fixed", a=128)
    osl: LengthDist = LengthDist(kind="fixed", a=64)
    prefix_tokens: int = Field(0, ge=0)
    prefix_groups: int = Field(0, ge=0)
    dataset: str | None = None  # trace / dataset spec, see datasets.py
    max_model_len: int | None = None
    speedup: float = Field(1.0, gt=0)  # trace replay time scaling
    window_s: tuple[float, float] | None = None  # trace replay: [start, end) seconds of the trace
    columns: dict[str, str] | None = None  # file:PATH: field -> the file's column ({"prompt": "question"})
    think_s: float = Field(0.0, ge=0)  # conversations: pause between an answer and the next turn
    max_think_s: float = Field(60.0, gt=0)  # conversations: a trace's own pauses are cut to this (logs hold hours-long gaps)

    @field_validator("columns", mode="before")
    @classmethod
    def _cols(cls, v):
        return parse_columns(v)

    @field_validator("isl", "osl", mode="before")
    @classmethod
    def _len(cls, v):
        return LengthDist.parse(v)

    @model_validator(mode="after")
    def _prefix(self):
        if (self.prefix_tokens > 0) != (self.prefix_groups > 0):
            raise ValueError("prefix_tokens and prefix_groups go together (both > 0)")
        return self

    def label(self) -> str:
        if self.dataset:
            return self.dataset
        s = f"isl{self.isl}_osl{self.osl}"
        if self.prefix_tokens:
            s += f"_prefix{self.prefix_tokens}x{self.prefix_groups}"
        return s


class Stage(BaseModel):
    """One stretch of an open loop at a constant rate."""

    model_config = ConfigDict(extra="forbid")
    qps: float = Field(gt=0)
    duration_s: float = Field(gt=0)

    @field_validator("qps", "duration_s")
    @classmethod
    def _fin(cls, v):
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v


def parse_stages(v: str | list | None) -> list | None:
    """`2:60,8:60` (qps:seconds, in order) or a list of {qps, duration_s}."""
    if v is None or v == "" or v == []:
        return None
    if isinstance(v, str):
        out = []
        for part in v.split(","):
            q, _, d = part.partition(":")
            try:
                out.append({"qps": float(q), "duration_s": float(d)})
            except ValueError:  # a missing ':' leaves d empty
                raise ValueError(f"stages '{v}': write QPS:SECONDS pairs in order, e.g. 2:60,8:60") from None
        return out
    return v


class LoadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    qps: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1)
    arrival: Arrival = Arrival()
    max_concurrency: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)
    requests: int | None = Field(None, ge=1)
    warmup: float = Field(0.0, ge=0)
    warmup_unit: Literal["s", "r"] = "s"
    replay: bool = False  # a timed trace supplies the arrival times
    ramp_up_s: float = Field(0.0, ge=0)  # open loop: the rate grows linearly from 0 over this long first (sent as warmup)
    stages: list[Stage] | None = None  # open loop: constant-rate stretches in order, instead of one --qps

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v):
        return parse_stages(v)

    @property
    def open_loop(self) -> bool:
        return self.qps is not None or self.replay or bool(self.stages)

    def warm_seconds(self) -> float:
        """Time-based warmup of the schedule: a ramp (sent as warmup) plus --warmup in seconds."""
        return (self.warmup if self.warmup_unit == "s" else 0.0) + self.ramp_up_s

    def planned_requests(self) -> int | None:
        """Requests an open loop is expected to send (the rate's integral over the schedule), for pre-building prompts."""
        if self.stages or self.ramp_up_s:
            return int(math.ceil(sum(d * (r0 + r1) / 2 for d, r0, r1 in self.rate_pieces())))
        if self.qps is not None:
            return int(math.ceil(self.qps * ((self.duration_s or 0) + self.warm_seconds())))
        return None

    def rate_pieces(self) -> list[tuple[float, float, float]]:
        """The open loop's rate over time: (seconds, rate at start, rate at end) pieces — the ramp, then the
        stages (or --qps for warmup + duration)."""
        if self.stages:
            rates = [(s.duration_s, s.qps) for s in self.stages]
        else:
            rates = [((self.duration_s or 0) + (self.warmup if self.warmup_unit == "s" else 0), self.qps or 0.0)]
        out = [(self.ramp_up_s, 0.0, rates[0][1])] if self.ramp_up_s > 0 else []
        return out + [(d, q, q) for d, q in rates]

    def stage_at(self, offset_s: float) -> int:
        """Which stretch of the schedule a send `offset_s` after its start falls in: -1 the ramp, k the k-th
        stage (0 for a run without stages, and for a follow-up past the last stage's end: the last)."""
        if self.ramp_up_s > 0 and offset_s < self.ramp_up_s:
            return -1
        t = offset_s - self.ramp_up_s
        for k, s in enumerate(self.stages or []):
            if t < s.duration_s:
                return k
            t -= s.duration_s
        return max(0, len(self.stages or []) - 1)

    @field_validator("arrival", mode="before")
    @classmethod
    def _arr(cls, v):
        return Arrival.parse(v)

    @field_validator("qps", "duration_s", "warmup")
    @classmethod
    def _finite(cls, v, info):
        flag = {"qps": "--qps", "duration_s": "--duration", "warmup": "--warmup"}[info.field_name]
        return _finite(v, flag, {"qps": "--qps 8", "duration_s": "--duration 60", "warmup": "--warmup 10s"}[info.field_name])

    @model_validator(mode="after")
    def _size(self):
        warm_s = self.warmup if self.warmup_unit == "s" else 0.0
        warm_r = int(self.warmup) if self.warmup_unit == "r" else 0
        if self.requests is not None:
            n, what = float(self.requests + warm_r), "--requests (+ warmup requests)"
        elif self.qps is not None and self.duration_s is not None:
            n, what = self.qps * (self.duration_s + warm_s), "--qps × (--duration + warmup)"
        else:
            return self
        if n > MAX_PLANNED_REQUESTS:
            raise ValueError(f"{what} plans {n:,.0f} requests, more than {MAX_PLANNED_REQUESTS:,} in one load point; "
                             "lower --qps, --duration or --requests (or split the run into several points)")
        return self

    @model_validator(mode="after")
    def _stages_and_ramp(self):
        if self.stages:
            if self.qps is not None or self.concurrency is not None or self.replay or self.requests is not None:
                raise ValueError("stages set the rate and length of the run: drop --qps, --concurrency, --requests and trace replay")
            total = sum(s.duration_s for s in self.stages)
            if self.duration_s is not None and abs(self.duration_s - total) > 1e-9:
                raise ValueError(f"stages last {total:g} s; drop --duration (it is their sum)")
            if self.warmup_unit == "r" and self.warmup:
                raise ValueError("with stages, give the warmup in seconds (it is the start of the first stage)")
            self.duration_s = total
            n = self.planned_requests() or 0
            if n > MAX_PLANNED_REQUESTS:
                raise ValueError(f"the stages plan {n:,.0f} requests, more than {MAX_PLANNED_REQUESTS:,} in one load point")
        if self.ramp_up_s and (self.concurrency is not None or self.replay):
            raise ValueError("--ramp-up ramps an open loop's rate (--qps or stages); a closed loop or a trace replay has none")
        return self

    @model_validator(mode="after")
    def _one_mode(self):
        if self.stages:
            return self
        if self.replay:
            if self.qps is not None or self.concurrency is not None:
                raise ValueError("trace replay takes its arrival times from the trace; drop --qps/--concurrency")
            return self
        if (self.qps is None) == (self.concurrency is None):
            raise ValueError("give exactly one of --qps (open loop) or --concurrency (closed loop), or a timed --dataset to replay")
        if self.duration_s is None and self.requests is None:
            raise ValueError("give --duration SECONDS or --requests N")
        if self.concurrency is not None and self.max_concurrency is not None:
            raise ValueError("--max-concurrency caps an open loop (--qps); a closed loop already has --concurrency")
        return self

    def label(self) -> str:
        if self.replay:
            return "replay"
        if self.stages:
            return "stages" + "-".join(f"{s.qps:g}" for s in self.stages)
        return f"qps{self.qps:g}" if self.qps is not None else f"conc{self.concurrency}"


class ProbeRule(BaseModel):
    """How long one load point runs, decided by the data (METHODS §2-3).

    Warmup: at least `warmup_lifetimes` request lifetimes (E2E p50, watched while it runs) before the
    window opens. Window: at least `min_duration_s` and `window_lifetimes` lifetimes. With `sequential`,
    the probe then looks at its data at growing intervals (×`look_growth`) and stops as soon as every SLO's
    percentile interval lies on one side of its threshold and steady state is shown — or at once when an
    SLO fails decisively or the queue grows (early abort) — else at `max_duration_s`/`max_requests`,
    undecided. The 5% error of the verdict is spent over the planned looks (stats.look_confidence)."""

    model_config = ConfigDict(extra="forbid")
    min_duration_s: float = Field(20.0, gt=0)
    max_duration_s: float = Field(120.0, gt=0)
    max_requests: int | None = Field(None, ge=1)
    warmup_lifetimes: float = Field(2.0, ge=0)
    window_lifetimes: float = Field(3.0, ge=0)
    sequential: bool = True
    confidence: float = Field(0.95, gt=0.5, lt=1)
    look_growth: float = Field(1.5, gt=1)

    @model_validator(mode="after")
    def _range(self):
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(f"max_duration_s ({self.max_duration_s:g}) must be >= min_duration_s ({self.min_duration_s:g})")
        return self

    def looks(self) -> int:
        from bench.stats import planned_looks

        return planned_looks(self.min_duration_s, self.max_duration_s, self.look_growth) if self.sequential else 1

    def look_confidence(self) -> float:
        from bench.stats import look_confidence

        return look_confidence(self.confidence, self.looks())


class RunSpec(BaseModel):
    """Everything that defines one load point. Stored verbatim in run.json (minus secrets)."""

    model_config = ConfigDict(extra="forbid")
    target: TargetSpec = TargetSpec()
    workload: WorkloadSpec = WorkloadSpec()
    load: LoadSpec
    slos: list[SLO] = []
    seed: int = 0
    labels: dict[str, str] = {}
    reset_prefix_cache: bool = True  # vLLM /reset_prefix_cache, SGLang /flush_cache, where the server offers it
    scrape_metrics: bool = True
    gpu_telemetry: str = "auto"  # auto | off | nvml | dcgm:URL
    probe: ProbeRule | None = None  # sequential load point (sweeps); None: exactly --duration/--requests
    workers: int | Literal["auto"] = 1  # client processes that send and read the streams (bench/workers.py)
    ray: str | None = None  # send from actors on a Ray cluster (bench/raypool.py): its address, `auto`, or `local`

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        return _workers_field(v)

    @field_validator("gpu_telemetry")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _gpu_telemetry(v)

    @classmethod
    def from_options(cls, *, url: str | list[str], model: str | None = None, api: str = "completions", tokenizer: str | None = None,
                     ignore_eos: bool = True, continuous_usage: bool = True, timeout: float = 600.0, isl: str = "128",
                     osl: str = "64", prefix_tokens: int = 0, prefix_groups: int = 0, dataset: str | None = None,
                     max_model_len: int | None = None, speedup: float = 1.0, window: str | None = None, columns: str | None = None,
                     qps: float | None = None,
                     concurrency: int | None = None, arrival: str = "poisson", max_concurrency: int | None = None,
                     duration: float | None = None, requests: int | None = None, warmup: str = "0", slo: str | None = None,
                     ramp_up: float = 0.0, stages: str | None = None, think_time: float = 0.0, max_think_time: float = 60.0,
                     seed: int = 0, labels: dict[str, str] | None = None, reset_prefix_cache: bool = True,
                     server_metrics: bool = True, gpu_telemetry: str = "auto", until_decided: bool = False,
                     max_duration: float | None = None, request: str | None = None, headers: list[str] | None = None,
                     workers: str | int = 1, spread: str = "least", ray: str | None = None) -> RunSpec:
        """The spec of `trilemma run`'s options (the CLI's names and string forms); SpecError names a bad one.
        A dataset with neither --qps nor --concurrency replays the trace's own timestamps."""
        w, unit = parse_amount(warmup, "--warmup")
        win = None
        if window:
            try:
                a, b = (float(x) for x in window.split(":"))
                win = (a, b)
            except ValueError:
                raise SpecError(f"--window '{window}': write START:END in seconds, e.g. 0:120") from None
        replay = qps is None and concurrency is None and dataset is not None
        slos = parse_slos(slo)
        body: dict[str, Any] = {}
        if request:
            try:
                body = json.loads(request)
            except json.JSONDecodeError as e:
                raise SpecError(f"--request '{request}': not JSON ({e.msg}); e.g. --request '{{\"temperature\": 0.7, \"stop\": [\"###\"]}}'") from None
            if not isinstance(body, dict):
                raise SpecError("--request: give a JSON object of body fields, e.g. '{\"temperature\": 0.7}'")
        hdrs = {}
        for h in headers or []:
            k, colon, v = h.partition(":")
            if not colon or not k.strip():
                raise SpecError(f"--header '{h}': write NAME: VALUE, e.g. --header 'X-Tenant: team-a'")
            hdrs[k.strip()] = v.strip()
        probe = None
        if until_decided:
            if not slos or not duration:
                raise SpecError("--until-decided needs --slo (what to decide) and --duration (the shortest window)")
            probe = ProbeRule(min_duration_s=duration, max_duration_s=max_duration or max(4.0 * duration, 120.0))
        return cls(
            # nested as dicts: a validation error names its path (load.qps, workload.isl, ...)
            target=dict(url=url if isinstance(url, str) or len(url) > 1 else url[0], model=model, api=api, tokenizer=tokenizer,
                        ignore_eos=ignore_eos, continuous_usage=continuous_usage, request_timeout_s=timeout, request=body, headers=hdrs,
                        spread=spread),
            workload=dict(isl=LengthDist.parse(isl, "--isl"), osl=LengthDist.parse(osl, "--osl"), prefix_tokens=prefix_tokens,
                          prefix_groups=prefix_groups, dataset=dataset, max_model_len=max_model_len, speedup=speedup,
                          window_s=win, columns=columns, think_s=think_time, max_think_s=max_think_time),
            load=dict(qps=qps, concurrency=concurrency, arrival=Arrival.parse(arrival), max_concurrency=max_concurrency,
                      duration_s=duration, requests=requests, warmup=w, warmup_unit=unit, replay=replay and not stages,
                      ramp_up_s=ramp_up, stages=stages),
            slos=slos, seed=seed, labels=labels or {}, reset_prefix_cache=reset_prefix_cache,
            scrape_metrics=server_metrics, gpu_telemetry=gpu_telemetry, probe=probe, workers=parse_workers(workers, "--workers"), ray=ray)


def _workers_field(v: Any) -> Any:
    try:
        return parse_workers(v)
    except SpecError as e:
        raise ValueError(str(e)) from None


def parse_workers(v: str | int, what: str = "workers") -> int | Literal["auto"]:
    """A worker count: a whole number ≥ 1 or 'auto'; SpecError names a bad one."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    try:
        n = int(v)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(v).strip() not in (str(n), f"{n}.0"):
        raise SpecError(f"{what} '{v}': give a whole number of client processes ≥ 1, or auto")
    return n


def validation_message(e: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into one line naming the field path."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "spec"
    return f"{where}: {msg}"


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such file; give the path of a YAML spec (see sweeps/ for examples)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping at the top level")
    return data


# ---------------------------------------------------------------- sweep spec
class SimTarget(BaseModel):
    """Start the built-in simulator for the sweep (demo, tests)."""

    model_config = ConfigDict(extra="forbid")
    profile: str = "h100-llama3-8b"
    slowdown: float = Field(1.0, gt=0)
    seed: int = 0
    # planted faults (regression-gate tests, demos of a broken upgrade)
    error_rate: float = Field(0.0, ge=0, le=1)  # fraction of requests answered HTTP 500
    cut_rate: float = Field(0.0, ge=0, le=1)  # fraction of streams cut mid-response
    delay_ms: float = Field(0.0, ge=0, le=600_000)  # added before the engine: TTFT/E2E up, ITL unchanged


class LaunchSpec(BaseModel):
    """A server trilemma starts (bench/launch.py): a command template and its serve parameters. In a sweep a
    parameter given as a list is a grid: every combination is one server start, measured over every cell and load."""

    model_config = ConfigDict(extra="forbid")
    cmd: str  # e.g. "vllm serve meta-llama/Llama-3.1-8B-Instruct --port {port} --max-num-seqs {max_num_seqs}"
    params: dict[str, Any] = {}
    health_path: str | None = None  # default: /v1/models answers 200
    startup_timeout_s: float = Field(900.0, gt=0)
    env: dict[str, str] = {}
    image: str | None = None  # container form: `docker run ... IMAGE <cmd>` (e.g. vllm/vllm-openai:v0.11.0)
    gpus: str = "all"  # docker --gpus
    docker_args: list[str] = []
    restarts: int = Field(1, ge=0)  # a server that dies mid-sweep is started again this many times

    @field_validator("cmd")
    @classmethod
    def _cmd(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the server's command, e.g. 'vllm serve MODEL --port {port}'")
        if "{port}" not in v:
            raise ValueError("the command must listen on {port} (trilemma picks a free port), e.g. '... --port {port}'")
        return v

    def configs(self) -> list[dict[str, Any]]:
        """Every serve config: the product of the parameters given as lists (scalars are fixed)."""
        import itertools

        keys = sorted(self.params)
        axes = [v if isinstance(v, list) else [v] for v in (self.params[k] for k in keys)]
        if any(not a for a in axes):
            raise ValueError("a serve parameter's list of values is empty")
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


class SweepTarget(TargetSpec):
    sim: SimTarget | None = None
    launch: LaunchSpec | None = None

    @model_validator(mode="after")
    def _one_server(self):
        if self.sim is not None and self.launch is not None:
            raise ValueError("give sim (the built-in simulator) or launch (a server command), not both")
        if self.endpoints and (self.sim is not None or self.launch is not None):
            raise ValueError("a list of urls measures servers already running; drop it, or drop sim/launch")
        return self


class CellSpec(BaseModel):
    """One workload cell: ISL/OSL (fixed or distributions), or a dataset/trace."""

    model_config = ConfigDict(extra="forbid")
    isl: LengthDist = LengthDist(kind="fixed", a=128)
    osl: LengthDist = LengthDist(kind="fixed", a=64)
    dataset: str | None = None
    prefix_tokens: int = Field(0, ge=0)
    prefix_groups: int = Field(0, ge=0)
    name: str | None = None
    columns: dict[str, str] | None = None  # file:PATH: field -> the file's column ({"prompt": "question"})

    @field_validator("columns", mode="before")
    @classmethod
    def _cols(cls, v):
        return parse_columns(v)

    @field_validator("isl", "osl", mode="before")
    @classmethod
    def _len(cls, v):
        return LengthDist.parse(v)

    def identity(self) -> dict:
        """The cell as a sweep point's identity records it (a mapping only when one is given, so cells
        written before `columns` existed keep their identity)."""
        d = self.model_dump(mode="json")
        if d.get("columns") is None:
            d.pop("columns", None)
        return d

    def label(self) -> str:
        return self.name or WorkloadSpec(isl=self.isl, osl=self.osl, dataset=self.dataset, prefix_tokens=self.prefix_tokens,
                                          prefix_groups=self.prefix_groups).label()


class AutoSearch(BaseModel):
    """Adaptive knee search settings (METHODS.md §3)."""

    model_config = ConfigDict(extra="forbid")
    precision: float = Field(0.05, gt=0, lt=1)  # stop when hi/lo − 1 <= precision
    max_probes: int = Field(14, ge=3)
    confirm: bool = True
    extend_inconclusive: bool = True  # re-measure a point whose p99 CI straddles the SLO with a 2x window


class SweepLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    qps: list[float] | None = None
    concurrency: list[int] | None = None
    auto: AutoSearch | None = None
    arrival: Arrival = Arrival()
    max_concurrency: int | None = Field(None, ge=1)
    ramp_up_s: float = Field(0.0, ge=0)  # qps grid or stages: each point's rate grows from 0 over this long first (sent as warmup)
    # one staged open loop per cell (and repeat) instead of a grid: [{qps: 2, duration_s: 60}, {qps: 8, duration_s: 60}]
    stages: list[Stage] | None = None

    @field_validator("arrival", mode="before")
    @classmethod
    def _arr(cls, v):
        return Arrival.parse(v)

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v):
        if isinstance(v, list):  # `duration:` is accepted for duration_s, as the sweep's own duration_s is spelled
            v = [{("duration_s" if k == "duration" else k): x for k, x in st.items()} if isinstance(st, dict) else st for st in v]
        return parse_stages(v)

    @model_validator(mode="after")
    def _one(self):
        given = sum(x is not None for x in (self.qps, self.concurrency, self.auto, self.stages))
        if given != 1:
            raise ValueError("give exactly one of qps: [..], concurrency: [..], auto or stages: [..]")
        if self.qps is not None and (not self.qps or min(self.qps) <= 0 or not all(math.isfinite(q) for q in self.qps)):
            raise ValueError("qps: give a non-empty list of positive, finite rates, e.g. [2, 4, 8]")
        if self.concurrency is not None and (not self.concurrency or min(self.concurrency) < 1):
            raise ValueError("concurrency: give a non-empty list of integers >= 1")
        if self.ramp_up_s and self.qps is None and self.stages is None:
            raise ValueError("ramp_up_s ramps each point of a qps: [..] grid or stages: [..] (a closed loop or a knee search has none)")
        return self


class Attainment(BaseModel):
    """How a probe passes: `percentile` — each SLO's percentile is within its threshold; `fraction` —
    at least `target` of requests meet every SLO (DistServe-style goodput attainment)."""

    model_config = ConfigDict(extra="forbid")
    rule: Literal["percentile", "fraction"] = "percentile"
    target: float = Field(0.99, gt=0, le=1)


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    target: SweepTarget = SweepTarget()
    cells: list[CellSpec]
    load: SweepLoad
    slos: list[SLO] = []
    attainment: Attainment = Attainment()
    duration_s: float | None = Field(None, gt=0)
    requests: int | None = Field(None, ge=1)
    warmup: str | float = "0"
    repeats: int = Field(1, ge=1)
    seed: int = 0
    labels: dict[str, str] = {}
    reset_prefix_cache: bool = True
    gpu_telemetry: str = "auto"
    gpus: str = "all"
    # sequential probes (duration_s is their minimum window); sequential defaults to on for load: auto
    probe: dict = {}
    max_model_len: int | None = None
    workers: int | Literal["auto"] = 1  # client processes per point (bench/workers.py); not part of a point's identity
    ray: str | None = None  # the points' client workers on a Ray cluster (bench/raypool.py); not part of a point's identity
    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        return _workers_field(v)

    @field_validator("load", mode="before")
    @classmethod
    def _auto(cls, v):
        if v == "auto":
            return {"auto": {}}
        if isinstance(v, dict) and v.get("auto") in (True, "auto"):
            return {**v, "auto": {}}
        return v

    @field_validator("slos", mode="before")
    @classmethod
    def _slos(cls, v):
        return parse_slos(v) if isinstance(v, (str, dict)) else v

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, v):
        if v is not None and not isinstance(v, dict):
            raise ValueError("write a mapping of KEY: VALUE, e.g. labels: {gpu: h100}")
        return {str(k): str(x) for k, x in (v or {}).items()}

    @field_validator("duration_s")
    @classmethod
    def _duration(cls, v):
        return _finite(v, "duration_s", "duration_s: 60")

    @field_validator("gpu_telemetry")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _gpu_telemetry(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names the results folder)")
        return v

    @model_validator(mode="after")
    def _check(self):
        if not self.cells:
            raise ValueError("give at least one workload cell")
        if self.load.stages is not None:
            if self.duration_s is not None or self.requests is not None:
                raise ValueError("load.stages set each point's rate and length; drop duration_s and requests")
            if parse_amount(self.warmup, "warmup")[1] != "s":
                raise ValueError("with load.stages, give warmup in seconds (it is the start of the first stage)")
        elif self.duration_s is None and self.requests is None:
            raise ValueError("give duration_s or requests per point")
        if self.load.auto is not None and not self.slos:
            raise ValueError("load: auto searches for the SLO knee; give slos (e.g. ttft_p99: 500ms)")
        parse_amount(self.warmup, "warmup")
        self.probe_rule()  # validate now, naming the field
        return self

    def with_overrides(self, url: list[str] | None = None, workers: str | None = None, ray: str | None = None) -> SweepSpec:
        """The spec with `trilemma sweep`'s command-line overrides: --url (several: replicas; replaces sim/launch),
        --workers, --ray."""
        spec = self
        if url:
            tgt = spec.target.model_dump(exclude={"sim", "launch", "url", "endpoints"}) | {"url": url if len(url) > 1 else url[0]}
            spec = spec.model_copy(update={"target": type(spec.target).model_validate(tgt)})
        if workers is not None:
            spec = spec.model_copy(update={"workers": parse_workers(workers, "--workers")})
        if ray:
            spec = spec.model_copy(update={"ray": ray})
        return spec

    def probe_rule(self) -> ProbeRule | None:
        """The probe rule of a time-based sweep (None for `requests:` sweeps: a fixed count per point)."""
        if (self.requests is not None and self.duration_s is None) or self.load.stages is not None:
            return None  # a fixed count per point, or stages (their own schedule)
        d = dict(self.probe)
        d.setdefault("min_duration_s", self.duration_s)
        d.setdefault("max_duration_s", max(4 * d["min_duration_s"], 120.0))
        d.setdefault("sequential", self.load.auto is not None and bool(self.slos))
        try:
            return ProbeRule(**d)
        except ValidationError as e:
            raise ValueError(f"probe.{validation_message(e)}") from None


def load_sweep_spec(path: str | Path) -> SweepSpec:
    data = load_yaml(path)
    try:
        return SweepSpec(**data)
    except ValidationError as e:
        raise SpecError(f"{path}: {validation_message(e)}") from None
