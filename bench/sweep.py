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
import re
import time
from pathlib import Path

from bench.client import redact_url
from bench.config import AutoSearch, ProbeRule, RunSpec, SpecError, SweepSpec, parse_amount
from bench.launch import LaunchedServer, LaunchError, config_hash, config_label
from bench.prompts import PromptCache
from bench.summary import PointSummary, RunDoc, as_summary
from bench.verdict import FAIL, INCONCLUSIVE, INVALID, PASS, knee_rule, leans_fail, verdict


# ------------------------------------------------------------------ adaptive search
def _lifetime(s: PointSummary) -> float:
    return (s.steady_state.lifetime_s if s.steady_state else None) or 0.0


def knee_search(auto: AutoSearch, ladder: float = 4.0):
    """Generator: yields (mode, value, role, seed_offset) and receives (verdict, summary) for each probe
    (verdict PASS, FAIL or INCONCLUSIVE = undecided). Returns {"feasible", "knee_qps", "bracket",
    "r_single", "tput_at_first_fail", "probes", "note", "undecided"}; the knee is always a load decided PASS.

    Baseline and ladder probes only screen for a decisive failure (a p99 cannot be proven at a low rate in
    a short window); the ladder climbs ×`ladder` until one fails, or is undecided with signs of trouble
    (an exceedance fraction already over what the percentile allows, or requests living 1.5× longer than one at a
    time: a queue). Bisection then looks for the highest load
    a full probe decides PASS: an undecided full probe bounds it from above like a failure, a load that was
    only screened must be decided by a full probe before it can be the knee, and the knee is confirmed with
    a new seed."""
    probes = 0
    history: dict[float, list[tuple[str, bool]]] = {}  # load -> [(verdict, full probe?)]
    v, s = yield ("concurrency", 1, "baseline", 0)
    probes += 1
    s = as_summary(s)
    r_s = s.request_throughput or 0.0
    base_life = _lifetime(s)  # one request at a time: no queue
    if v == FAIL:
        return {"feasible": False, "knee_qps": None, "bracket": None, "r_single": r_s, "tput_at_first_fail": None, "probes": probes,
                "note": "even one request at a time misses the SLO: no load can meet it", "undecided": []}
    tput_fail = None

    def status(x: float) -> str:
        vs = history[x]
        if any(v == FAIL for v, _ in vs):
            return "fail"
        if any(v == INCONCLUSIVE and full for v, full in vs):
            return "undecided"
        if any(v == PASS for v, _ in vs):
            return "pass"
        return "screened"

    def record(x: float, v: str, full: bool) -> None:
        history.setdefault(x, []).append((v, full))

    lam = 2 * r_s if r_s > 0 else 1.0
    while probes < auto.max_probes:  # ladder up until a probe fails, or shows exceedances it cannot yet judge
        v, s = yield ("qps", lam, "ladder", 0)
        probes += 1
        s = as_summary(s)
        life = _lifetime(s)
        troubled = v == INCONCLUSIVE and (any(leans_fail(x) for x in s.slos)
                                          or (base_life > 0 and life > 1.5 * base_life))  # requests live longer: a queue
        record(lam, v, troubled)  # an undecided screen that leans to FAIL bounds the bisection like a full undecided probe
        if v == FAIL or troubled:
            tput_fail = s.request_throughput if v == FAIL else None
            break
        lam *= ladder
    confirmed: set[float] = set()
    while probes < auto.max_probes:
        top = min((x for x in history if status(x) in ("fail", "undecided")), default=None)
        below = [x for x in history if (top is None or x < top) and status(x) in ("pass", "screened")]
        if top is None:
            break  # nothing failed within the budget: the knee is above the highest load probed
        if not below:  # everything probed failed or stayed undecided: look lower
            x = min(history) / 2
            v, s = yield ("qps", x, "bracket", 0)
            record(x, v, True)
        elif top / max(below) - 1 > auto.precision:  # bisect on the geometric midpoint
            x = math.sqrt(max(below) * top)
            v, s = yield ("qps", x, "bisect", 0)
            record(x, v, True)
        else:
            lo = max(below)
            if status(lo) == "pass" and (lo in confirmed or not auto.confirm):
                break
            # decide a screened load, or confirm a passing one with a new seed
            v, s = yield ("qps", lo, "confirm", len(history[lo]))
            record(lo, v, True)
            confirmed.add(lo)
        probes += 1
    knee, hi, undecided = knee_rule(history)
    note = ""
    if knee is None:
        note = "no load was decided PASS within the probe budget (raise max_probes or probe.max_duration_s)"
    elif hi is None:
        note = "probe budget spent before any load failed; raise max_probes"
    elif auto.confirm and knee not in confirmed:
        note = "stopped at the probe budget before the knee was confirmed; raise max_probes"
    elif undecided:
        note = f"loads between the knee and the first failing load stayed undecided ({', '.join(f'{x:.3g}' for x in undecided)})"
    return {"feasible": knee is not None, "knee_qps": knee, "bracket": [knee, hi], "r_single": r_s, "tput_at_first_fail": tput_fail,
            "probes": probes, "note": note, "undecided": undecided}


