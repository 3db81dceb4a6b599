"""Small synthetic result sets on disk (run.json + requests.parquet, laid out as a grid sweep) for compare,
knee and report tests that need exact, planted differences without running a server.

Each request has its own latency level (lognormal) shared by its TTFT and all its token gaps, plus per-gap
noise: token gaps of one request are correlated, as they are on a real engine (one batch, one context length).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import metrics
from bench.config import SLO, CellSpec, RunSpec
from bench.records import IncrementalWriter, RequestRecord
from bench.results import write_run_doc

MS = 1_000_000


def synth_records(n: int, load: float, *, osl: int = 16, ttft_ms: float = 40.0, itl_ms: float = 8.0, slow: float = 1.0,
                  fail_frac: float = 0.0, seed: int = 0) -> list[RequestRecord]:
    """n requests arriving at `load` req/s; latencies grow with load (a queue), times `slow`."""
    rng = np.random.default_rng(seed)
    queue = 1.0 + load / 20.0
    recs = []
    n_fail = int(round(fail_frac * n))
    failed = set(rng.choice(n, n_fail, replace=False).tolist()) if n_fail else set()
    for i in range(n):
        t0 = int(i * 1e9 / load)
        level = rng.lognormal(0.0, 0.25)
        if i in failed:
            recs.append(RequestRecord(index=i, intended_ns=t0, sent_ns=t0, end_ns=t0 + 5 * MS, isl=64, osl=osl, ok=False,
                                      status=500, error_kind="http", error="HTTP 500"))
            continue
        first = t0 + int(ttft_ms * queue * slow * level * rng.lognormal(0.0, 0.1) * MS)
        gaps = itl_ms * slow * level * rng.lognormal(0.0, 0.2, osl - 1)
        chunks = [first] + list(first + np.cumsum(gaps * MS).astype(np.int64))
        recs.append(RequestRecord(index=i, intended_ns=t0, sent_ns=t0, first_byte_ns=first, end_ns=int(chunks[-1]),
                                  chunk_ns=[int(c) for c in chunks], chunk_tokens=[1] * osl, isl=64, osl=osl, prompt_tokens=64,
                                  output_tokens=osl, ok=True, status=200, finish_reason="length"))
    return recs


def write_point(run_dir: Path, recs: list[RequestRecord], *, cell: str, mode: str, load: float, slos: list[SLO], repeat: int = 0,
                labels: dict | None = None, arrival: str = "poisson", osl: int = 16, model: str = "tiny-1b",
                server_version: str = "1.0", environment: dict | None = None, seed: int = 0) -> None:
    load_spec = {"qps": load} if mode == "qps" else {"concurrency": int(load)}
    spec = RunSpec(workload={"isl": 64, "osl": osl}, load={**load_spec, "arrival": arrival, "requests": len(recs)}, slos=slos,
                   seed=seed, labels=labels or {}, target={"model": model})
    w = IncrementalWriter(run_dir)
    for r in recs:
        w.add(r)
    w.close()
    cs = CellSpec(name=cell, isl=64, osl=osl)
    doc = {"schema_version": 1, "kind": "run", "run_id": run_dir.name, "status": "complete", "error": None,
           "harness": {"name": "trilemma", "version": "test"}, "spec": spec.model_dump(mode="json"), "seed": seed,
           "labels": labels or {}, "environment": environment or {"gpus": []},
           "target": {"model": model, "api": "completions", "server_kind": "sim", "server_version": server_version, "simulated": True},
           "point": {"cell": cs.model_dump(mode="json"), "mode": mode, "value": load, "role": "grid", "repeat": repeat, "cell_label": cell},
           "summary": metrics.summarize(recs, slos, offered_qps=load if mode == "qps" else None, mode=mode)}
    write_run_doc(run_dir, doc)


def write_sweep(root: Path, name: str, *, loads=(5.0, 10.0), mode: str = "qps", n: int = 300, slos: list[SLO] | None = None,
                repeats: int = 1, seed: int = 0, **kw) -> Path:
    """A grid sweep directory root/name/points/<id>/ with one point per load and repeat."""
    slos = slos if slos is not None else [SLO(metric="ttft", pct=50, threshold_ms=200)]
    point_kw = {k: kw.pop(k) for k in ("labels", "arrival", "model", "server_version", "environment") if k in kw}
    for li, load in enumerate(loads):
        for rep in range(repeats):
            recs = synth_records(n, load, seed=seed + 1000 * rep + li, osl=kw.get("osl", 16), **{k: v for k, v in kw.items() if k != "osl"})
            write_point(root / name / "points" / f"p{li}-r{rep}", recs, cell="c", mode=mode, load=load, slos=slos, repeat=rep,
                        osl=kw.get("osl", 16), seed=seed + 1000 * rep, **point_kw)
    return root / name
