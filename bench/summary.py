"""The typed contract between a measured point and everything that reads it: `PointSummary` (what
metrics.summarize and the runner write under run.json's `summary`) and `RunDoc` (run.json itself).

The measurement writes plain JSON (run.json stays readable by any tool); every consumer — verdicts, the
knee table, the report, compare, the sweep — reads it through these models, so a missing field has one
default here instead of a `.get(...) or {}` at each use. Fields are optional because results written by
older versions lack the later ones (run.json's history is in results.py); unknown fields are kept
(`extra="allow"`), so a newer harness's additions survive a read. JSON null stands for nan (see
results.py), hence `float | None` for any figure that can be undefined.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from bench.config import SLO
from bench.warn import as_warning
from bench.wire import SGLangInfo, SimInfo


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """A null where the field has a non-null default (an older writer's `"energy": null`) reads as absent."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items()
                    if not (v is None and k in fields and (fields[k].default is not None or fields[k].default_factory is not None))}
        return data


class Latency(_Doc):
    """latency_stats(): count, mean, percentiles, the p99's order-statistic interval, max."""

    n: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    p99_ci: list[float | None] = [None, None]
    max: float | None = None
    binned: bool = False


class Exceedance(_Doc):
    """k of n samples over an SLO's threshold, the fraction and its interval (design effect applied)."""

    k: int = 0
    n: int = 0
    frac: float | None = None
    lo: float = 0.0
    hi: float = 1.0


class SloResult(_Doc):
    """One SLO's outcome at a point. `decision` is pass/fail/undecided (None in results written before
    decisions existed: `met` was the point estimate's)."""

    slo: str
    threshold_ms: float
    value_ms: float | None = None
    met: bool = False
    decision: str | None = None
    exceed: Exceedance | None = None
    fraction_within: float | None = None
    n: int | None = None

    @model_validator(mode="after")
    def _infinite(self) -> SloResult:
        """JSON holds inf as null: an SLO value over n > 0 requests can only be missing because it was infinite
        (failed requests count as infinitely slow); nan needs n = 0."""
        if self.value_ms is None and (self.n or 0) > 0:
            self.value_ms = math.inf
        return self

    @property
    def spec(self) -> SLO:
        """The SLO object this result is for (the `slo` field is its name, e.g. ttft_p99)."""
        metric, _, pct = self.slo.partition("_p")
        return SLO(metric=metric, pct=float(pct), threshold_ms=self.threshold_ms)

    @property
    def pct(self) -> float:
        return float(self.slo.split("_p")[1])


class Rates(_Doc):
    request_throughput: float | None = None
    output_tps: float | None = None
    input_tps: float | None = None
    total_tps: float | None = None


class Throughput(_Doc):
    estimator: str | None = None
    arrivals: Rates = Rates()
    departures: Rates = Rates()


class KeepUp(_Doc):
    arrivals: int | None = None
    completions: int | None = None
    ratio: float | None = None


class SteadyState(_Doc):
    lifetime_s: float | None = None
    window_lifetimes: float | None = None
    keep_up: KeepUp = KeepUp()
    saturated: bool = False
    steady: bool = True
    reason: str = ""


class Saturation(_Doc):
    saturated: bool = False
    reason: str = ""
    completed_fraction: float | None = None


class ProbeInfo(_Doc):
    """How the probe ran: why it stopped (max, decided, fail, saturated, schedule, ...), its warmup and window."""

    stopped: str | None = None
    why: str | None = None
    warmup_s: float | None = None
    window_s: float | None = None
    n_looks: int = 0


class Energy(_Doc):
    energy_j: float | None = None
    source: str | None = None
    avg_power_w: float | None = None
    j_per_output_token: float | None = None
    j_per_token: float | None = None


class PrefixCache(_Doc):
    hit_rate: float | None = None
    declared_sharing: float | None = None
    reset: str | None = None


class StageSummary(_Doc):
    """metrics.per_stage(): one stretch of a staged (or ramped) open loop."""

    stage: int | str
    start_s: float = 0.0
    duration_s: float = 0.0
    qps_from_to: list[float] = []
    expected_requests: float = 0.0
    sent: int = 0
    realised_qps: float | None = None
    measured: int = 0
    ok: int = 0
    ttft: Latency = Latency()
    e2e: Latency = Latency()

    @property
    def rate(self) -> str:
        """The rate asked for: '4', or '0→4' for a ramp."""
        q0, q1 = (self.qps_from_to + [math.nan, math.nan])[:2]
        return f"{q1:g}" if q0 == q1 else f"{q0:g}→{q1:g}"


