"""① Trace and dataset sources for workload.py (traces with arrival times, length pairs, text datasets)."""

from __future__ import annotations

from bench.config import SpecError


def open_source(name: str, spec, seed: int):
    raise SpecError(f"dataset '{name}' is not known")
