"""⑦ The versioned result layout on disk; load and list.

A run directory (`results/<run-id>/`, or a sweep point `results/<sweep>/points/<hash>/`) holds:
- `run.json`        the run document (below), rewritten atomically as the run progresses
- `requests.parquet` one row per request (records.py), or `requests.parts/` while live / after a kill
- `server_metrics.parquet`, `gpu.parquet`  telemetry timelines where captured

run.json schema history (RUN_SCHEMA_VERSION):
- 1: kind, run_id, status (running|complete|failed|interrupted), error, harness{version, git_sha},
     spec (RunSpec, no secrets), target{url, model, api, server_version, server_kind, simulated, ...},
     environment{...}, workload{tokenizer, ...}, anchor{wall_ns, perf_ns}, started_at/ended_at (unix s),
     summary (metrics.summarize), telemetry{...}
   additive, same version: spec.target.url and target.url redacted (`//***@`); workload.dataset_rows_reused
     (short dataset wrapped around), workload.clipped_to_max_model_len counts requests sent;
     summary.streams_without_done; requests.parquet column done_marker (absent in older files: True);
     summary.client_queue (in-flight cap, requests that waited for a slot, due ones never sent),
     summary.per_stage; requests.parquet columns stage and slot_ns (absent in older files: 0);
     client{workers, workers_from, why, pids}, client_health.workers (per worker process), summary.client;
     requests.parquet column worker (absent in older files: 0)
- 2: summary.warnings are objects {code, message, remedy, values, text} (bench/warn.py); in 1 they were strings,
     which RunDoc reads as code `text`. Everything else as in 1.
  Readers take run.json through bench.summary.RunDoc / PointSummary (typed, defaults for absent fields); a
  run.json of a newer schema than this trilemma's is refused with one line naming both versions.

sweep.json schema history (SWEEP_SCHEMA_VERSION):
- 1: kind, name, status (running|complete|interrupted|failed), harness, spec (SweepSpec, URLs redacted),
     updated_at, servers[] (launched serve configs: params, command, log, pid, status, deaths)
  JSON has no nan/inf: both are written as null. The one field that can be infinite is an SLO's
  aggregate value, `summary.slos[].value_ms` (failed requests count as infinitely slow, so a p99.9 with
  one failure in 200 is inf); `read_run` (summary.SloResult) reads a null there with n > 0 back as inf (nan needs n = 0).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench._version import __version__
from bench.summary import PointSummary, RunDoc, SweepDoc
from bench.warn import warning

RUN_SCHEMA_VERSION = 2
SWEEP_SCHEMA_VERSION = 1


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def harness_info() -> dict:
    return {"name": "trilemma", "version": __version__, "git_sha": _git_sha()}


def new_run_id(spec) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{spec.workload.label()}-{spec.load.label()}".replace(":", "-").replace("/", "-")


def new_run_doc(spec, run_id: str) -> dict:
    from bench.client import redact_url
    from bench.telemetry.environment import collect_environment

    spec_doc = spec.model_dump(mode="json")
    spec_doc["target"]["url"] = redact_url(spec_doc["target"]["url"])  # a password in the URL is never stored
    spec_doc["target"]["endpoints"] = [redact_url(u) for u in spec_doc["target"]["endpoints"]]
    return {
        "schema_version": RUN_SCHEMA_VERSION,
        "kind": "run",
        "run_id": run_id,
        "status": "running",
        "error": None,
        "harness": harness_info(),
        "spec": spec_doc,
        "seed": spec.seed,
        "labels": dict(spec.labels),
        "host": socket.gethostname(),
        "pid": os.getpid(),  # with host: tells a run still measuring from one whose process was killed
        "environment": collect_environment(),
        "started_at": time.time(),
    }


def _clean(o):
    """JSON cannot hold nan/inf: store them as null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: Path, doc: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(_clean(doc), indent=2, default=str))
    os.replace(tmp, path)


