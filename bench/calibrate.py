"""`trilemma calibrate`: how far can this client machine be trusted? (the client side: it measures the
harness, with the simulator as the ground truth it starts)

Runs the harness against the simulator in deterministic mode (its own process, so it does not share
the client's event loop) at increasing rates, and compares what the client measured with the server's
ground truth carried in every chunk:

    TTFT bias = (first chunk arrival − actual send) − (server first-chunk send − server request receipt)
    ITL bias  = client gap between consecutive chunks − server gap between their sends

TTFT bias is the harness' own overhead on both legs (request out, first chunk in); send lag (actual −
intended send) is reported beside it. The simulator and the client are pinned to different cores
while calibrating (where there are two or more). The safe operating range is the highest rate whose TTFT bias p50
stays under 1 ms with token counts exact (p99 is printed beside it: on a shared or virtual machine it is
dominated by the OS's own scheduling noise).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import stats
from bench.sim.launch import start_sim


def bias_figures(recs) -> dict:
    """Per-rate figures from records that carry the simulator's ground truth."""
    ok = [r for r in recs if r.ok and r.server_recv_ns and len(r.server_chunk_ns) == len(r.chunk_ns) and not r.warmup]
    ttft_b = [((r.chunk_ns[0] - r.sent_ns) - (r.server_chunk_ns[0] - r.server_recv_ns)) / 1e6 for r in ok]
    itl_b = [((c2 - c1) - (s2 - s1)) / 1e6 for r in ok
             for c1, c2, s1, s2 in zip(r.chunk_ns, r.chunk_ns[1:], r.server_chunk_ns, r.server_chunk_ns[1:])]
    lag = [(r.sent_ns - r.intended_ns) / 1e6 for r in recs if r.sent_ns and not r.warmup]
    multi = sum(1 for r in ok for k in r.chunk_tokens if k > 1)
    exact = all(r.output_tokens == r.osl and sum(r.chunk_tokens) == r.osl for r in ok)
    return {"n": len(ok), "ttft_bias_p50": stats.percentile(ttft_b, 50), "ttft_bias_p99": stats.percentile(ttft_b, 99),
            "itl_bias_p50": stats.percentile(itl_b, 50), "itl_bias_p99": stats.percentile(itl_b, 99),
            "send_lag_p50": stats.percentile(lag, 50), "send_lag_p99": stats.percentile(lag, 99),
            "multi_token_chunks": multi, "tokens_exact": exact}


def calibrate(rates=(25, 50, 100, 200, 400), isl: int = 64, osl: int = 32, duration_s: float = 10.0, seed: int = 0,
              url: str | None = None, on_row=None, workers: int = 1, sims: int = 1) -> dict:
    """`sims` simulators behind the client (requests spread to the least loaded), so that at the rates several
    worker processes reach the target is not what limits: each simulator is one process (one core's worth of
    event loop), and each gets a core of its own where the machine has more cores than simulators."""
    from bench.config import RunSpec
    from bench.prompts import PromptCache
    from bench.records import read_records
    from bench.runner import execute_run

    procs = []
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    urls = [url] if url is not None else []
    if url is None:
        for k in range(sims):
            proc, u = start_sim("--deterministic", "--seed", str(seed + k))
            procs.append(proc)
            urls.append(u)
        if len(cpus) > sims:  # servers and client on separate cores: fewer migrations, steadier tails
            for k, proc in enumerate(procs):
                os.sched_setaffinity(proc.pid, {cpus[-1 - k]})
            os.sched_setaffinity(0, set(cpus[:-sims]))
    target = dict(url=urls[0], endpoints=urls if len(urls) > 1 else [])
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp, PromptCache() as prompts:
            for i, rate in enumerate(rates):
                spec = RunSpec(target=target, workload=dict(isl=isl, osl=osl),
                               load=dict(qps=rate, duration_s=duration_s, warmup=1.0), seed=seed + i,
                               scrape_metrics=False, gpu_telemetry="off", workers=workers)
                ru0, rc0, w0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                doc = execute_run(spec, Path(tmp) / f"r{i}", prompts=prompts)
                ru1, rc1, w1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
                if workers > 1:  # the worker processes (reaped children); the simulator is still running, so not among them
                    cpu += (rc1.ru_utime - rc0.ru_utime) + (rc1.ru_stime - rc0.ru_stime)
                recs = read_records(Path(tmp) / f"r{i}", compact=False)
                row = {"offered_qps": rate, **bias_figures(recs),
                       "achieved_qps": doc["summary"]["achieved_send_qps"],
                       "client_cpu_pct": 100 * cpu / (w1 - w0), "workers": workers,
                       "failed": doc["summary"]["n_failed"]}
                rows.append(row)
                if on_row:
                    on_row(row)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        if cpus and len(cpus) > sims:
            os.sched_setaffinity(0, set(cpus))
    return {"rows": rows, "safe_qps": safe_rate(rows), "isl": isl, "osl": osl, "duration_s": duration_s, "workers": workers,
            "sims": len(urls)}


def scaling_table(by_workers: dict[int, float | None], osl: int, top: float) -> list[dict]:
    """Safe rate per worker count and the scaling efficiency against one process: safe(N) / (N × safe(1)).
    The ladder's top rate caps what any count can show: a safe rate at the top is only a lower bound
    (`capped`), its efficiency a lower bound too, and nothing can be said when one process itself is capped."""
    one = by_workers.get(1)
    out = []
    for n, safe in sorted(by_workers.items()):
        capped = bool(safe and safe >= top)
        eff = safe / (n * one) if safe and one and not (one >= top and n != 1) else None
        out.append({"workers": n, "safe_qps": safe, "safe_chunks_per_s": safe * osl if safe else None, "capped": capped,
                    "efficiency": eff, "efficiency_is_lower_bound": capped and eff is not None and n != 1})
    return out


def safe_rate(rows: list[dict]) -> float | None:
    """Highest rate, contiguous from the lowest, whose TTFT bias p50 < 1 ms with exact token counts."""
    top = None
    for r in rows:
        if r["ttft_bias_p50"] < 1.0 and r["tokens_exact"] and not r.get("failed"):
            top = r["offered_qps"]
        else:
            break
    return top


def median_rows(runs: list[dict]) -> list[dict]:
    """Median of each figure across repeated calibrations (same rates)."""
    out = []
    for group in zip(*(r["rows"] for r in runs)):
        row = {"offered_qps": group[0]["offered_qps"]}
        for k in group[0]:
            if k != "offered_qps" and isinstance(group[0][k], (int, float)) and not isinstance(group[0][k], bool):
                row[k] = float(np.median([g[k] for g in group]))
        row["tokens_exact"] = all(g["tokens_exact"] for g in group)
        out.append(row)
    return out


def parse_ladder(rates: str, workers: str, sims: int) -> tuple[list[float], list[int]]:
    """`calibrate --rates 25,50 --workers 1,2,4 --sims N` as (rates, worker counts). Bad input: SpecError, one line."""
    from bench.config import SpecError, parse_workers

    try:
        rs = [float(x) for x in rates.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"--rates '{rates}': give numbers like 25,50,100") from None
    counts = []
    for w in workers.split(","):
        n = parse_workers(w.strip(), "--workers")
        if n == "auto":
            raise SpecError("--workers: calibrate measures given counts; write 1 or a list like 1,2,4,8")
        counts.append(int(n))
    if not 1 <= sims <= 64:
        raise SpecError(f"--sims {sims}: give 1 to 64 simulator processes")
    return rs, counts