class TurnSummary(_Doc):
    """metrics per_turn: the requests that were turn k of their conversation."""

    n: int = 0
    ttft: Latency = Latency()
    prompt_tokens_mean: float | None = None
    cached_fraction: float | None = None  # the server's cached prompt tokens / prompt tokens (None: not reported)


class PromptCache(_Doc):
    """usage.prompt_tokens_details.cached_tokens, per request, as the server reported it (vLLM with
    --enable-prompt-tokens-details, SGLang with --enable-cache-report, OpenAI)."""

    requests: int = 0  # measured ok requests that reported it
    cached_fraction: float | None = None  # cached prompt tokens / prompt tokens over those requests
    hit_requests: int = 0  # requests with at least one cached prompt token


class Sessions(_Doc):
    n: int = 0
    complete: int = 0
    turns_mean: float = 0.0
    duration_s: Latency = Latency()


class ServerStats(_Doc):
    """What the server's own /metrics said over the window (telemetry.prometheus)."""

    engine: str | None = None
    running_mean: float | None = None
    waiting_max: float | None = None
    kv_usage_max: float | None = None
    preemptions: float | None = None
    prefix_cache_hit_rate: float | None = None
    server_ttft_mean_ms: float | None = None
    server_queue_mean_ms: float | None = None  # vLLM: arrival at the engine to first scheduled
    server_prefill_mean_ms: float | None = None  # vLLM: first scheduled to first token


class ClientQueue(_Doc):
    """An open loop's in-flight cap: requests that waited at the client for a slot, and due ones never sent."""

    cap: int | None = None
    cap_from: str | None = None
    waited: int = 0
    wait_ms: Latency = Latency()
    not_sent: int = 0


class ModelSummary(_Doc):
    """metrics.per_model(): one name of a model mix."""

    weight: float = 0.0
    measured: int = 0
    share: float | None = None
    ok: int = 0
    ttft: Latency = Latency()
    tpot: Latency = Latency()
    e2e: Latency = Latency()


class EndpointSummary(_Doc):
    """metrics.per_endpoint(): one replica of a several-address target."""

    endpoint: int = 0
    measured: int = 0
    share: float | None = None
    ok: int = 0
    failed: int = 0
    ttft: Latency = Latency()
    tpot: Latency = Latency()
    e2e: Latency = Latency()


class Warning_(_Doc):
    """bench.warn: one warning as data. A result written before warnings were data holds free text: it reads as
    code `text` with the text as its message."""

    code: str = "text"
    message: str = ""
    remedy: str = ""
    values: dict[str, Any] = {}
    text: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, v: Any) -> Any:
        return as_warning(v)

    def __str__(self) -> str:
        return self.text


class ClientInfo(_Doc):
    """The client processes that sent the point (--workers): how many, each one's share, the worst send lag."""

    workers: int = 1
    per_worker_requests: list[int] = []
    worst_send_lag_p99_ms: float | None = None
    worst_worker: int | None = None
    auto_why: str | None = None  # --workers auto: what it chose and why


