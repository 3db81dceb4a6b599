"""Cost arithmetic against hand-computed cases."""

import math

import pytest

from bench import cost
from bench.cost import CostModel, Sku


def test_rented_token_costs_by_hand():
    # $2/GPU-h, 1 GPU, 1000 in + 500 out tok/s, 2 req/s, U = 0.5
    cm = CostModel(utilization=0.5, price_ratio_out_in=4, blend_in_out=(3, 1))
    t = cost.token_costs(2.0, 1, 1000, 500, 2.0, cm)
    per_s = 2 / 3600
    assert t["usd_per_m_total"] == pytest.approx(per_s * 1e6 / (1500 * 0.5))  # 0.7407
    assert t["usd_per_m_output"] == pytest.approx(per_s * 1e6 / (500 * 0.5))  # 2.2222
    p_in = per_s * 1e6 / (0.5 * (1000 + 4 * 500))
    assert t["usd_per_m_input_split"] == pytest.approx(p_in) and t["usd_per_m_output_split"] == pytest.approx(4 * p_in)
    assert t["usd_per_m_blended"] == pytest.approx((3 * p_in + 4 * p_in) / 4)
    assert t["usd_per_1k_requests"] == pytest.approx(per_s * 1000 / (2 * 0.5))


def test_owned_hourly_cost_by_hand():
    sku = Sku(name="x", tdp_w=700, capex={"node_price": 240000, "gpus_per_node": 8, "years": 4, "rate": 0.0}, ops_per_gpu_month=73)
    cm = CostModel(pricing="owned", usd_per_kwh=0.10, pue=1.5)
    h = cost.gpu_hour_cost(sku, cm, power_w=500)
    assert h["capex_hr"] == pytest.approx(30000 / 4 / 8760)  # straight-line: 0.856 $/h
    assert h["power_hr"] == pytest.approx(0.5 * 1.5 * 0.10)
    assert h["ops_hr"] == pytest.approx(0.1)
    assert h["usd_per_gpu_hour"] == pytest.approx(30000 / 4 / 8760 + 0.075 + 0.1)
    # with interest: capital recovery factor
    assert cost.crf(0.08, 4) == pytest.approx(0.30192, abs=1e-5)
    # no telemetry: TDP × assumed utilisation
    assert cost.gpu_hour_cost(sku, cm, None)["power_kw"] == pytest.approx(0.7 * 0.7)


def test_energy_cost_share():
    cm = CostModel(usd_per_kwh=0.12, pue=1.25)
    e = cost.energy_costs(0.5, cm, usd_per_m_total=1.0)
    # 0.5 J/token × 1e6 tokens = 5e5 J = 0.1389 kWh × 1.25 × 0.12 = 0.02083 $
    assert e["energy_usd_per_m_tokens"] == pytest.approx(0.5e6 / 3.6e6 * 1.25 * 0.12)
    assert e["energy_share"] == pytest.approx(e["energy_usd_per_m_tokens"])


def test_replicas_and_hourly_plan():
    cm = CostModel(headroom=0.25, peak_qps=100, hourly_qps=[10] * 8 + [100] * 16)
    assert cost.replicas_for(100, 30, cm) == 5  # ceil(125/30)
    assert cost.replicas_for(24, 30, cm) == 1  # ceil(30/30) exactly
    plan = cost.capacity_plan(30, 2.0, cm)
    assert plan["replicas_at_peak"] == 5
    assert plan["replicas_per_hour"][:8] == [1] * 8 and plan["replicas_per_hour"][8:] == [5] * 16
    days = 730 / 24
    assert plan["monthly_usd_scaled"] == pytest.approx((8 * 1 + 16 * 5) * 2.0 * days)
    assert plan["monthly_usd_fixed"] == pytest.approx(24 * 5 * 2.0 * days)
    assert plan["idle_usd_per_month"] == pytest.approx(plan["monthly_usd_fixed"] - plan["monthly_usd_scaled"])
    assert plan["fleet_utilization"] == pytest.approx((8 * 10 + 16 * 100) / 24 / (5 * 30))
    with pytest.raises(ValueError, match="24 values"):
        cost.capacity_plan(30, 2.0, CostModel(hourly_qps=[1, 2]))


def test_catalog_lookup_and_missing_price():
    cat = cost.load_catalog()
    assert cost.find_sku(cat, "h100").name == "H100-SXM5-80GB"
    assert cost.find_sku(cat, "A100-SXM4-80GB").tdp_w == 400
    assert cost.find_sku(cat, "nope") is None
    with pytest.raises(ValueError, match="no spot price"):
        cost.gpu_hour_cost(Sku(name="y", tdp_w=300), CostModel(pricing="spot"), None)
    assert math.isfinite(cost.cost_at_knee({"knee_qps": 2, "input_tps": 100, "output_tps": 50, "gpus": 1},
                                            cat["H100-SXM5-80GB"], CostModel())["usd_per_m_total"])