# ------------------------------------------------------------------ running points
SCREENING_ROLES = ("baseline", "ladder")


def probe_seed(spec: SweepSpec, cell_idx: int, mode: str, value: float, role: str, repeat: int, seed_offset: int, extend: int) -> int:
    """A workload/arrival seed per probe: cell, load, role and repeat all change it, so no two probes send
    the same prompts (a server's prefix cache must not serve one probe's prompts to the next)."""
    key = json.dumps([spec.seed, cell_idx, mode, round(float(value), 6), role, repeat, seed_offset, extend])
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2**31


def role_rule(spec: SweepSpec, role: str, extend: int = 0) -> ProbeRule | None:
    """The probe rule for a role: baseline and ladder probes only screen for a decisive failure, so they
    stop at the minimum window; bracket/bisect/confirm/grid probes run the full rule. An extended (re-measured undecided) point doubles its windows."""
    rule = spec.probe_rule()
    if rule is None:
        return None
    if role.split("+")[0] in SCREENING_ROLES:
        rule = rule.model_copy(update={"max_duration_s": rule.min_duration_s})
    if extend:
        f = 2**extend
        rule = rule.model_copy(update={"min_duration_s": rule.min_duration_s * f, "max_duration_s": rule.max_duration_s * f})
    return rule


def point_key(spec: SweepSpec, cell_idx: int, mode: str, value: float, repeat: int, seed_offset: int, extend: int = 0,
              role: str = "grid", serve: dict | None = None) -> dict:
    """What identifies a point: everything that changes the measurement (target included), not the
    server's port. A rerun reuses a point only when this matches."""
    c = spec.cells[cell_idx]
    rule = role_rule(spec, role, extend)
    tgt = spec.target.model_dump(mode="json", exclude={"api_key_env"})
    for k in ("request", "headers", "model_mix"):  # part of the identity only when given (header values are never stored)
        if not tgt.get(k):
            tgt.pop(k, None)
    if not tgt["endpoints"]:  # several replicas: their addresses and how requests are spread are part of it
        tgt.pop("endpoints", None)
        tgt.pop("spread", None)
    else:
        tgt["endpoints"] = [redact_url(u) for u in tgt["endpoints"]]
    tgt["url"] = redact_url(tgt["url"])  # the key is written into each point's run.json: never a password
    if spec.target.launch is not None:  # a launched server: its command and this serve config, not the grid or the port
        tgt.pop("url", None)
        tgt["launch"] = {k: tgt["launch"][k] for k in ("cmd", "image", "env", "docker_args") if tgt["launch"].get(k)}
        tgt["launch"]["config"] = serve or {}
    if spec.target.sim is not None:
        tgt.pop("url", None)
        for k in ("error_rate", "cut_rate", "delay_ms"):  # planted faults: part of the identity only when set
            if not tgt["sim"].get(k):
                tgt["sim"].pop(k, None)
    return {"cell": c.identity(), "mode": mode, "value": round(float(value), 6), "repeat": repeat, "role": role.split("+")[0],
            "seed": probe_seed(spec, cell_idx, mode, value, role.split("+")[0], repeat, seed_offset, extend),
            "duration_s": spec.duration_s, "requests": spec.requests, "warmup": str(spec.warmup), "target": tgt,
            "slos": [str(s) for s in spec.slos], "attainment": spec.attainment.model_dump(mode="json"),
            "probe": rule.model_dump() if rule else None, "extend": extend, "arrival": str(spec.load.arrival),
            "max_concurrency": spec.load.max_concurrency, "max_model_len": spec.max_model_len,
            "reset_prefix_cache": spec.reset_prefix_cache, "labels": spec.labels,
            **({"ramp_up_s": spec.load.ramp_up_s} if spec.load.ramp_up_s else {}),
            **({"stages": [st.model_dump() for st in spec.load.stages]} if mode == "stages" and spec.load.stages else {})}


