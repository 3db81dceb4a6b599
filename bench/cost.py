"""⑥ Cost and capacity at the SLO knee (formulas and sources: METHODS.md §5).

Notation: H = $/GPU-hour, G = GPUs per replica, X_in/X_out/X_tot = tok/s per replica at the knee,
U = realised utilisation (fraction of the knee throughput actually sold), λ_knee = knee req/s.

    rented:  H = price tier ($/GPU-h)
    owned:   H = C·CRF/8760 + P_kW·PUE·($/kWh) + ops/730,   C = node price / GPUs per node,
             CRF = r(1+r)^Y / ((1+r)^Y − 1)  (1/Y when r = 0)
    $/M total tokens   = H·G·1e6 / (3600·X_tot·U)
    $/M output tokens  = H·G·1e6 / (3600·X_out·U)           (all cost attributed to output; InferenceX)
    split at price ratio k = P_out/P_in:  P_in = H·G·1e6 / (3600·U·(X_in + k·X_out)),  P_out = k·P_in
    blended (w_in:w_out, default 3:1) = (w_in·P_in + w_out·P_out) / (w_in + w_out)
    $ per 1k requests  = H·G·1000 / (3600·λ_knee·U)
    energy $/M tokens  = (J/token)·PUE·($/kWh) / 3.6        (share of total $/M reported)
    replicas           = ceil(λ_peak·(1 + headroom) / λ_knee)  (+ redundancy)
    fleet utilisation  = λ_avg / (N·λ_knee)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOG = Path(__file__).parent / "catalog" / "gpus.yaml"
HOURS_PER_MONTH = 730.0


class Capex(BaseModel):
    node_price: float = Field(gt=0)
    gpus_per_node: int = Field(8, ge=1)
    years: float = Field(4, gt=0)
    rate: float = Field(0.0, ge=0)


class Sku(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    aliases: list[str] = []
    tdp_w: float
    on_demand: float | None = None
    reserved: float | None = None
    spot: float | None = None
    capex: Capex | None = None
    ops_per_gpu_month: float = 0.0


class CostModel(BaseModel):
    """What the user chooses: pricing tier, utilisation, energy prices, traffic, headroom."""

    model_config = ConfigDict(extra="forbid")
    pricing: str = Field("on_demand", pattern="^(on_demand|reserved|spot|owned)$")
    utilization: float = Field(0.7, gt=0, le=1)
    usd_per_kwh: float = Field(0.12, ge=0)
    pue: float = Field(1.3, ge=1)
    price_ratio_out_in: float = Field(4.0, gt=0)
    blend_in_out: tuple[float, float] = (3.0, 1.0)
    assumed_power_util: float = Field(0.7, gt=0, le=1)  # P = TDP × this when no telemetry
    headroom: float = Field(0.25, ge=0)
    redundancy: int = Field(0, ge=0)
    peak_qps: float | None = Field(None, gt=0)
    hourly_qps: list[float] | None = None  # 24 values


def load_catalog(path: str | Path | None = None) -> dict[str, Sku]:
    data = yaml.safe_load(Path(path or CATALOG).read_text())
    return {name: Sku(name=name, **d) for name, d in data["skus"].items()}


def find_sku(catalog: dict[str, Sku], label: str) -> Sku | None:
    lab = (label or "").lower()
    for sku in catalog.values():
        if lab == sku.name.lower() or lab in [a.lower() for a in sku.aliases]:
            return sku
    return None


def crf(rate: float, years: float) -> float:
    """Capital recovery factor: r(1+r)^Y/((1+r)^Y − 1), 1/Y at r = 0."""
    if rate == 0:
        return 1.0 / years
    g = (1 + rate) ** years
    return float(rate * g / (g - 1))


def gpu_hour_cost(sku: Sku, cm: CostModel, power_w: float | None) -> dict[str, Any]:
    """$/GPU-hour for the chosen pricing, with its parts. Owned: CapEx + power + operations."""
    p_kw = (power_w if power_w else sku.tdp_w * cm.assumed_power_util) / 1000.0
    power_hr = p_kw * cm.pue * cm.usd_per_kwh
    if cm.pricing == "owned":
        if sku.capex is None:
            raise ValueError(f"SKU {sku.name} has no capex in the catalog; add capex or use a rental pricing tier")
        c = sku.capex.node_price / sku.capex.gpus_per_node
        capex_hr = c * crf(sku.capex.rate, sku.capex.years) / 8760.0
        ops_hr = sku.ops_per_gpu_month / HOURS_PER_MONTH
        return {"usd_per_gpu_hour": capex_hr + power_hr + ops_hr, "capex_hr": capex_hr, "power_hr": power_hr, "ops_hr": ops_hr,
                "power_kw": p_kw, "power_measured": bool(power_w)}
    price = getattr(sku, cm.pricing)
    if price is None:
        raise ValueError(f"SKU {sku.name} has no {cm.pricing} price in the catalog; edit the catalog or choose another tier")
    return {"usd_per_gpu_hour": price, "capex_hr": None, "power_hr": power_hr, "ops_hr": None, "power_kw": p_kw,
            "power_measured": bool(power_w)}


def token_costs(h: float, g: float, x_in: float, x_out: float, qps: float, cm: CostModel) -> dict[str, Any]:
    """$/M tokens and $/1k requests at the knee (formulas in the module docstring)."""
    u = cm.utilization
    x_tot = x_in + x_out
    per_s = h * g / 3600.0  # $ per second of a replica
    p_in = per_s * 1e6 / (u * (x_in + cm.price_ratio_out_in * x_out)) if x_tot else math.nan
    p_out = cm.price_ratio_out_in * p_in
    w_in, w_out = cm.blend_in_out
    return {
        "usd_per_m_total": per_s * 1e6 / (x_tot * u) if x_tot else math.nan,
        "usd_per_m_output": per_s * 1e6 / (x_out * u) if x_out else math.nan,
        "usd_per_m_input_split": p_in,
        "usd_per_m_output_split": p_out,
        "usd_per_m_blended": (w_in * p_in + w_out * p_out) / (w_in + w_out),
        "usd_per_1k_requests": per_s * 1000 / (qps * u) if qps else math.nan,
    }


def energy_costs(j_per_token: float | None, cm: CostModel, usd_per_m_total: float) -> dict[str, Any]:
    if not j_per_token:
        return {"energy_usd_per_m_tokens": None, "energy_share": None}
    e = j_per_token * cm.pue * cm.usd_per_kwh / 3.6
    return {"energy_usd_per_m_tokens": e, "energy_share": e / usd_per_m_total if usd_per_m_total else None}


def replicas_for(qps: float, knee_qps: float, cm: CostModel) -> int:
    """ceil(λ·(1 + headroom) / λ_knee) + redundancy (Little's law sizing at the knee)."""
    if qps <= 0:
        return cm.redundancy
    return int(math.ceil(qps * (1 + cm.headroom) / knee_qps - 1e-9)) + cm.redundancy


def capacity_plan(knee_qps: float, usd_per_replica_hour: float, cm: CostModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cm.peak_qps:
        n = replicas_for(cm.peak_qps, knee_qps, cm)
        out.update(peak_qps=cm.peak_qps, replicas_at_peak=n, fleet_usd_per_month_fixed=n * usd_per_replica_hour * HOURS_PER_MONTH)
    if cm.hourly_qps:
        if len(cm.hourly_qps) != 24:
            raise ValueError(f"hourly_qps needs 24 values (one per hour), got {len(cm.hourly_qps)}")
        per_h = [replicas_for(q, knee_qps, cm) for q in cm.hourly_qps]
        fixed_n = max(per_h)
        days = HOURS_PER_MONTH / 24
        scaled = sum(per_h) * usd_per_replica_hour * days
        fixed = fixed_n * 24 * usd_per_replica_hour * days
        avg = sum(cm.hourly_qps) / 24
        out.update(replicas_per_hour=per_h, fleet_replicas_fixed=fixed_n, monthly_usd_scaled=scaled, monthly_usd_fixed=fixed,
                   idle_usd_per_month=fixed - scaled, fleet_utilization=avg / (fixed_n * knee_qps) if fixed_n else None)
    return out


GPUS_UNKNOWN = ("GPUs per replica unknown: label the run gpus=N or pass --gpus-per-replica N "
                "($/M and $/1k requests need it; assuming 1 would under-price a multi-GPU replica)")


_K = TypeVar("_K", bound="KneeLoad")


class KneeLoad(BaseModel):
    """What pricing reads from a knee row (knee.knee_table): GPUs per replica, and what the server delivered and
    drew at the knee. A row's other columns are kept; pandas' missing value (NaN) reads as None."""

    model_config = ConfigDict(extra="allow")
    gpus: float | None = None
    avg_power_w: float | None = None
    input_tps: float | None = None
    output_tps: float | None = None
    knee_qps: float | None = None
    j_per_token: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _nan_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items()}
        return data

    @classmethod
    def of(cls: type[_K], row: Any) -> _K:
        return row if isinstance(row, cls) else cls.model_validate(row)

    @property
    def gpus_known(self) -> bool:
        return self.gpus is not None and math.isfinite(self.gpus) and self.gpus > 0


def gpus_known(knee: KneeLoad | dict[str, Any]) -> bool:
    return KneeLoad.of(knee).gpus_known


def cost_at_knee(row: KneeLoad | dict[str, Any], sku: Sku, cm: CostModel) -> dict[str, Any]:
    """All cost figures for one knee row (knee.knee_table). The row must say its GPUs per replica (G)."""
    knee = KneeLoad.of(row)
    if knee.gpus is None or not knee.gpus_known:
        raise ValueError(GPUS_UNKNOWN)
    g = knee.gpus
    power = knee.avg_power_w
    power_per_gpu = power / g if power else None
    hc = gpu_hour_cost(sku, cm, power_per_gpu)
    h = hc["usd_per_gpu_hour"]
    tc = token_costs(h, g, knee.input_tps or 0.0, knee.output_tps or 0.0, knee.knee_qps or 0.0, cm)
    ec = energy_costs(knee.j_per_token, cm, tc["usd_per_m_total"])
    plan = capacity_plan(knee.knee_qps, h * g, cm) if knee.knee_qps else {}
    return {"sku": sku.name, "pricing": cm.pricing, "gpus_per_replica": g, **hc, **tc, **ec, **plan}
