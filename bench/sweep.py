"""⑥ Sweeps: run every point of a grid, or search the SLO knee adaptively, saving each point as it
finishes and resuming from what is on disk.

Layout: results/<sweep>/sweep.json (spec, status) and results/<sweep>/points/<hash>/ (one run directory
per measured point; the hash is of the point's own spec, so a rerun of the same spec skips finished
points and re-measures only unfinished ones).

The knee search (`knee_search`) is a generator: it yields the next probe and is sent that probe's
summary — so its logic is tested on synthetic servers without HTTP. Procedure (METHODS.md §3):
baseline at concurrency 1 (if that misses the SLO, no load can meet it); open-loop rates growing ×`ladder`
from 2× the baseline rate until a probe FAILs (saturation is detected, not assumed: completions below
the offered rate, TTFT rising over the window, errors); geometric bisection until hi/lo − 1 ≤ precision;
then the knee is confirmed with a new seed, stepping down if the confirmation fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from bench.config import SLO, AutoSearch, RunSpec, SweepSpec, parse_amount
from bench.metrics import send_lag_confidently_over, send_lag_limit_ms

PASS, FAIL, INVALID, INCONCLUSIVE = "PASS", "FAIL", "INVALID", "INCONCLUSIVE"


# ------------------------------------------------------------------ verdicts
def verdict(summary: dict, slos: list[SLO], rule: str = "percentile", target: float = 0.99) -> tuple[str, str]:
    """PASS / FAIL / INVALID (client unhealthy: rerun, never FAIL) / INCONCLUSIVE, with the reason."""
    n = summary.get("n_measured") or 0
    if n == 0:
        return FAIL, "no requests measured"
    if summary.get("n_failed", 0) / n > 0.01:
        return FAIL, f"{summary['n_failed']}/{n} requests failed"
    lag = (summary.get("latency_ms") or {}).get("send_lag") or {}
    lag_limit = send_lag_limit_ms(slos)
    if send_lag_confidently_over(lag, lag_limit):
        return INVALID, f"client fell behind (send lag p99 {lag['p99']:.1f} ms, 95% CI above {lag_limit:g} ms)"
    sat = summary.get("saturation") or {}
    if sat.get("saturated"):
        return FAIL, f"saturated: {sat['reason']}"
    if rule == "fraction":
        att = summary.get("attainment") or 0.0
        if att >= target:
            return PASS, f"attainment {100 * att:.1f}% >= {100 * target:g}%"
        return FAIL, f"attainment {100 * att:.1f}% < {100 * target:g}%"
    missed = [v for v in summary.get("slos", []) if not v["met"]]
    if missed:
        worst = max(missed, key=lambda v: (v["value_ms"] or math.inf) / v["threshold_ms"])
        return FAIL, f"{worst['slo']} {worst['value_ms']:.1f} ms > {worst['threshold_ms']:g} ms"
    # met on the point estimate; inconclusive if the p99's confidence interval straddles the threshold
    for v in summary.get("slos", []):
        d = (summary.get("latency_ms") or {}).get(v["slo"].split("_p")[0]) or {}
        hi = (d.get("p99_ci") or [None, None])[1]
        if v["slo"].endswith("_p99") and hi is not None and hi > v["threshold_ms"]:
            return INCONCLUSIVE, f"{v['slo']} CI upper {hi:.1f} ms above {v['threshold_ms']:g} ms"
    return PASS, "all SLOs met"


def binding_slo(summary: dict) -> str | None:
    """The SLO closest to (or furthest past) its threshold: value / threshold largest."""
    v = [x for x in summary.get("slos", []) if x.get("value_ms") is not None]
    return max(v, key=lambda x: x["value_ms"] / x["threshold_ms"])["slo"] if v else None


# ------------------------------------------------------------------ adaptive search
def knee_from_history(history: dict[float, list[str]]) -> tuple[float | None, float | None]:
    """Knee = highest load whose every probe passed, with every lower load passing too; bracket_hi =
    the lowest load with any failing probe (same rule as knee.knee_table)."""
    lo, hi = None, None
    for load in sorted(history):
        if all(v == PASS for v in history[load]):
            lo = load
        else:
            hi = load
            break
    return lo, hi


def knee_search(auto: AutoSearch, ladder: float = 4.0):
    """Generator: yields (mode, value, role, seed_offset) and receives (verdict, summary) for each probe.
    Returns {"feasible", "knee_qps", "bracket", "r_single", "tput_at_first_fail", "probes", "note"}; the knee
    is always a measured load (knee_from_history over every rate probe)."""
    probes = 0
    history: dict[float, list[str]] = {}
    v, s = yield ("concurrency", 1, "baseline", 0)
    probes += 1
    r_s = s.get("request_throughput") or 0.0
    if v == FAIL:
        return {"feasible": False, "knee_qps": None, "bracket": None, "r_single": r_s, "tput_at_first_fail": None, "probes": probes,
                "note": "even one request at a time misses the SLO: no load can meet it"}
    tput_fail = None

    def probe(lam, role, seed=0):
        return ("qps", lam, role, seed)

    lam = 2 * r_s if r_s > 0 else 1.0
    while probes < auto.max_probes:  # ladder up until a probe fails
        v, s = yield probe(lam, "ladder")
        probes += 1
        history.setdefault(lam, []).append(v)
        if v != PASS:
            tput_fail = s.get("request_throughput")
            break
        lam *= ladder
    lo, hi = knee_from_history(history)
    while hi is not None and lo is None and probes < auto.max_probes:  # the first step failed: look below
        v, s = yield probe(hi / 2, "bracket")
        probes += 1
        history.setdefault(hi / 2, []).append(v)
        lo, hi = knee_from_history(history)
    if lo is None:
        return {"feasible": False, "knee_qps": None, "bracket": [0, hi], "r_single": r_s, "tput_at_first_fail": tput_fail,
                "probes": probes, "note": "no open-loop rate met the SLO within the probe budget"}
    if hi is None:
        return {"feasible": True, "knee_qps": lo, "bracket": [lo, None], "r_single": r_s, "tput_at_first_fail": None,
                "probes": probes, "note": "probe budget spent before any load failed; raise max_probes"}
    confirmed = not auto.confirm
    while probes < auto.max_probes:
        if hi / lo - 1 > auto.precision:  # bisect on the geometric midpoint
            mid = math.sqrt(lo * hi)
            v, s = yield probe(mid, "bisect")
            history.setdefault(mid, []).append(v)
        elif not confirmed:  # confirm the knee with a new seed; a failure moves the bracket down
            v, s = yield probe(lo, "confirm", len(history[lo]))
            history[lo].append(v)
            confirmed = v == PASS
        else:
            break
        probes += 1
        lo_new, hi = knee_from_history(history)
        if lo_new is None:  # everything probed failed on repeat: step below the lowest probe
            lo_new = min(history) / (1 + auto.precision)
            history.setdefault(lo_new, [])
        if lo_new != lo:
            confirmed = not auto.confirm
        lo = lo_new
    knee, hi = knee_from_history({k: v for k, v in history.items() if v})
    note = ""
    if knee is None or hi is not None and hi / knee - 1 > auto.precision or not confirmed:
        note = "stopped at the probe budget before the bracket closed and the knee was confirmed; raise max_probes"
    return {"feasible": knee is not None, "knee_qps": knee, "bracket": [knee, hi], "r_single": r_s, "tput_at_first_fail": tput_fail,
            "probes": probes, "note": note}


# ------------------------------------------------------------------ running points
def point_key(spec: SweepSpec, cell_idx: int, mode: str, value: float, repeat: int, seed_offset: int, extend: int = 0) -> dict:
    """What identifies a point: everything that changes the measurement, not the server's port."""
    c = spec.cells[cell_idx]
    return {"cell": c.model_dump(mode="json"), "mode": mode, "value": round(float(value), 6), "repeat": repeat,
            "seed": spec.seed + repeat * 1000 + seed_offset, "duration_s": spec.duration_s, "requests": spec.requests,
            "warmup": str(spec.warmup), "api": spec.target.api, "model": spec.target.model, "slos": [str(s) for s in spec.slos],
            "extend": extend, "arrival": str(spec.load.arrival), "max_concurrency": spec.load.max_concurrency}