def point_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def make_run_spec(spec: SweepSpec, url: str, key: dict, lifetime_hint_s: float | None = None) -> RunSpec:
    """The run spec of one point. A probe's warmup is at least `warmup_lifetimes` request lifetimes as the
    previous probe of its cell measured them (the monitor extends it further when needed)."""
    w, unit = parse_amount(spec.warmup, "warmup")
    c = spec.cells[[x.identity() for x in spec.cells].index(key["cell"])]
    scale = 2 ** key["extend"]
    rule = ProbeRule(**key["probe"]) if key["probe"] else None
    if rule is not None and unit == "s" and lifetime_hint_s:
        w = max(w, rule.warmup_lifetimes * lifetime_hint_s)
    load = {"arrival": spec.load.arrival, "warmup": w, "warmup_unit": unit,
            "duration_s": (rule.min_duration_s if rule else spec.duration_s * scale) if spec.duration_s else None,
            "requests": spec.requests * scale if spec.requests else None}
    if key["mode"] == "qps":
        load.update(qps=key["value"], max_concurrency=spec.load.max_concurrency, ramp_up_s=spec.load.ramp_up_s)
    elif key["mode"] == "stages":
        load.update(stages=key["stages"], max_concurrency=spec.load.max_concurrency, ramp_up_s=spec.load.ramp_up_s)
    else:
        load.update(concurrency=int(key["value"]))
    tgt = spec.target.model_dump(exclude={"sim", "launch"})
    tgt["url"] = url
    return RunSpec(target=tgt, workload=dict(isl=c.isl, osl=c.osl, dataset=c.dataset, prefix_tokens=c.prefix_tokens,
                                             prefix_groups=c.prefix_groups, max_model_len=spec.max_model_len, columns=c.columns),
                   load=load, slos=spec.slos, seed=key["seed"], labels=spec.labels, reset_prefix_cache=spec.reset_prefix_cache,
                   gpu_telemetry=spec.gpu_telemetry, probe=rule, workers=spec.workers, ray=spec.ray)


class Interrupted(Exception):
    pass


class ServerFailed(RuntimeError):
    """A launched serve config did not start, or died more often than target.launch.restarts allows."""


