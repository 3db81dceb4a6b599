#!/usr/bin/env python3
"""GPU-box check of the NVML sampler (bench/telemetry/nvml.py) under a real load.

Reports: idle and loaded board power, energy-counter vs power-integral agreement (%), and the
sampler's overhead (time per sample, and the matmul loop's throughput with vs without sampling).
Needs an NVIDIA GPU, nvidia-ml-py and PyTorch with CUDA. Usage: gpu_power_check.py [OUT.json]"""

import json
import statistics
import sys
import time

import torch

from bench.telemetry.nvml import NvmlSampler, gpu_inventory


def matmul_loop(seconds: float, n: int = 8192) -> float:
    """bf16 n×n×n matmuls for `seconds`; returns TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        k += 10
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e12


def window(hz: float, seconds: float, load: bool) -> dict:
    s = NvmlSampler("0", hz)
    s.start()
    tflops = matmul_loop(seconds) if load else (time.sleep(seconds) or None)
    rep = s.stop()
    g = rep["gpus"][0]
    inst = [r["power_instant_w"] for r in s.samples if r.get("power_instant_w") is not None]
    avg = [r["power_avg_w"] for r in s.samples]
    return {"hz": hz, "seconds": rep["window_s"], "load": load, "tflops": tflops, "energy_counter_j": g["counter_j"],
            "energy_integral_j": g["integral_j"], "disagreement_pct": g["disagreement_pct"], "avg_power_w": g["avg_power_w"],
            "mean_power_avg_field_w": statistics.mean(avg) if avg else None, "mean_power_instant_w": statistics.mean(inst) if inst else None,
            "instant_field": bool(inst), "samples": rep["samples"], "sample_cost_ms_mean": rep["sample_cost_ms_mean"],
            "max_temp_c": g["max_temp_c"], "clock_events": g["clock_events"], "source": rep["source"]}


if __name__ == "__main__":
    out = {"inventory": gpu_inventory()}
    matmul_loop(5)  # warm up clocks and temperature
    time.sleep(5)
    out["idle"] = window(10, 10, load=False)
    out["load_10hz"] = window(10, 20, load=True)
    out["load_100hz"] = window(100, 20, load=True)
    out["load_unsampled_tflops"] = matmul_loop(20)
    out["overhead_pct_10hz"] = 100 * (1 - out["load_10hz"]["tflops"] / out["load_unsampled_tflops"])
    out["overhead_pct_100hz"] = 100 * (1 - out["load_100hz"]["tflops"] / out["load_unsampled_tflops"])
    txt = json.dumps(out, indent=2)
    print(txt)
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(txt)
