"""④ Telemetry: GPU power/energy (nvml.py, or a DCGM exporter), server /metrics (prometheus.py),
and the environment of every run (environment.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.summary import TelemetryDoc

if TYPE_CHECKING:
    from bench.telemetry.nvml import NvmlSampler
    from bench.telemetry.prometheus import MetricsScraper


def _interp_edges(t, y, t0: float, t1: float):
    """Samples of y(t) restricted to [t0, t1], with linearly interpolated values at both edges."""
    import numpy as np

    t, y = np.asarray(t, dtype=np.float64), np.asarray(y, dtype=np.float64)
    inner = (t > t0) & (t < t1)
    tt = np.concatenate([[t0], t[inner], [t1]])
    return tt, np.concatenate([[np.interp(t0, t, y)], y[inner], [np.interp(t1, t, y)]])


def window_energy(rows, t0: float, t1: float) -> dict | None:
    """GPU energy over exactly [t0, t1] (wall seconds) from a saved telemetry timeline (gpu.parquet or
    server_metrics.parquet rows): per GPU, the energy counter interpolated at both edges (primary), else
    the trapezoid of power over the window. Edges outside the samples are clamped and flagged."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty or "t" not in df:
        return None
    counter = next((c for c in ("energy_mj", "gpu_energy_mj") if c in df and df[c].notna().sum() >= 2), None)
    power = next((c for c in ("power_instant_w", "power_avg_w", "gpu_power_w") if c in df and df[c].notna().sum() >= 2), None)
    if counter is None and power is None:
        return None
    total, source, covered = 0.0, "", True
    for _, g in (df.groupby("gpu") if "gpu" in df else [(0, df)]):
        g = g.sort_values("t")
        covered &= bool(g["t"].iloc[0] <= t0 + 1.0 and g["t"].iloc[-1] >= t1 - 1.0)
        c = g[["t", counter]].dropna() if counter else None
        if c is not None and len(c) >= 2 and (c[counter].diff().dropna() >= 0).all():
            _, e = _interp_edges(c["t"], c[counter], t0, t1)
            total += (e[-1] - e[0]) / 1000.0
            source = "energy_counter_window"
        elif power is not None:
            p = g[["t", power]].dropna()
            tt, pw = _interp_edges(p["t"], p[power], t0, t1)
            total += float(((tt[1:] - tt[:-1]) * (pw[1:] + pw[:-1]) / 2).sum())
            source = "power_integral_window"
    return {"energy_j": total, "window_s": t1 - t0, "source": source, "covered": covered}


def attach_to_summary(summary: dict, telemetry: dict | None, run_dir=None, window_wall: tuple[float, float] | None = None) -> None:
    """Fold per-point telemetry (energy, server metrics) into a point summary.

    J/token divides the energy of the measurement window (from the saved counter timeline) by the
    tokens produced in that same window (summary["window_tokens"]); energy over the whole run, warmup
    and drain included, is kept as `run_energy_j` for reference only."""
    t = TelemetryDoc.model_validate(telemetry or {})
    energy = t.gpu
    if energy is not None and energy.energy_j is not None:
        e_run = energy.energy_j
        win = None
        if run_dir is not None and window_wall is not None:
            from pathlib import Path

            import pandas as pd

            for name in ("gpu.parquet", "server_metrics.parquet"):
                f = Path(run_dir) / name
                if f.is_file():
                    win = window_energy(pd.read_parquet(f), *window_wall)
                    if win is not None:
                        break
        if win is not None:
            e, src, dt = win["energy_j"], win["source"], win["window_s"]
            out_tok, in_tok = summary["window_tokens"]["output"], summary["window_tokens"]["input"]
        else:  # no timeline: the whole run's energy over its tokens (flagged by the source name)
            e, src, dt = e_run, f"{energy.source} (whole run)", energy.window_s
            out_tok, in_tok = summary["output_tokens"], summary["input_tokens"]
        all_tok = out_tok + in_tok
        summary["energy"] = {
            "energy_j": e,
            "source": src,
            "window_s": dt,
            "avg_power_w": e / dt if dt else energy.avg_power_w,
            "output_tokens": out_tok,
            "j_per_output_token": e / out_tok if out_tok else None,
            "j_per_token": e / all_tok if all_tok else None,
            "output_tokens_per_kwh": out_tok / (e / 3.6e6) if e else None,
            "run_energy_j": e_run,
            "run_source": energy.source,
            "gpus": energy.gpus,
        }
        if win is not None and not win["covered"]:
            summary["energy"]["note"] = "the telemetry samples do not cover the whole window; edges are clamped"
    if t.server:
        summary["server"] = t.server


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
        self.nvml: NvmlSampler | None = None
        self.scraper: MetricsScraper | None = None
        self.dcgm: MetricsScraper | None = None

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