class PointSummary(_Doc):
    """run.json `summary`: one measured point."""

    n_total: int = 0
    n_warmup: int = 0
    n_measured: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_cancelled: int = 0
    errors: dict[str, int] = {}
    window_s: float | None = None
    window_kind: str | None = None
    offered_qps: float | None = None
    mode: str | None = None
    request_throughput: float | None = None
    output_tps: float | None = None
    input_tps: float | None = None
    total_tps: float | None = None
    achieved_send_qps: float | None = None
    throughput: Throughput = Throughput()
    latency_ms: dict[str, Latency] = {}
    interactivity_p50: float | None = None
    mean_in_flight: float | None = None
    attainment: float | None = None
    attainment_ci: list[float | None] = [None, None]
    slos: list[SloResult] = []
    steady_state: SteadyState | None = None
    saturation: Saturation = Saturation()
    probe: ProbeInfo = ProbeInfo()
    energy: Energy = Energy()
    prefix_cache: PrefixCache = PrefixCache()
    warnings: list[Warning_] = []
    per_stage: list[StageSummary] = []
    per_turn: dict[str, TurnSummary] = {}
    prompt_cache: PromptCache | None = None  # the server said how many prompt tokens it served from its prefix cache
    per_model: dict[str, ModelSummary] = {}
    per_endpoint: dict[str, EndpointSummary] = {}
    sessions: Sessions | None = None
    server: ServerStats | None = None
    goodput_rps: float | None = None
    client_queue: ClientQueue = ClientQueue()
    client: ClientInfo = ClientInfo()

    def latency(self, metric: str) -> Latency | None:
        """One metric's statistics (None where it was not measured)."""
        return self.latency_ms.get(metric)

    def lat(self, metric: str, key: str) -> float | None:
        """A latency figure, e.g. lat("ttft", "p99"); None where the metric was not measured."""
        d = self.latency_ms.get(metric)
        v = getattr(d, key, None) if d is not None else None
        return v if isinstance(v, (int, float)) else None

    def failed_fraction(self) -> float:
        return self.n_failed / self.n_measured if self.n_measured else math.nan


class IdleCheck(_Doc):
    """run.json `target.idle_before` (telemetry.prometheus.wait_idle): whether the server's own gauges said it was
    idle before the point started (None: it has no such gauges), how long that took, and what was still busy."""

    waited_s: float = 0.0
    idle: bool | None = None
    busy: dict[str, float | None] | None = None


class GpuEnergy(_Doc):
    """run.json `telemetry.gpu`: the GPUs' energy over the whole run (NVML, DCGM, or the server's DCGM names)."""

    energy_j: float | None = None
    window_s: float | None = None
    source: str | None = None
    avg_power_w: float | None = None
    gpus: Any = None


class TelemetryDoc(_Doc):
    """run.json `telemetry`: what the run captured beside the requests (timelines are parquet files)."""

    notices: list[str] = []
    gpu: GpuEnergy | None = None
    server: dict[str, Any] = {}


class Target(_Doc):
    """run.json `target`: what discovery found at the URL (bench.wire.ServerInfo) and what the run sent it."""

    url: str | None = None
    model: str | None = None
    api: str | None = None
    server_kind: str | None = None
    server_version: str | None = None
    simulated: bool = False
    sim: SimInfo | None = None
    server_info: SGLangInfo | None = None


class ServeFlags(_Doc):
    """A launched server's config (sweep `serve:`), the flags that set its capacity, however they were spelled."""

    max_num_seqs: Any = None
    max_num_batched_tokens: Any = None

    @model_validator(mode="before")
    @classmethod
    def _underscores(cls, data: Any) -> Any:
        return {str(k).replace("-", "_"): v for k, v in data.items()} if isinstance(data, dict) else data


class LaunchDoc(_Doc):
    config: dict[str, Any] = {}

    @property
    def flags(self) -> ServeFlags:
        return ServeFlags.model_validate(self.config)


class PointTarget(_Doc):
    launch: LaunchDoc | None = None


class PointKey(_Doc):
    """run.json `point` (sweep points only): sweep.point_key plus the label and role it ran as."""

    cell: dict[str, Any] = {}
    cell_label: str | None = None
    mode: str = "qps"
    value: float = 0.0
    role: str = "run"
    repeat: int = 0
    stages: list[dict[str, float]] | None = None
    target: PointTarget = PointTarget()

    def serve_config(self) -> str:
        """The launched server's config this point ran against ('' when trilemma did not launch it)."""
        cfg = self.target.launch.config if self.target.launch else {}
        return " ".join(f"{k}={v}" for k, v in sorted(cfg.items())) if cfg else ""


class TargetSpecDoc(_Doc):
    """run.json `spec.target` (a TargetSpec as written)."""

    url: str | None = None
    model: str | None = None
    api: str | None = None
    ignore_eos: bool = True
    endpoints: list[str] = []