def point_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def make_run_spec(spec: SweepSpec, url: str, key: dict) -> RunSpec:
    w, unit = parse_amount(spec.warmup, "warmup")
    c = spec.cells[[x.model_dump(mode="json") for x in spec.cells].index(key["cell"])]
    scale = 2 ** key.get("extend", 0)
    load = {"arrival": spec.load.arrival, "warmup": w, "warmup_unit": unit,
            "duration_s": spec.duration_s * scale if spec.duration_s else None,
            "requests": spec.requests * scale if spec.requests else None}
    if key["mode"] == "qps":
        load.update(qps=key["value"], max_concurrency=spec.load.max_concurrency)
    else:
        load.update(concurrency=int(key["value"]))
    tgt = spec.target.model_dump(exclude={"sim"})
    tgt["url"] = url
    return RunSpec(target=tgt, workload=dict(isl=c.isl, osl=c.osl, dataset=c.dataset, prefix_tokens=c.prefix_tokens,
                                             prefix_groups=c.prefix_groups, max_model_len=spec.max_model_len),
                   load=load, slos=spec.slos, seed=key["seed"], labels=spec.labels, reset_prefix_cache=spec.reset_prefix_cache,
                   gpu_telemetry=spec.gpu_telemetry)


class Interrupted(Exception):
    pass