def write_run_doc(run_dir: Path, doc: dict) -> None:
    write_json(Path(run_dir) / "run.json", doc)


def _read_versioned(p: Path, kind: str, newest: int, cut: str = "") -> dict:
    """A JSON document of ours; one line for a broken file or one written by a newer trilemma."""
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}){cut}") from None
    if doc.get("schema_version", 0) > newest:
        raise ValueError(f"{p}: {kind} schema {doc['schema_version']} is newer than this trilemma reads ({newest}); upgrade trilemma")
    return doc


def read_run_doc(run_dir: Path) -> dict:
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir}: no run.json here; give a directory written by `trilemma run` or `trilemma sweep`")
    return _read_versioned(p, "run.json", RUN_SCHEMA_VERSION, "; the run was cut while writing — measure it again")


def read_sweep_doc(sweep_dir: Path) -> SweepDoc | None:
    """A sweep's sweep.json (None where there is none); one line for a broken or newer-schema file."""
    p = Path(sweep_dir) / "sweep.json"
    return SweepDoc.model_validate(_read_versioned(p, "sweep.json", SWEEP_SCHEMA_VERSION)) if p.is_file() else None


def _process_gone(doc: RunDoc, run_dir: Path, quiet_s: float = 60.0) -> bool:
    """A `running` run whose process is gone: same host and its pid no longer alive; elsewhere (or no pid
    recorded), nothing written for `quiet_s` (a live run flushes its requests every second)."""
    if doc.pid and doc.host == socket.gethostname():
        try:
            os.kill(doc.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    newest = max((f.stat().st_mtime for f in Path(run_dir).rglob("*") if f.is_file()), default=0.0)
    return time.time() - newest > quiet_s


def settle(run_dir: Path, doc: RunDoc) -> RunDoc:
    """The run document as `knee`, `report` and `compare` take it. A run left `running` by a process that
    died (kill -9, OOM kill, power loss) is `interrupted`, its summary rebuilt from the requests saved
    before the kill (at most the last second is lost); the document on disk is not changed."""
    if doc.status != "running" or doc.summary is not None or not _process_gone(doc, run_dir):
        return doc
    from bench.config import RunSpec
    from bench.metrics import summarize_run
    from bench.records import _files

    doc = doc.model_copy(update={"status": "interrupted", "recovered": True,
                                 "error": "the run's process was killed; summary rebuilt from the requests saved before it"})
    if not _files(Path(run_dir)):
        return doc
    spec = RunSpec.model_validate(doc.spec.model_dump(exclude_unset=True))
    ld = spec.load
    s, cols = summarize_run(Path(run_dir), spec.slos, offered_qps=ld.qps,
                            mode="qps" if ld.open_loop else "concurrency",
                            expect_exact_osl=spec.target.ignore_eos, window_ns=doc.window_ns)
    if not len(cols):
        return doc
    s["warnings"].append(warning("interrupted", "interrupted: the process was killed; this summary was rebuilt from the requests "
                                 "saved before it", "measure the point again for a complete result"))
    return doc.model_copy(update={"summary": PointSummary.model_validate(s)})


def read_run(run_dir: Path, settled: bool = False) -> RunDoc:
    """run.json as the typed RunDoc; `settled`: a killed run read as interrupted, its summary rebuilt (settle)."""
    doc = RunDoc.model_validate(read_run_doc(run_dir))
    return settle(Path(run_dir), doc) if settled else doc


def load_run(run_dir: str | Path) -> tuple[dict, list]:
    """(run.json document, list[RequestRecord]) of one run or sweep point."""
    from bench.records import read_records

    return read_run_doc(Path(run_dir)), read_records(Path(run_dir))


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every run directory under the given paths (a run, a sweep, or a folder of them)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "run.json").is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(q.parent for q in p.rglob("run.json"))
        else:
            raise FileNotFoundError(f"{p}: not a results directory; give results/<run-id> or results/<sweep-name>")
    return out