class SweepRunner:
    def __init__(self, spec: SweepSpec, out_root: Path, api_key: str | None = None, on_event=None, start_sim=None):
        """`start_sim(*args) -> (process, url)` starts the simulator for a `target: sim:` spec (the CLI passes
        bench.sim.launch.start_sim): the simulator is a sibling of the measurement stack, not part of it."""
        self.spec, self.api_key, self.on_event = spec, api_key, on_event or (lambda *a, **k: None)
        self.start_sim = start_sim
        self.prompts = PromptCache()  # the tokenizer and prompt pieces, found once for the sweep's points
        self.dir = Path(out_root) / spec.name
        self.points_dir = self.dir / "points"
        self.measured = 0
        self.skipped = 0
        self.url = spec.target.url
        self.sim_proc = None
        self.server: LaunchedServer | None = None  # target.launch: the serve config being measured
        self.serve: dict | None = None
        self.servers: list[dict] = []  # what sweep.json records about each serve config
        self.lifetime_hint: dict[str, float] = {}  # cell -> request lifetime (E2E p50, s) of its last probe
        # the points this spec measured or reused: knee, report and compare read only these, so the points an
        # edited spec (SLOs, duration, target, cells) left on disk never mix into its knee. A rerun of the same
        # spec keeps what the earlier runs listed (an interrupted one included) and its servers' records.
        self.points: list[str] = []
        self.server_version: str | None = None  # the version points are checked against (None: not said)
        self.listed_version: str | None = None  # the version the restored points list was made on
        from bench.results import read_sweep_doc

        try:
            prev = read_sweep_doc(self.dir)
        except ValueError:
            prev = None
        if prev is not None and prev.spec_as_written() == self._spec_doc():
            self.points = list(prev.points or [])
            self.servers = list(prev.servers)
            self.listed_version = prev.server_version

    def _spec_doc(self) -> dict:
        spec_doc = self.spec.model_dump(mode="json")
        spec_doc["target"]["url"] = redact_url(spec_doc["target"]["url"])
        spec_doc["target"]["endpoints"] = [redact_url(u) for u in spec_doc["target"]["endpoints"]]
        return spec_doc

    def _doc(self, status: str, extra: dict | None = None) -> None:
        from bench.results import SWEEP_SCHEMA_VERSION, harness_info, write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"schema_version": SWEEP_SCHEMA_VERSION, "kind": "sweep", "name": self.spec.name, "status": status, "harness": harness_info(),
               "spec": self._spec_doc(), "updated_at": time.time(), "points": self.points,
               **({"server_version": self.server_version} if self.server_version else {}),
               **({"servers": self.servers} if self.servers else {}), **(extra or {})}
        write_json(self.dir / "sweep.json", doc)

    def _touch(self, h: str) -> None:
        if h not in self.points:
            self.points.append(h)
            self._doc("running")

    def measure(self, cell_idx: int, mode: str, value: float, repeat: int = 0, seed_offset: int = 0, role: str = "grid") -> PointSummary:
        """Measure one point (or return it from disk if already complete). Returns its summary.
        A non-sequential point left undecided is re-measured once with windows twice as long."""
        from bench import results
        from bench.runner import execute_run

        key = point_key(self.spec, cell_idx, mode, value, repeat, seed_offset, role=role, serve=self.serve)
        s = self._measure_key(key, role, execute_run, results)
        rule = key["probe"]
        extend = self.spec.load.auto.extend_inconclusive if self.spec.load.auto else True
        if self.spec.slos and extend and not (rule and rule["sequential"]) and role.split("+")[0] not in SCREENING_ROLES \
                and mode != "stages":  # stages are a fixed schedule: not re-measured longer
            v, why = verdict(s, self.spec.slos, self.spec.attainment.rule, self.spec.attainment.target)
            if v == INCONCLUSIVE:
                self.on_event("note", key=key, role=role, why=f"undecided ({why}): measuring again with windows twice as long")
                key2 = point_key(self.spec, cell_idx, mode, value, repeat, seed_offset, extend=1, role=role, serve=self.serve)
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

    def _measure_key(self, key: dict, role: str, execute_run, results) -> PointSummary:
        import shutil

        h = point_hash(key)
        pdir = self.points_dir / h
        self._touch(h)
        if (pdir / "run.json").is_file():
            old = results.read_run(pdir)
            was = old.target.server_version
            if self.server_version and was and was != self.server_version and old.status == "complete":
                kept = pdir.with_name(f"{h}.server-{re.sub(r'[^A-Za-z0-9._+-]', '_', was)}")  # kept, never read as this spec's result
                doc = results.read_run_doc(pdir)
                doc["superseded_by"] = h
                results.write_run_doc(pdir, doc)
                if kept.exists():
                    shutil.rmtree(kept)
                pdir.rename(kept)
                self.on_event("note", key=key, role=role, why=f"the server's version changed ({was} -> {self.server_version}): "
                                                             f"measuring again (the earlier point kept in {kept.name})")
            elif old.status == "complete" and old.summary is not None:
                self.skipped += 1
                self._hint(key, old.summary)
                self.on_event("skip", key=key, role=role, summary=old.summary)
                return old.summary
        if pdir.exists():
            shutil.rmtree(pdir)  # unfinished: measure again from scratch
        if self.serve is not None and self.server is None:
            self._start_server(self.serve)
        self.on_event("start", key=key, role=role)
        from bench.telemetry import telemetry_for

        rs = make_run_spec(self.spec, self.url, key, self.lifetime_hint.get(key["cell"]["name"] or str(key["cell"])))
        tel = telemetry_for(rs, self.spec.gpus, self.api_key)
        doc = RunDoc.model_validate(execute_run(rs, pdir, self.api_key, None, tel, prompts=self.prompts, extra={
            "point": {**key, "hash": h, "role": role, "cell_label": self._cell_label(key)},
            **({"launch": self.server.record()} if self.server is not None else {})}))
        if self.server is not None and not self.server.alive():  # the launched server died during the point
            self._server_died(pdir, key)
            return self._measure_key(key, role, execute_run, results)
        if doc.status == "interrupted":
            raise Interrupted()
        if doc.status == "failed" and not (doc.summary and doc.summary.n_measured):
            from bench.runner import RunFailed

            raise RunFailed(doc.error or "point failed")
        summary = doc.summary or PointSummary()
        self.measured += 1
        self._hint(key, summary)
        self.on_event("done", key=key, role=role, summary=summary)
        return summary

    def _hint(self, key: dict, summary: PointSummary) -> None:
        life = _lifetime(summary)
        if summary.probe.stopped in ("fail", "saturated"):
            return  # an aborted probe's lifetimes are a queue's, not the next probe's
        if life:
            self.lifetime_hint[key["cell"]["name"] or str(key["cell"])] = life

    def _cell_label(self, key: dict) -> str:
        """The cell's label; with a grid of serve configs, the config too (the knee table, report and compare
        then treat each config as its own cell)."""
        from bench.config import CellSpec

        label = CellSpec(**key["cell"]).label()
        launch = self.spec.target.launch
        if launch is not None and len(launch.configs()) > 1 and self.serve:
            label += f" ({config_label(self.serve)})"
        return label

    def _start_sim(self) -> None:
        if self.spec.target.sim is None:
            return
        if self.start_sim is None:
            raise SpecError("this sweep's target is the simulator: give SweepRunner a start_sim (trilemma sweep does)")
        sim = self.spec.target.sim
        self.sim_proc, self.url = self.start_sim("--profile", sim.profile, "--slowdown", str(sim.slowdown), "--seed", str(sim.seed),
                                             "--error-rate", str(sim.error_rate), "--cut-rate", str(sim.cut_rate),
                                             "--delay-ms", str(sim.delay_ms))

    def _version_now(self) -> None:
        """A URL target's version (vLLM /version, SGLang server info) before anything is reused: a point measured
        on another version is measured again. An unreachable server says nothing here; its first point fails."""
        import asyncio

        from bench import client as cl

        if self.spec.target.sim is not None or self.spec.target.launch is not None:
            return  # a started server: checked once started (launch), or its profile is in every point's identity (sim)
        headers = {**self.spec.target.headers, **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        try:
            self.server_version = asyncio.run(cl.discover(self.url, headers)).server_version
        except Exception:  # noqa: BLE001 - an unreachable or odd server is reported by the first point measured
            self.server_version = None
        if self.server_version and self.listed_version and self.server_version != self.listed_version:
            # points listed on the old version that this run does not visit (another search path, an extended
            # point no longer needed) must not mix in: the list starts again; what is visited is checked one by one
            self.points = []
            self.on_event("note", why=f"the server's version changed ({self.listed_version} -> {self.server_version}): "
                                      "points measured on the old one are not read; each is measured again when needed")
        elif self.server_version is None and self.points:
            self.on_event("note", why="the server did not say its version (no /version or server info): points on disk "
                                      "are reused without a version check")

    def run(self) -> dict:
        spec = self.spec
        self._doc("running")
        searches: list[dict] = []
        status, error = "complete", None
        try:
            self._version_now()
            self._start_sim()
            for serve in spec.target.launch.configs() if spec.target.launch is not None else [None]:
                if serve is None:
                    self._measure_all(searches)
                    continue
                self.serve = serve  # started when its first point needs measuring: a resumed sweep skips finished configs
                self.server_version = None  # known once this config's server starts: points reused before are not checked
                try:
                    self._measure_all(searches)
                    if self.server is not None:
                        self.servers[-1]["status"] = "complete"
                except ServerFailed as e:  # this serve config could not be measured: the next one is
                    self.servers[-1].update(status="failed", error=str(e))
                    self.on_event("note", why=f"serve config {config_label(serve) or '(default)'} failed: {e}")
                finally:
                    self._stop_server()
            failed = [x for x in self.servers if x["status"] == "failed"]
            if failed:
                status = "failed"
                error = "; ".join(f"{x['config'] or 'default'}: {x['error']}" for x in failed)
        except (Interrupted, KeyboardInterrupt):
            status = "interrupted"
        except Exception as e:  # e.g. the target is unreachable: the sweep did not measure what it set out to
            from bench.runner import one_line

            status, error = "failed", one_line(e)
            raise
        finally:
            self.prompts.close()
            self._stop_server()
            if self.sim_proc is not None:
                import subprocess

                self.sim_proc.terminate()
                try:
                    self.sim_proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.sim_proc.kill()
                    self.sim_proc.wait(10)
            self._doc(status, {"searches": searches, "measured": self.measured, "skipped": self.skipped, "error": error})
        return {"status": status, "dir": self.dir, "measured": self.measured, "skipped": self.skipped, "searches": searches,
                "servers": self.servers, "error": error}

    def _measure_all(self, searches: list[dict]) -> None:
        spec = self.spec
        for ci, _cell in enumerate(spec.cells):
            for rep in range(spec.repeats):
                if spec.load.auto is not None:
                    searches.append({"cell": ci, "repeat": rep, **({"serve": self.serve} if self.serve is not None else {}),
                                     **self._search(ci, rep)})
                elif spec.load.stages is not None:  # one staged open loop per cell; its value is the peak rate
                    self.measure(ci, "stages", max(st.qps for st in spec.load.stages), rep)
                else:
                    values = spec.load.qps if spec.load.qps is not None else spec.load.concurrency or []
                    mode = "qps" if spec.load.qps is not None else "concurrency"
                    for v in values:
                        self.measure(ci, mode, v, rep)

    # ------------------------------------------------------------------ launched servers (target.launch)
    def _start_server(self, serve: dict) -> None:
        launch = self.spec.target.launch
        assert launch is not None
        self.server = LaunchedServer(launch, serve, self.dir / "servers" / config_hash(launch.cmd, serve))
        self.servers = [x for x in self.servers if x["params"] != serve]  # a rerun's start replaces that config's record
        self.servers.append({"config": config_label(serve), "params": serve, "status": "starting"})
        self.on_event("note", why=f"starting the server for serve config {config_label(serve) or '(default)'}")
        try:
            self.url = self.server.start()
        except LaunchError as e:
            raise ServerFailed(str(e)) from None
        finally:
            self.servers[-1].update(self.server.record())
        self.servers[-1]["status"] = "running"
        self.server_version = self.server.version  # this config's later points on disk are checked against it
        self._doc("running")

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.servers[-1].update(self.server.record())
            self.server = None

    def _server_died(self, pdir: Path, key: dict) -> None:
        """The launched server exited during a point: its attempt is kept aside (superseded, never read as a
        result), the server is started again (target.launch.restarts times) and the caller measures the point
        again; past the restarts the serve config is failed."""
        from bench import results

        assert self.server is not None and self.server.proc is not None
        launch = self.spec.target.launch
        assert launch is not None
        rc, tail = self.server.proc.returncode, self.server.log_tail()
        deaths = self.servers[-1].setdefault("deaths", [])
        deaths.append({"point": point_hash(key), "exit_status": rc, "log_tail": tail, "at": time.time()})
        kept = pdir.with_name(f"{pdir.name}.server-died-{len(deaths)}")
        if (pdir / "run.json").is_file():
            doc = results.read_run_doc(pdir)
            doc.update(superseded_by=point_hash(key), status="failed", error=f"the launched server exited (status {rc}) during this point")
            results.write_run_doc(pdir, doc)
            pdir.rename(kept)
        self.on_event("note", why=f"the server exited (status {rc}) during a point; its attempt is kept in {kept.name}")
        if len(deaths) > launch.restarts:
            raise ServerFailed(f"the server exited {len(deaths)} times (status {rc}); last log lines:\n{tail}")
        self.server.stop()
        try:
            self.url = self.server.start()
        except LaunchError as e:
            raise ServerFailed(str(e)) from None
        self.servers[-1].update(self.server.record())
        self.on_event("note", why="server restarted: measuring the point again")

    def _search(self, ci: int, rep: int) -> dict:
        spec = self.spec
        assert spec.load.auto is not None
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
                self.supersede(point_key(spec, ci, mode, value, rep, seed_off, role=role, serve=self.serve),
                               point_key(spec, ci, mode, value, rep, seed_off + 100, role=role, serve=self.serve))
                continue  # client was unhealthy: measure again, never count it as a FAIL
            if v == INVALID:
                v, why = INCONCLUSIVE, f"{why} (twice): undecided"
            invalid = 0
            self.on_event("verdict", key={"mode": mode, "value": value}, role=role, verdict=v, why=why)
            try:
                probe = gen.send((v, s))
            except StopIteration as e:
                return e.value