class WorkloadSpecDoc(_Doc):
    """run.json `spec.workload` (a WorkloadSpec as written): the fields that make two results comparable."""

    isl: Any = None
    osl: Any = None
    dataset: str | None = None
    prefix_tokens: int | None = None
    prefix_groups: int | None = None
    columns: Any = None
    max_model_len: int | None = None
    window_s: Any = None  # trace replay: [start, end) seconds
    speedup: float = 1.0

    def key(self) -> str:
        """What must match for two results to be comparable."""
        vals = ((k, getattr(self, k)) for k in ("isl", "osl", "dataset", "prefix_tokens", "prefix_groups", "columns"))
        return " ".join(f"{k}={v}" for k, v in vals if v not in (None, 0, ""))


class LoadSpecDoc(_Doc):
    qps: float | None = None
    concurrency: int | None = None
    arrival: Any = "poisson"  # an Arrival as written
    replay: bool = False
    max_concurrency: int | None = None


class SpecDoc(_Doc):
    """run.json `spec`: the RunSpec as written (validated as a RunSpec only where a run is rebuilt from it)."""

    target: TargetSpecDoc = TargetSpecDoc()
    workload: WorkloadSpecDoc = WorkloadSpecDoc()
    load: LoadSpecDoc = LoadSpecDoc()
    slos: list[dict[str, Any]] = []

    def load_point(self) -> tuple[str, float | None]:
        """(mode, value) of a plain run: its --qps or --concurrency."""
        if self.load.qps is not None:
            return "qps", self.load.qps
        return "concurrency", self.load.concurrency


class Harness(_Doc):
    version: str | None = None
    git_sha: str | None = None


class CpuDoc(_Doc):
    model: str | None = None
    cores: int | None = None


class GpuDoc(_Doc):
    """One GPU NVML saw (telemetry.nvml.gpu_inventory); `compute_processes` where NVML could list them."""

    name: str = "?"
    compute_processes: int | None = None  # how many processes NVML saw computing on it


class EnvironmentDoc(_Doc):
    cpu: CpuDoc = CpuDoc()
    gpus: list[GpuDoc] = []


class RunWorkload(_Doc):
    """run.json `workload`: what the run built (tokenizer used, the dataset's figures)."""

    tokenizer: str = ""
    dataset: str | None = None


class RunDoc(_Doc):
    """run.json. `spec` stays the RunSpec's JSON (validated where a run is rebuilt from it)."""

    schema_version: int = 0
    kind: str = "run"
    run_id: str | None = None
    status: str | None = None
    error: str | None = None
    harness: Harness = Harness()
    spec: SpecDoc = SpecDoc()
    seed: int | None = None
    labels: dict[str, str] = {}
    target: Target = Target()
    point: PointKey | None = None
    workload: RunWorkload = RunWorkload()
    environment: EnvironmentDoc = EnvironmentDoc()
    summary: PointSummary | None = None
    telemetry: TelemetryDoc = TelemetryDoc()
    superseded_by: str | None = None
    host: str | None = None  # with pid: tells a run still measuring from one whose process was killed
    pid: int | None = None
    window_ns: tuple[int, int] | None = None

    @property
    def slo_specs(self) -> list[SLO]:
        return [SLO(**x) for x in self.spec.slos]


def as_summary(s: PointSummary | dict[str, Any] | None) -> PointSummary:
    """A summary as the typed model (the sweep holds freshly written ones as dicts)."""
    if isinstance(s, PointSummary):
        return s
    return PointSummary.model_validate(s or {})


class AttainmentDoc(_Doc):
    rule: str = "percentile"
    target: float = 0.99


class SweepSpecDoc(_Doc):
    """sweep.json `spec`: the SweepSpec as written; the fields the analysis reads are typed, the rest kept."""

    attainment: AttainmentDoc = AttainmentDoc()


class SweepDoc(_Doc):
    """sweep.json: the sweep's spec, its status, and which points it measured or reused (`points`: None in
    sweeps written before that list existed, which are read whole)."""

    schema_version: int = 0
    kind: str = "sweep"
    name: str | None = None
    status: str | None = None
    error: str | None = None
    harness: dict[str, Any] = {}
    spec: SweepSpecDoc = SweepSpecDoc()
    updated_at: float | None = None
    points: list[str] | None = None
    server_version: str | None = None
    servers: list[dict[str, Any]] = []

    def spec_as_written(self) -> dict[str, Any]:
        return self.spec.model_dump(exclude_unset=True)

