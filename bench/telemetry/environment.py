"""④ The hardware and software a run ran on, stored in run.json so results from different machines
or server versions are never silently merged."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _pkg(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_environment() -> dict:
    from bench.telemetry.nvml import gpu_inventory

    return {
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count()},
        "packages": {p: _pkg(p) for p in ("httpx", "numpy", "pandas", "pyarrow", "pydantic", "nvidia-ml-py")},
        "gpus": gpu_inventory(),
    }
