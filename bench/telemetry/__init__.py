"""④ Telemetry: GPU power/energy (nvml.py, or a DCGM exporter), server /metrics (prometheus.py),
and the environment of every run (environment.py)."""

from __future__ import annotations


def attach_to_summary(summary: dict, telemetry: dict) -> None:
    """Fold per-point telemetry (energy, server metrics) into a point summary: J/token etc."""
    energy = (telemetry or {}).get("gpu") or {}
    if energy.get("energy_j") is not None:
        e = energy["energy_j"]
        out_tok = summary.get("output_tokens") or 0
        all_tok = out_tok + (summary.get("input_tokens") or 0)
        summary["energy"] = {
            "energy_j": e,
            "source": energy.get("source"),
            "avg_power_w": energy.get("avg_power_w"),
            "j_per_output_token": e / out_tok if out_tok else None,
            "j_per_token": e / all_tok if all_tok else None,
            "output_tokens_per_kwh": out_tok / (e / 3.6e6) if e else None,
            "gpus": energy.get("gpus"),
        }
    server = (telemetry or {}).get("server") or {}
    if server:
        summary["server"] = server


def telemetry_for(spec, gpus: str = "all", api_key: str | None = None) -> "RunTelemetry | None":
    """The telemetry a RunSpec asks for (server /metrics scrape, GPU power), or None."""
    if not spec.scrape_metrics and spec.gpu_telemetry == "off":
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    return RunTelemetry(spec.target.url if spec.scrape_metrics else None, spec.gpu_telemetry, gpus, headers=headers)


class RunTelemetry:
    """Starts/stops the telemetry sources for one load point and saves their timelines.

    gpu: 'auto' (NVML if a driver is present, else nothing, with one notice), 'off', 'nvml',
    or 'dcgm:URL' (a DCGM exporter's /metrics, for when the harness runs off the GPU box)."""

    def __init__(self, server_url: str | None, gpu: str = "auto", gpus: str | None = "all", hz: float = 10.0,
                 scrape_period_s: float = 1.0, headers: dict | None = None, notices: list | None = None):
        self.server_url, self.gpu, self.gpus, self.hz, self.period, self.headers = server_url, gpu, gpus, hz, scrape_period_s, headers
        self.notices = notices if notices is not None else []
        self.nvml = None
        self.scraper = None
        self.dcgm = None

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        from bench.telemetry.nvml import NvmlSampler, NvmlUnavailable
        from bench.telemetry.prometheus import MetricsScraper

        if self.gpu in ("auto", "nvml"):
            try:
                self.nvml = NvmlSampler(self.gpus, self.hz)
                self.nvml.start()
            except NvmlUnavailable as e:
                self.notices.append(f"GPU telemetry off: {e}; energy is not measured (use --gpu-telemetry dcgm:URL for a remote GPU box)")
        elif self.gpu.startswith("dcgm:"):
            self.dcgm = MetricsScraper(self.gpu[5:], self.period)
            if not self.dcgm.start():
                self.notices.append(f"GPU telemetry off: cannot scrape DCGM exporter at {self.gpu[5:]}")
                self.dcgm = None
        if self.server_url:
            self.scraper = MetricsScraper(self.server_url.rstrip("/") + "/metrics", self.period, self.headers)
            if not self.scraper.start():
                self.notices.append("server metrics off: the server has no Prometheus /metrics")
                self.scraper = None

    async def stop(self, run_dir) -> dict:
        import asyncio

        return await asyncio.to_thread(self._stop, run_dir)

    def _stop(self, run_dir) -> dict:
        import pandas as pd

        from bench.telemetry.prometheus import dcgm_energy

        out: dict = {"notices": self.notices}
        if self.nvml is not None:
            out["gpu"] = self.nvml.stop()
            if self.nvml.samples:
                pd.DataFrame(self.nvml.samples).to_parquet(f"{run_dir}/gpu.parquet")
        if self.dcgm is not None:
            self.dcgm.stop()
            out["gpu"] = dcgm_energy(self.dcgm)
            if self.dcgm.rows:
                pd.DataFrame(self.dcgm.rows).to_parquet(f"{run_dir}/gpu.parquet")
        if self.scraper is not None:
            out["server"] = self.scraper.stop()
            if self.scraper.rows:
                pd.DataFrame(self.scraper.rows).to_parquet(f"{run_dir}/server_metrics.parquet")
            # the sim also serves DCGM names: use them when there is no NVML/DCGM source
            if "gpu" not in out and any(r.get("gpu_power_w") is not None for r in self.scraper.rows):
                out["gpu"] = dcgm_energy(self.scraper)
                if out["gpu"]:
                    out["gpu"]["source"] += " (from server /metrics)"
        return out
