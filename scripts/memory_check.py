"""Peak memory (max RSS, from /usr/bin/time -v) of the client where results grow: a long run and `compare`.

    python scripts/memory_check.py run [--qps 150 --osl 256 --durations 60 300]
        `trilemma run` against the simulator (started separately: its memory is not counted), one run per
        duration; prints requests, peak RSS of the client, and whether the longer run peaked higher.
    python scripts/memory_check.py summary [--requests 9000 45000 --osl 256]
        the run's summary alone (`metrics.summarize_run`, what `trilemma run` does after sending), on synthetic
        results of each size written first: peak RSS over the imports and the bytes each request holds. Seconds,
        not minutes: the loop for working on the part of a run's peak that grows with its request count.
    python scripts/memory_check.py compare
        `trilemma compare` of two result sets at the scale of sweeps/vllm-regression.yaml (8 points x 630
        requests, OSL 256: written synthetically), base vs new.

Budgets (issues): a 9 k-request run (qps 150, OSL 256) peaks below 400 MB and a 5x longer one not higher;
`compare` of vllm-regression-sized results stays below 500 MB.

Each row says whether the server kept up (delivered req/s, saturated). The summary holds no per-token data
(token arrays are streamed from disk) and no object per request: numpy columns, ~200 bytes a request
(records.Columns). Each request in flight costs ~10 KB and a socket; past the server's capacity (the h100
profile delivers ~55-90 req/s at ISL 128 / OSL 256 here, so qps 150 is far past it) an open loop's backlog
would grow with the run, so an open loop holds at most runner.DEFAULT_MAX_IN_FLIGHT (4096) in flight and the
rest wait at the client.
Measured on the 2-core development box (60 s → 9,058 requests; 300 s → 45,021, all ok):
- 2026-12-06 (later), compaction in ~4 MB row groups (one group a part kept each group's metadata in the writer
  until it closed: compacting 45 k synthetic requests alone peaked 205 MB against 184 MB for 9 k; gathered: 192 /
  191 MB), nine runs: 60 s 350.7, 318.8, 317.4, 352.6, 342.8 MB (median 342.8); 300 s 337.4, 332.7, 332.8,
  328.3 MB (median 332.8, 0.97x; max 337.4 against the shorter runs' 352.6): the 5x longer run does not peak
  higher. RSS sampled every 0.25 s shows where the peak is: sending holds flat (265-271 MB from 90 s to the end of
  sending at ~480 s of the 300 s run), and the peak is the end phase (compaction, summary): +60-75 MB over that
  plateau at both lengths. What still grows with the run is the summary's ~200 bytes a request (+7 MB for 36 k
  more), inside the spread. Before this change, the same day: 326.2 / 371.0 MB, and 296.4 / 322.2 MB.
- 2026-12-06, columnar summary and scrapes released at once: 320 MB and 332 MB (1.04x). The summary alone
  (`summary` mode): 197 bytes held a request, its peak under the imports' at both sizes (187 / 197 MB).
- 2026-12-06, the same below the server's capacity (`--qps 60`, delivered 60 req/s, not saturated): 3,524
  requests → 273 MB, 18,113 → 257 MB (0.94x): with no backlog, the longer run does not peak higher. At qps 150
  the rest of the difference is the in-flight state at the cap (the tuples added between two instants of a run
  were the in-flight responses' headers and timed reads), full for longer in the longer run.
- 2026-12-06, columnar summary only: 312 MB and 348 MB (1.12x). Each /metrics scrape's httpx response (11 KB
  from the simulator) waited for the cyclic collector, which a run holds off: one body a second for the whole
  run (prometheus.fetch_text). What is left of the growth is in the sending phase: RSS sampled every 0.25 s
  rose ~12 MB more between the in-flight cap filling (~65 s) and the end of sending (~510 s) than the scrapes
  explain, with no Python container growing with it and no change from MALLOC_ARENA_MAX=2 or a periodic
  malloc_trim: not found yet. The 60 s run's peak moved by 8 MB between two runs (312 / 320 MB).
- 2026-12-05, one RequestRecord per request in the summary: 322 MB and 377 MB (1.17x); 2026-12-04: 324 / 337 MB.
- Before the cap: 342 MB and 854 MB, and the 300 s run lost 8,132 requests to the 20,000-descriptor limit
  (connect errors) and was reported as not saturated.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_mb(cmd: list[str], ok_codes=(0,)) -> tuple[float, subprocess.CompletedProcess]:
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode not in ok_codes or not m:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return int(m[1]) / 1024, p


def check_run(a) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.sim.launch import start_sim

    rows = []
    for dur in a.durations:
        proc, url = start_sim("--profile", a.profile)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                mb, _ = peak_mb([sys.executable, "-m", "bench.cli", "run", "--url", url, "--qps", str(a.qps), "--duration", str(dur),
                                 "--isl", str(a.isl), "--osl", str(a.osl), "--out", tmp, "--name", "mem"])
                doc = json.loads(next(Path(tmp).glob("*/run.json")).read_text())
                s = doc["summary"]
                rows.append({"duration_s": dur, "requests": s["n_total"], "ok": s["n_ok"], "tokens": s["output_tokens"],
                             "delivered_rps": round(s["request_throughput"], 1), "saturated": s["steady_state"]["saturated"],
                             "peak_rss_mb": round(mb, 1), "status": doc["status"]})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.kill()
            proc.wait()
    if len(rows) > 1:
        print(f"longest/shortest peak: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x for "
              f"{rows[-1]['requests'] / max(1, rows[0]['requests']):.1f}x the requests")


_SUMMARY_CHILD = """
import resource, sys, tracemalloc
from pathlib import Path
from bench.config import parse_slos
from bench.metrics import _NOT_SUMMARISED, summarize_run
from bench.records import read_columns
import bench.cli, pyarrow.compute, scipy.stats  # the imports a run has loaded by then (compaction, the summary's statistics)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s, recs = summarize_run(Path(sys.argv[1]), parse_slos("ttft_p99=500ms,itl_p99=50ms"), offered_qps=150.0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = len(recs)
del s, recs
tracemalloc.start()  # after the peak is read: its own bookkeeping is not counted in it
recs = read_columns(Path(sys.argv[1]), skip=_NOT_SUMMARISED)  # what summarize_run holds
held = tracemalloc.get_traced_memory()[0] / max(1, len(recs))
print(n, base, peak, held)
"""


def check_summary(a) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from bench.records import IncrementalWriter, RequestRecord

    rows = []
    for n in a.requests:
        with tempfile.TemporaryDirectory() as tmp:
            w = IncrementalWriter(Path(tmp))
            t0 = 10**12
            for i in range(n):  # 150 req/s, TTFT 50 ms, one token every 20 ms
                first = t0 + i * 10**9 // 150 + 50_000_000
                chunks = first + np.arange(a.osl, dtype=np.int64) * 20_000_000
                w.add(RequestRecord(index=i, intended_ns=t0 + i * 10**9 // 150, sent_ns=t0 + i * 10**9 // 150 + 1000, first_byte_ns=first,
                                    end_ns=int(chunks[-1]), chunk_ns=chunks, chunk_tokens=np.ones(a.osl, np.int64), isl=a.isl, osl=a.osl,
                                    prompt_tokens=a.isl, prompt_tokens_local=a.isl, output_tokens=a.osl, ok=True, status=200,
                                    finish_reason="length", response_id=f"cmpl-{i:032x}", model="meta-llama/Llama-3.1-8B-Instruct",
                                    source=f"random:{i}", warmup=i < 50))
                if i % 2048 == 2047:
                    w.flush()
            w.close()
            p = subprocess.run([sys.executable, "-c", _SUMMARY_CHILD, tmp], cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"summary failed:\n{p.stderr[-2000:]}")
            got, base, peak, held = p.stdout.split()
            rows.append({"requests": int(got), "imports_mb": round(float(base), 1), "peak_rss_mb": round(float(peak), 1),
                         "summary_mb": round(float(peak) - float(base), 1), "bytes_per_request_held": round(float(held))})
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        print(f"largest/smallest peak: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x for "
              f"{rows[-1]['requests'] / max(1, rows[0]['requests']):.1f}x the requests")


def check_compare(a) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.config import SLO
    from tests.synthetic import write_sweep

    slos = [SLO(metric="ttft", pct=99, threshold_ms=500), SLO(metric="tpot", pct=50, threshold_ms=30),
            SLO(metric="itl", pct=99, threshold_ms=50)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in (("base", 0), ("new", 1)):
            write_sweep(Path(tmp), name, loads=(2.0, 4.0, 8.0, 12.0, 2.5, 4.5, 8.5, 12.5), n=630, osl=256, slos=slos, seed=seed,
                        labels={"gpu": "h100", "gpus": "1"})
        mb, p = peak_mb([sys.executable, "-m", "bench.cli", "compare", f"{tmp}/base", f"{tmp}/new", "--fail-on-regression", "5%"], ok_codes=(0, 1))
        print(json.dumps({"points_per_side": 8, "requests_per_point": 630, "osl": 256, "peak_rss_mb": round(mb, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--qps", type=float, default=150)
    r.add_argument("--isl", type=int, default=128)
    r.add_argument("--osl", type=int, default=256)
    r.add_argument("--durations", type=float, nargs="+", default=[60, 300])
    r.add_argument("--profile", default="h100-llama3-8b")
    sm = sub.add_parser("summary")
    sm.add_argument("--requests", type=int, nargs="+", default=[9000, 45000])
    sm.add_argument("--isl", type=int, default=128)
    sm.add_argument("--osl", type=int, default=256)
    sub.add_parser("compare")
    a = ap.parse_args()
    {"run": check_run, "summary": check_summary, "compare": check_compare}[a.what](a)


if __name__ == "__main__":
    main()
