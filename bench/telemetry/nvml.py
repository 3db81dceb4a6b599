"""④ GPU power and energy through NVML (nvidia-ml-py, imported as `pynvml`), sampled on a thread.

Semantics (see METHODS.md §4): `nvmlDeviceGetPowerUsage` is a 1-second average on Ampere+ (H100/H200),
so polling faster than 1 Hz gives lagged, overlapping values; the instantaneous field
(NVML_FI_DEV_POWER_INSTANT, 186) is read where the driver offers it. Energy of a window is the
difference of `nvmlDeviceGetTotalEnergyConsumption` (mJ since driver load) over exactly that window;
a negative delta (counter reset) is rejected and the power integral (trapezoid over the samples) is
used instead, flagged. Both are computed and their disagreement is reported.
NVML calls never run on the client's event loop: the sampler owns a thread.
"""

from __future__ import annotations

import threading
import time

FI_POWER_INSTANT = 186
CLOCK_EVENTS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake"}


class NvmlUnavailable(RuntimeError):
    pass


def load_nvml(module=None):
    """Initialise NVML; raises NvmlUnavailable with a one-line reason if there is no driver."""
    if module is None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            raise NvmlUnavailable("nvidia-ml-py is not installed") from None
        module = pynvml
    try:
        module.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise NvmlUnavailable(f"no NVIDIA driver/NVML here ({type(e).__name__})") from None
    return module


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def gpu_inventory(module=None) -> list[dict]:
    """Model, UUID, memory, driver/CUDA version, power limit of each GPU; [] without a driver."""
    try:
        nv = load_nvml(module)
    except NvmlUnavailable:
        return []
    out = []
    try:
        driver = _s(nv.nvmlSystemGetDriverVersion())
        try:
            cv = nv.nvmlSystemGetCudaDriverVersion()
            cuda = f"{cv // 1000}.{(cv % 1000) // 10}"
        except Exception:
            cuda = None
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            d = {"index": i, "name": _s(nv.nvmlDeviceGetName(h)), "uuid": _s(nv.nvmlDeviceGetUUID(h)),
                 "memory_mib": nv.nvmlDeviceGetMemoryInfo(h).total // 2**20, "driver": driver, "cuda": cuda}
            try:
                d["power_limit_w"] = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
            except Exception:
                d["power_limit_w"] = None
            try:  # GPUs running a compute process = the serving replica's GPUs when it runs on this host (G in $/M)
                d["compute_processes"] = len(nv.nvmlDeviceGetComputeRunningProcesses(h))
            except Exception:
                pass
            out.append(d)
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:
            pass
    return out


def parse_gpus(sel: str | None, count: int) -> list[int]:
    """'all' / None -> every GPU; '0,1' -> those indices (validated)."""
    if not sel or sel == "all":
        return list(range(count))
    try:
        idx = [int(x) for x in sel.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--gpus '{sel}': give indices like 0,1 or 'all'") from None
    bad = [i for i in idx if not 0 <= i < count]
    if bad:
        raise ValueError(f"--gpus {sel}: this machine has GPUs 0..{count - 1}")
    return idx


class NvmlSampler:
    """Samples every selected GPU at `hz` on a daemon thread; `stop()` returns the window's energy."""

    def __init__(self, gpus: str | None = "all", hz: float = 10.0, module=None):
        self.nv = load_nvml(module)
        self.idx = parse_gpus(gpus, self.nv.nvmlDeviceGetCount())
        self.handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in self.idx]
        self.uuids = [_s(self.nv.nvmlDeviceGetUUID(h)) for h in self.handles]
        self.period = 1.0 / hz
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._has_instant = True
        self._has_energy = True
        self.sample_cost_s: list[float] = []

    def _energy_mj(self, h) -> int | None:
        if not self._has_energy:
            return None
        try:
            return int(self.nv.nvmlDeviceGetTotalEnergyConsumption(h))
        except Exception:
            self._has_energy = False
            return None

    def _one(self, gi: int, h) -> dict:
        nv = self.nv
        t = time.time()
        row = {"t": t, "gpu": self.idx[gi], "uuid": self.uuids[gi], "power_avg_w": nv.nvmlDeviceGetPowerUsage(h) / 1000.0}
        row["power_instant_w"] = None
        if self._has_instant:
            try:
                fv = nv.nvmlDeviceGetFieldValues(h, [FI_POWER_INSTANT])[0]
                if getattr(fv, "nvmlReturn", 0) == 0:
                    row["power_instant_w"] = fv.value.uiVal / 1000.0
                else:
                    self._has_instant = False
            except Exception:
                self._has_instant = False
        row["energy_mj"] = self._energy_mj(h)
        for key, fn in (("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                        ("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
                        ("util_gpu", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                        ("mem_used_mib", lambda: nv.nvmlDeviceGetMemoryInfo(h).used // 2**20),
                        ("temp_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                        ("clock_events", lambda: int(nv.nvmlDeviceGetCurrentClocksEventReasons(h)))):
            try:
                row[key] = fn()
            except Exception:
                row[key] = None
        return row

    def _loop(self) -> None:
        nxt = time.perf_counter()
        while not self._stop.is_set():
            c0 = time.perf_counter()
            for gi, h in enumerate(self.handles):
                self.samples.append(self._one(gi, h))
            self.sample_cost_s.append(time.perf_counter() - c0)
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def start(self) -> None:
        self.t0 = time.time()
        self.e0 = [self._energy_mj(h) for h in self.handles]
        self._thread = threading.Thread(target=self._loop, name="trilemma-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        t1 = time.time()
        e1 = [self._energy_mj(h) for h in self.handles]
        return energy_report(self.samples, self.idx, self.e0, e1, self.t0, t1, self.sample_cost_s)


def _integral_j(rows: list[dict]) -> float | None:
    """Trapezoid ∫P dt over samples (instantaneous power where present, else the averaged reading)."""
    pts = [(r["t"], r["power_instant_w"] if r.get("power_instant_w") is not None else r["power_avg_w"]) for r in rows]
    if len(pts) < 2:
        return None
    return sum((t2 - t1) * (p1 + p2) / 2 for (t1, p1), (t2, p2) in zip(pts, pts[1:]))


def energy_report(samples: list[dict], idx: list[int], e0: list, e1: list, t0: float, t1: float, cost: list[float]) -> dict:
    """Per-GPU and total energy over [t0, t1]: Δcounter (primary) or power integral (fallback, flagged)."""
    dt = t1 - t0
    gpus = []
    total, source = 0.0, "energy_counter"
    for k, g in enumerate(idx):
        rows = [r for r in samples if r["gpu"] == g]
        integ = _integral_j(rows)
        counter = (e1[k] - e0[k]) / 1000.0 if e0[k] is not None and e1[k] is not None and e1[k] >= e0[k] else None
        # the integral covers first..last sample only; scale to the window for a like-for-like check
        span = rows[-1]["t"] - rows[0]["t"] if len(rows) > 1 else 0
        integ_w = integ * dt / span if integ is not None and span > 0 else None
        e = counter if counter is not None else integ_w
        if counter is None:
            source = "power_integral"
        events = 0
        for r in rows:
            events |= r.get("clock_events") or 0
        gpus.append({"gpu": g, "energy_j": e, "counter_j": counter, "integral_j": integ_w,
                     "disagreement_pct": abs(counter - integ_w) / counter * 100 if counter and integ_w else None,
                     "avg_power_w": e / dt if e is not None and dt > 0 else None,
                     "max_temp_c": max((r["temp_c"] for r in rows if r.get("temp_c") is not None), default=None),
                     "clock_events": [n for bit, n in CLOCK_EVENTS.items() if events & bit]})
        total += e or 0.0
    return {"energy_j": total if gpus else None, "source": source, "window_s": dt,
            "avg_power_w": total / dt if dt > 0 and gpus else None, "gpus": gpus, "samples": len(samples),
            "sample_cost_ms_mean": sum(cost) / len(cost) * 1e3 if cost else None}