class SweepRunner:
    def __init__(self, spec: SweepSpec, out_root: Path, api_key: str | None = None, on_event=None):
        self.spec, self.api_key, self.on_event = spec, api_key, on_event or (lambda *a, **k: None)
        self.dir = Path(out_root) / spec.name
        self.points_dir = self.dir / "points"
        self.measured = 0
        self.skipped = 0
        self.url = spec.target.url
        self.sim_proc = None

    def _doc(self, status: str, extra: dict | None = None) -> None:
        from bench.client import redact_url
        from bench.results import harness_info, write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        spec_doc = self.spec.model_dump(mode="json")
        spec_doc["target"]["url"] = redact_url(spec_doc["target"]["url"])
        doc = {"schema_version": 1, "kind": "sweep", "name": self.spec.name, "status": status, "harness": harness_info(),
               "spec": spec_doc, "updated_at": time.time(), **(extra or {})}
        write_json(self.dir / "sweep.json", doc)

    def measure(self, cell_idx: int, mode: str, value: float, repeat: int = 0, seed_offset: int = 0, role: str = "grid") -> dict:
        """Measure one point (or return it from disk if already complete). Returns its summary.
        An INCONCLUSIVE point is re-measured once with a doubled window."""
        from bench import results
        from bench.runner import execute_run

        key = point_key(self.spec, cell_idx, mode, value, repeat, seed_offset)
        s = self._measure_key(key, role, execute_run, results)
        extend = self.spec.load.auto.extend_inconclusive if self.spec.load.auto else True
        if self.spec.slos and extend:
            v, why = verdict(s, self.spec.slos, self.spec.attainment.rule, self.spec.attainment.target)
            if v == INCONCLUSIVE:
                self.on_event("note", key=key, role=role, why=f"inconclusive ({why}): measuring again with a window twice as long")
                key2 = point_key(self.spec, cell_idx, mode, value, repeat, seed_offset, extend=1)
                s = self._measure_key(key2, role + "+extended", execute_run, results)
                self.supersede(key, key2)
        return s

    def supersede(self, old: dict, new: dict) -> None:
        """Mark a point replaced by a re-measurement (longer window, or client unhealthy): the knee
        table then uses only the replacement, as the search did."""
        from bench import results

        d = self.points_dir / point_hash(old)
        if (d / "run.json").is_file():
            doc = results.read_run_doc(d)
            doc["superseded_by"] = point_hash(new)
            results.write_run_doc(d, doc)

    def _measure_key(self, key: dict, role: str, execute_run, results) -> dict:
        import shutil

        h = point_hash(key)
        pdir = self.points_dir / h
        if (pdir / "run.json").is_file():
            doc = results.read_run_doc(pdir)
            if doc.get("status") == "complete" and doc.get("summary"):
                self.skipped += 1
                self.on_event("skip", key=key, role=role, summary=doc["summary"])
                return doc["summary"]
        if pdir.exists():
            shutil.rmtree(pdir)  # unfinished: measure again from scratch
        self.on_event("start", key=key, role=role)
        from bench.telemetry import telemetry_for

        rs = make_run_spec(self.spec, self.url, key)
        tel = telemetry_for(rs, self.spec.gpus, self.api_key)
        doc = execute_run(rs, pdir, self.api_key, None, tel, extra={"point": {**key, "hash": h, "role": role,
                                                                                "cell_label": self._cell_label(key)}})
        if doc.get("status") == "interrupted":
            raise Interrupted()
        if doc.get("status") == "failed" and not doc.get("summary", {}).get("n_measured"):
            from bench.runner import RunFailed

            raise RunFailed(doc.get("error") or "point failed")
        self.measured += 1
        self.on_event("done", key=key, role=role, summary=doc["summary"])
        return doc["summary"]

    def _cell_label(self, key: dict) -> str:
        from bench.config import CellSpec

        return CellSpec(**key["cell"]).label()

    def _start_sim(self) -> None:
        if self.spec.target.sim is None:
            return
        from bench.sim.calibrate import start_sim

        sim = self.spec.target.sim
        self.sim_proc, self.url = start_sim("--profile", sim.profile, "--slowdown", str(sim.slowdown), "--seed", str(sim.seed))

    def run(self) -> dict:
        spec = self.spec
        self._doc("running")
        searches = []
        status, error = "complete", None
        try:
            self._start_sim()
            for ci, _cell in enumerate(spec.cells):
                for rep in range(spec.repeats):
                    if spec.load.auto is not None:
                        searches.append({"cell": ci, "repeat": rep, **self._search(ci, rep)})
                    else:
                        values = spec.load.qps if spec.load.qps is not None else spec.load.concurrency
                        mode = "qps" if spec.load.qps is not None else "concurrency"
                        for v in values:
                            self.measure(ci, mode, v, rep)
        except (Interrupted, KeyboardInterrupt):
            status = "interrupted"
        except Exception as e:  # e.g. the target is unreachable: the sweep did not measure what it set out to
            from bench.runner import one_line

            status, error = "failed", one_line(e)
            raise
        finally:
            if self.sim_proc is not None:
                self.sim_proc.terminate()
                self.sim_proc.wait(10)
            self._doc(status, {"searches": searches, "measured": self.measured, "skipped": self.skipped, "error": error})
        return {"status": status, "dir": self.dir, "measured": self.measured, "skipped": self.skipped, "searches": searches}

    def _search(self, ci: int, rep: int) -> dict:
        spec = self.spec
        gen = knee_search(spec.load.auto)
        probe = next(gen)
        invalid = 0
        while True:
            mode, value, role, seed_off = probe
            s = self.measure(ci, mode, value, rep, seed_off + invalid * 100, role)
            v, why = verdict(s, spec.slos, spec.attainment.rule, spec.attainment.target)
            if v == INVALID and invalid < 1:
                invalid += 1
                self.on_event("note", key={"mode": mode, "value": value}, role=role, why=f"{why}: measuring again")
                self.supersede(point_key(spec, ci, mode, value, rep, seed_off), point_key(spec, ci, mode, value, rep, seed_off + 100))
                continue  # client was unhealthy: measure again, never count it as a FAIL
            if v in (INCONCLUSIVE, INVALID):
                v = PASS if (v == INCONCLUSIVE and all(x["met"] for x in s.get("slos", []))) else FAIL
            invalid = 0
            self.on_event("verdict", key={"mode": mode, "value": value}, role=role, verdict=v, why=why)
            try:
                probe = gen.send((v, s))
            except StopIteration as e:
                return e.value
