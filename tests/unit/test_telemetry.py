"""Telemetry parsing and sampling: recorded /metrics payloads and a fake NVML module."""

import math
import time
from types import SimpleNamespace

import pytest

from bench.telemetry import attach_to_summary
from bench.telemetry.nvml import NvmlSampler, NvmlUnavailable, gpu_inventory, load_nvml, parse_gpus
from bench.telemetry.prometheus import hist_delta, hist_quantile, parse_metrics, summarize_timeline
from tests.conftest import FIXTURES


def test_vllm_032_payload_recorded_from_the_rig():
    m = parse_metrics((FIXTURES / "vllm-0.32.0-metrics.txt").read_text())
    assert m["engine"] == "vllm"
    for key in ("running", "waiting", "kv_usage", "preemptions", "prefix_queries", "prefix_hits", "prompt_tokens", "generation_tokens"):
        assert key in m, key
    assert m["generation_tokens"] > 0 and m["prompt_tokens"] > 0
    h = m["histograms"]["ttft"]
    assert h["count"] > 0 and sorted(h["buckets"])[-1] == math.inf and "itl" in m["histograms"]


def test_sglang_payload_from_documented_names():
    m = parse_metrics((FIXTURES / "sglang-metrics.txt").read_text())
    assert m["engine"] == "sglang"
    assert (m["running"], m["waiting"], m["kv_usage"], m["sglang_cache_hit_rate"]) == (37, 4, 0.28, 0.4)
    h = m["histograms"]["ttft"]
    assert h["count"] == 100 and h["sum"] == pytest.approx(9.5)
    # 10 <= 40 ms, 60 <= 100 ms: the median (rank 50) interpolates inside (0.04, 0.1]
    assert hist_quantile(h, 0.5) == pytest.approx(0.04 + 0.06 * (40 / 50))


def test_timeline_summary_differences_counters_and_histograms():
    a = {"t": 0, "running": 2, "waiting": 0, "kv_usage": 0.1, "preemptions": 1, "prefix_queries": 100, "prefix_hits": 10,
         "generation_tokens": 50, "engine": "vllm"}
    b = {**a, "t": 1, "running": 6, "waiting": 3, "kv_usage": 0.5, "preemptions": 3, "prefix_queries": 300, "prefix_hits": 110,
         "generation_tokens": 450}
    h1 = {"buckets": {0.1: 1, math.inf: 2}, "sum": 0.3, "count": 2}
    h2 = {"buckets": {0.1: 5, math.inf: 6}, "sum": 0.7, "count": 6}
    s = summarize_timeline([a, b], {"histograms": {"ttft": h1}}, {"histograms": {"ttft": h2}})
    assert s["running_max"] == 6 and s["waiting_max"] == 3 and s["preemptions"] == 2
    assert s["prefix_cache_hit_rate"] == pytest.approx(100 / 200) and s["generation_tokens"] == 400
    assert s["server_ttft_mean_ms"] == pytest.approx(100.0)
    assert hist_delta(h1, h2)["count"] == 4


class FakeNVML:
    """Just enough of pynvml: one GPU drawing 300 W, energy counter advancing at 300 J/s."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 0, 1, 0

    def __init__(self, watts=300.0, fail_init=False):
        self.watts, self.fail_init, self.t0 = watts, fail_init, time.time()

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return b"GPU-fake"

    def nvmlDeviceGetName(self, h):
        return "Fake H100"

    def nvmlSystemGetDriverVersion(self):
        return "580.0"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=80 * 2**30, used=2**30)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetPowerUsage(self, h):
        return int(self.watts * 1000)

    def nvmlDeviceGetFieldValues(self, h, ids):
        return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=int(self.watts * 1000)))]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return int((time.time() - self.t0) * self.watts * 1000)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=100)

    def nvmlDeviceGetTemperature(self, h, kind):
        return 60

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return 0x4  # software power cap


def test_sampler_energy_counter_and_integral_agree():
    s = NvmlSampler("all", hz=50, module=FakeNVML(300.0))
    s.start()
    time.sleep(0.6)
    rep = s.stop()
    g = rep["gpus"][0]
    assert rep["source"] == "energy_counter" and rep["samples"] >= 10
    assert g["avg_power_w"] == pytest.approx(300, rel=0.05)
    assert g["disagreement_pct"] < 5 and g["clock_events"] == ["sw_power_cap"]


def test_counter_reset_falls_back_to_the_integral():
    fake = FakeNVML(200.0)
    s = NvmlSampler("0", hz=50, module=fake)
    s.start()
    time.sleep(0.4)
    fake.t0 = time.time() + 100  # counter goes backwards
    rep = s.stop()
    assert rep["source"] == "power_integral" and rep["gpus"][0]["counter_j"] is None
    assert rep["avg_power_w"] == pytest.approx(200, rel=0.1)


def test_no_driver_is_a_notice_not_a_crash():
    with pytest.raises(NvmlUnavailable, match="no NVIDIA driver"):
        load_nvml(FakeNVML(fail_init=True))
    assert gpu_inventory(FakeNVML(fail_init=True)) == []
    assert gpu_inventory(FakeNVML())[0]["cuda"] == "13.0"
    with pytest.raises(ValueError, match="GPUs 0..0"):
        parse_gpus("0,3", 1)


def test_energy_folds_into_per_token_figures():
    s = {"output_tokens": 1000, "input_tokens": 3000}
    attach_to_summary(s, {"gpu": {"energy_j": 400.0, "source": "energy_counter", "avg_power_w": 200.0}})
    e = s["energy"]
    assert e["j_per_output_token"] == pytest.approx(0.4) and e["j_per_token"] == pytest.approx(0.1)
    assert e["output_tokens_per_kwh"] == pytest.approx(1000 / (400 / 3.6e6))


def test_scrapes_leave_no_response_for_the_cyclic_collector():
    """A run raises the collector's thresholds and freezes it (runner.execute_run): a scrape whose response waits
    for the cyclic collector keeps its /metrics body for the whole run. Scrapes with the collector off leave none."""
    import gc
    import http.server
    import threading

    import httpx

    from bench.telemetry.prometheus import MetricsScraper

    body = (FIXTURES / "vllm-0.32.0-metrics.txt").read_bytes()

    class Metrics(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sc = MetricsScraper(f"http://127.0.0.1:{srv.server_address[1]}/metrics")
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            assert sc.scrape_once()["engine"] == "vllm"
        alive = sum(1 for o in gc.get_objects() if isinstance(o, httpx.Response))
    finally:
        gc.enable()
        sc.http.close()
        srv.shutdown()
        srv.server_close()
    assert sc.errors == 0 and len(sc.rows) == 20
    assert alive == 0, f"{alive} responses (each holding a {len(body):,}-byte body) wait for the cyclic collector"
