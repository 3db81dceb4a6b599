"""⑧ Console rendering of a point summary (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from bench.summary import RunDoc


def _f(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:,.{nd}f}"


def print_summary(run_doc: dict | RunDoc, console: Console | None = None) -> None:
    c = console or Console()
    doc = run_doc if isinstance(run_doc, RunDoc) else RunDoc.model_validate(run_doc)
    tgt = doc.target
    sim = " [bold magenta](SIMULATED server)[/]" if tgt.simulated else ""
    c.print(f"[bold]{doc.run_id}[/] — {tgt.model or '?'} @ {tgt.url or '?'} "
            f"({tgt.server_kind or '?'} {tgt.server_version or ''}){sim}  status: [bold]{doc.status}[/]")
    if doc.error:
        c.print(f"[red]{doc.error}[/]")
    s = doc.summary
    if s is None:
        return
    lat = s.latency_ms
    t = Table(title="latency (ms, from the scheduled send)", title_justify="left")
    for col in ("metric", "n", "mean", "p50", "p90", "p95", "p99", "p99 95% CI"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    names = {"ttft": "TTFT", "ttft_from_send": "TTFT (from send)", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E", "send_lag": "send lag"}
    for k, label in names.items():
        d = lat.get(k)
        if d is None:
            continue
        lo, hi = (d.p99_ci + [None, None])[:2]
        t.add_row(label, str(d.n), _f(d.mean, 2), _f(d.p50, 2), _f(d.p90, 2), _f(d.p95, 2), _f(d.p99, 2), f"[{_f(lo, 2)}, {_f(hi, 2)}]")
    c.print(t)
    c.print(f"window {_f(s.window_s, 1)} s · requests {s.n_ok}/{s.n_measured} ok (+{s.n_warmup} warmup) · "
            f"{_f(s.request_throughput, 2)} req/s · output {_f(s.output_tps, 1)} tok/s · "
            f"total {_f(s.total_tps, 1)} tok/s · interactivity p50 {_f(s.interactivity_p50, 1)} tok/s/user")
    if s.offered_qps:
        c.print(f"offered {s.offered_qps:g} req/s · achieved send rate {_f(s.achieved_send_qps, 2)} req/s · "
                f"mean in flight {_f(s.mean_in_flight, 1)}")
    if s.client.auto_why:
        c.print(f"client: --workers {s.client.auto_why}")
    if s.client.workers > 1:
        cl = s.client
        c.print(f"client: {cl.workers} worker processes, {'/'.join(map(str, cl.per_worker_requests))} requests · worst send lag p99 "
                f"{_f(cl.worst_send_lag_p99_ms, 2)} ms (worker {cl.worst_worker})")
    cq = s.client_queue
    if cq.waited or cq.not_sent:
        c.print(f"client queue: {cq.waited} requests waited for one of {cq.cap} in-flight slots ({cq.cap_from} cap; wait p50 "
                f"{_f(cq.wait_ms.p50, 0)} ms, p99 {_f(cq.wait_ms.p99, 0)} ms)" + (f"; {cq.not_sent} due were never sent" if cq.not_sent else ""))
    for st in s.per_stage:
        c.print(f"stage {st.stage}: {st.start_s:g}-{st.start_s + st.duration_s:g} s at {st.rate} req/s · sent {st.sent} "
                f"({_f(st.realised_qps, 2)} req/s; {st.expected_requests:.0f} expected) · measured {st.ok}/{st.measured} ok · "
                f"TTFT p50 {_f(st.ttft.p50, 1)} ms · p99 {_f(st.ttft.p99, 1)} ms")
    for name, pm in s.per_model.items():
        c.print(f"model {name}: {pm.measured} requests ({_f(100 * (pm.share or 0), 0)}%, weight {_f(100 * pm.weight, 0)}%) · "
                f"{pm.ok} ok · TTFT p50 {_f(pm.ttft.p50, 1)} ms · p99 {_f(pm.ttft.p99, 1)} ms · TPOT p50 {_f(pm.tpot.p50, 2)} ms")
    for url, pe in s.per_endpoint.items():
        c.print(f"replica {pe.endpoint} {url}: {pe.measured} requests ({_f(100 * (pe.share or 0), 0)}%) · {pe.ok} ok · "
                f"TTFT p50 {_f(pe.ttft.p50, 1)} ms · p99 {_f(pe.ttft.p99, 1)} ms · TPOT p50 {_f(pe.tpot.p50, 2)} ms")
    for turn, tr in s.per_turn.items():
        c.print(f"turn {turn}: {tr.n} requests · TTFT p50 {_f(tr.ttft.p50, 1)} ms · p99 {_f(tr.ttft.p99, 1)} ms · "
                f"mean prompt {_f(tr.prompt_tokens_mean, 0)} tokens" +
                (f" · {100 * tr.cached_fraction:.0f}% of it from the server's prefix cache" if tr.cached_fraction is not None else ""))
    if s.prompt_cache is not None:
        pc = s.prompt_cache
        c.print(f"prompt cache (the server's usage.prompt_tokens_details): {_f(100 * (pc.cached_fraction or 0), 1)}% of prompt tokens "
                f"cached · {pc.hit_requests} of {pc.requests} requests hit")
    if s.sessions is not None and s.sessions.n:
        ss = s.sessions
        c.print(f"sessions: {ss.n} ({ss.complete} complete) · {ss.turns_mean:.1f} turns on average · duration p50 "
                f"{_f(ss.duration_s.p50, 1)} s · p90 {_f(ss.duration_s.p90, 1)} s")
    w = doc.workload
    if w.dataset:
        c.print(f"dataset {w.dataset}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in w.model_dump().items()
                                                     if k not in ("dataset", "tokenizer") and v not in (None, 0)))
    if s.errors:
        c.print("[red]errors:[/] " + ", ".join(f"{k}={v}" for k, v in s.errors.items()))
    if s.slos:
        parts = [f"{v.slo} {_f(v.value_ms, 1)}/{v.threshold_ms:g} ms {'[green]met[/]' if v.met else '[red]missed[/]'}" for v in s.slos]
        c.print("SLOs: " + " · ".join(parts) + f" · goodput {_f(s.goodput_rps, 2)} req/s "
                f"(attainment {_f(100 * (s.attainment or 0), 1)}%)")
    e = s.energy
    if e.source or e.energy_j is not None:
        c.print(f"energy ({e.source}): {_f(e.energy_j, 1)} J · avg {_f(e.avg_power_w, 1)} W · "
                f"{_f(e.j_per_output_token, 3)} J/output token")
    sv = s.server
    if sv is not None:
        ttft_mean = s.lat("ttft", "mean")
        c.print(f"server ({sv.engine}): running mean {_f(sv.running_mean)} · max waiting {_f(sv.waiting_max, 0)} · "
                f"KV max {_f(100 * (sv.kv_usage_max or 0))}% · preemptions {_f(sv.preemptions, 0)} · "
                f"prefix hit {_f(100 * sv.prefix_cache_hit_rate) + '%' if sv.prefix_cache_hit_rate is not None else '—'}"
                + (f" · client−server TTFT mean {_f(ttft_mean - sv.server_ttft_mean_ms, 2)} ms"
                   if sv.server_ttft_mean_ms and ttft_mean is not None else ""))
    for n in doc.telemetry.notices:
        c.print(f"[dim]note: {n}[/]")
    for warning in s.warnings:
        c.print(f"[yellow]warning:[/] {warning.text}")


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:+.1f}%"


_COLOUR = {"worse": "red", "better": "green", "undecided": "yellow"}


def print_compare(res: dict, title: str, cm, c: Console) -> None:
    """compare.compare's result: intended differences, every check with its samples and interval, the knees,
    the cost at each knee (with the load it is priced at), and which regression rules fired."""
    from bench.compare import check_label
    from bench.cost import GPUS_UNKNOWN, cost_at_knee, find_sku, load_catalog
    from bench.knee import KneeRow, fmt

    thr = res["threshold"]
    for e in res["env"]:
        c.print(f"[cyan]differs (compared for):[/] {e['field']}: {e['base']}  →  {e['new']}")
    for e in res["mismatch"]:
        c.print(f"[red]setup differs (--allow-mismatch):[/] {e['field']}: {e['base']}  →  {e['new']}")
    if res["interrupted"]:
        c.print(f"[yellow]INTERRUPTED points included (read as measured, never a PASS):[/] {'; '.join(res['interrupted'])}")
    rows = res["rows"].to_dict("records") if len(res["rows"]) else []
    if res["single_run"]:
        c.print("[yellow]one run per side:[/] the latency intervals cover request-to-request variation, not a server's run-to-run "
                "drift (back-to-back runs of one server can differ by more than 10%); for a gate, run `repeats: 3` "
                "and keep the threshold above the drift your servers show")
    if rows:
        t = Table(title=f"{title} (threshold ±{thr:.0%}; latency over successful requests; 95% intervals: bootstrap over requests/runs, Newcombe, Welch t)",
                  title_justify="left")
        for col in ("cell", "load", "check", "base", "new", "delta", "95% CI", "n base/new", "verdict", "why"):
            t.add_column(col)
        for r in rows:
            unit = "req/s" if r["mode"] == "qps" else "conc"
            err = r["rule"] == "errors"
            val = (lambda x: f"{100 * x:.2f}%") if err else (lambda x: fmt(x, 2))
            delta = f"{100 * r['delta']:+.2f} pts" if err and math.isfinite(r["delta"]) else _pct(r["delta"])
            ci = (f"[{100 * r['ci_lo']:+.2f}, {100 * r['ci_hi']:+.2f}] pts" if err else f"[{_pct(r['ci_lo'])}, {_pct(r['ci_hi'])}]") \
                if isinstance(r["ci_lo"], float) and math.isfinite(r["ci_lo"]) else "—"
            col = _COLOUR.get(r["verdict"], "")
            t.add_row(r["cell"], f"{r['load']:g} {unit}", r["metric"] + (" (SLO)" if r["slo_relevant"] and r["rule"] == "latency" else ""),
                      val(r["base"]), val(r["new"]), delta, ci, f"{r['n_base']}/{r['n_new']}" + (" runs" if r["rule"] == "throughput" else ""),
                      f"[{col}]{r['verdict']}[/]" if col else r["verdict"], r["why"])
        c.print(t)
    else:
        c.print("no offered load was measured on both sides (adaptive searches probe different loads): latency, error-rate and "
                "throughput checks need a grid sweep such as sweeps/vllm-regression.yaml; knees are compared below")
    cat = load_catalog()
    for k in res["knees"]:
        col = _COLOUR.get(k["verdict"], "")
        rows_of = {s: KneeRow.of(k[f"{s}_row"]) if k[f"{s}_row"] else None for s in ("base", "new")}
        side = {s: "none" if r is not None and not r.feasible else fmt(k[s], 2) for s, r in rows_of.items()}
        c.print(f"knee {k['cell']} ({k['unit']}): {side['base']} → {side['new']} ({_pct(k['delta'])}) — "
                + (f"[{col}]{k['verdict']}[/]" if col else k["verdict"]) + f": {k['why']}")
        for row in rows_of.values():
            if row is None or not row.feasible:
                continue
            sku = find_sku(cat, row.gpu)
            at = f"at knee {fmt(row.knee, 2)} {k['unit']} ({fmt(row.knee_qps, 2)} req/s, {fmt(row.output_tps)} out tok/s measured)"
            if sku is None:
                c.print(f"   {row.sweep}: no cost — no SKU in the catalog for GPU label '{row.gpu}'")
            elif not row.gpus_known:
                c.print(f"   {row.sweep} ({row.gpu}) {at}: no $/M — {GPUS_UNKNOWN}")
            else:
                x = cost_at_knee(row, sku, cm)
                c.print(f"   {row.sweep} ({row.gpu}, {x['gpus_per_replica']:g} GPUs/replica) {at}: ${x['usd_per_gpu_hour']:.2f}/GPU-h → "
                        f"${x['usd_per_m_output']:.3f}/M output, ${x['usd_per_m_blended']:.3f}/M blended, "
                        f"${x['usd_per_1k_requests']:.4f}/1k requests ({cm.pricing}, utilisation {cm.utilization:.0%})")
    for r in res["regressions"]:
        c.print(f"[red]REGRESSION[/] {check_label(r)} — {r['why']}")
    if not res["regressions"]:
        und = res["undecided"]
        msg = f"[green]no regression beyond {thr:.0%}[/] among the decided checks"
        if und:
            rules = sorted({r["rule"] for r in und})
            msg += (f"; {len(und)} undecided ({', '.join(rules)}) — not a pass for those: "
                    + "; ".join(sorted({f"{r['metric']}: {r['why']}" for r in und})[:6]))
        c.print(msg)


def print_knees(c: Console, df, knees, stages: list[dict]) -> None:
    """`trilemma knee`: the per-stage table of staged points, the knee table, and what binds each knee."""
    from bench.knee import fmt

    sim = " — SIMULATED server" if df["simulated"].any() else ""
    if stages:
        st = Table(title=f"Staged loads, per stage{sim} (the stages share one queue: no knee)", title_justify="left")
        for col in ("sweep", "cell", "stage", "from s", "for s", "req/s asked", "sent (expected)", "realised req/s", "ok/measured",
                    "TTFT p50", "TTFT p99", "E2E p50", "E2E p99"):
            st.add_column(col)
        for r in stages:
            st.add_row(r["sweep"], r["cell"], str(r["stage"]), fmt(r["start_s"]), fmt(r["duration_s"]), r["qps"],
                       f"{r['sent']} ({fmt(r['expected'])})", fmt(r["realised_qps"], 2), f"{r['ok']}/{r['measured']}",
                       fmt(r["ttft_p50"]), fmt(r["ttft_p99"]), fmt(r["e2e_p50"]), fmt(r["e2e_p99"]))
        c.print(st)
    if knees.empty:  # staged points only
        return
    t = Table(title=f"SLO knee per cell{sim}", title_justify="left")
    for col in ("sweep", "cell", "knee", "bracket", "binding SLO", "req/s", "conc.", "out tok/s", "total tok/s", "tok/s/user",
                "TTFT p99", "ITL p99", "attainment (95% CI)"):
        t.add_column(col)
    for r in knees.itertuples():
        unit = "req/s" if r.mode == "qps" else "conc"
        if not r.feasible:
            t.add_row(r.sweep, r.cell, "[red]none[/]", "", "", "", "", "", "", "", "", "", r.note)
            continue
        t.add_row(r.sweep, r.cell, f"{fmt(r.knee, 2)} {unit}", r.bracket, str(r.binding_slo), fmt(r.knee_qps, 2), fmt(r.knee_concurrency, 1),
                  fmt(r.output_tps), fmt(r.total_tps), fmt(r.interactivity), fmt(r.ttft_p99), fmt(r.itl_p99),
                  f"{fmt(100 * r.attainment)}% [{fmt(100 * r.attainment_lo)}, {fmt(100 * r.attainment_hi)}]")
    c.print(t)
    for r in knees.itertuples():
        if r.feasible and getattr(r, "bottleneck", None):
            c.print(f"binds: {r.sweep} / {r.cell}: [bold]{r.bottleneck}[/] — {r.bottleneck_evidence}; would move it: {r.bottleneck_remedy}",
                    highlight=False)
        if r.feasible and r.note:
            c.print(f"[yellow]note:[/] {r.sweep} / {r.cell}: {r.note}")


class SweepProgress:
    """`trilemma sweep`'s running commentary: each point as it starts, is reused, is measured and judged."""

    def __init__(self, c: Console):
        import time

        self.c, self.t0, self.n = c, time.time(), 0

    def __call__(self, kind: str, key: dict | None = None, role: str | None = None, summary=None, verdict: str | None = None,
                 why: str | None = None) -> None:
        import time

        el = time.time() - self.t0
        if kind == "start" and key is not None:
            self.n += 1
            what = ("stages " + ",".join(f"{st['qps']:g}:{st['duration_s']:g}" for st in key["stages"]) if "stages" in key
                    else f"{key['mode']}={key['value']:g}")
            self.c.print(f"[dim]{el:6.0f}s[/] point {self.n}: {key['cell']['name'] or ''} {what} ({role}) ...")
        elif kind == "skip" and key is not None:
            self.c.print(f"[dim]{el:6.0f}s   already measured: {key['mode']}={key['value']:g} ({role}) — skipped[/]")
        elif kind == "note":
            self.c.print(f"[dim]{el:6.0f}s   {why}[/]")
        elif kind == "done":
            pr = summary.probe
            self.c.print(f"[dim]{el:6.0f}s   {summary.n_measured} requests measured over {summary.window_s or 0:.1f} s "
                         f"after {pr.warmup_s or 0:.1f} s warmup; stopped: {pr.stopped or '?'}"
                         f"{' — ' + pr.why if pr.why else ''}[/]")
        elif kind == "verdict" and key is not None:
            col = {"PASS": "green", "FAIL": "red"}.get(verdict or "", "yellow")
            label = "UNDECIDED" if verdict == "INCONCLUSIVE" else verdict
            self.c.print(f"[dim]{el:6.0f}s[/]   [{col}]{label}[/] {key['mode']}={key['value']:.3g}: {why}")



def print_calibration(c: Console, rows: list[dict], safe: float | None, title: str) -> None:
    """`trilemma calibrate`: one ladder's bias table and the safe rate it found."""
    t = Table(title=title, title_justify="left")
    for col in ("offered/s", "achieved/s", "TTFT bias p50", "p99", "ITL bias p50", "p99", "send lag p50", "p99", "client CPU",
                "multi-tok chunks", "exact"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{r['offered_qps']:g}", f"{r['achieved_qps']:.1f}", f"{r['ttft_bias_p50']:.3f} ms", f"{r['ttft_bias_p99']:.3f}",
                  f"{r['itl_bias_p50']:.3f} ms", f"{r['itl_bias_p99']:.3f}", f"{r['send_lag_p50']:.3f} ms", f"{r['send_lag_p99']:.3f}",
                  f"{r['client_cpu_pct']:.0f}%", f"{r['multi_token_chunks']:.0f}", "yes" if r["tokens_exact"] else "NO")
    c.print(t)
    c.print(f"safe operating range of this client: up to [bold]{safe:g} req/s[/] (TTFT bias p50 < 1 ms)" if safe
            else "[red]even the lowest rate shows > 1 ms bias: this client machine is too loaded for latency measurements[/]")


def print_scaling(c: Console, table: list[dict], top: float) -> None:
    """`trilemma calibrate --workers 1,2,4`: the safe rate per client-process count (calibrate.scaling_table)."""
    t = Table(title=f"client scaling (safe rate: TTFT bias p50 < 1 ms with exact tokens; ladder tops at {top:g} req/s, "
                    f"where a safe rate is only a lower bound)", title_justify="left")
    for col in ("workers", "safe req/s", "safe chunks/s", "efficiency vs 1"):
        t.add_column(col, justify="right")
    for r in table:
        ge = "≥ " if r["capped"] else ""
        t.add_row(str(r["workers"]), f"{ge}{r['safe_qps']:g}" if r["safe_qps"] else "none",
                  f"{ge}{r['safe_chunks_per_s']:,.0f}" if r["safe_chunks_per_s"] else "-",
                  ("≥ " if r["efficiency_is_lower_bound"] else "") + f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-")
    c.print(t)
    if table[0]["workers"] == 1 and table[0]["capped"]:
        c.print(f"one process is still safe at the ladder's top ({top:g} req/s): raise --rates until it is not, "
                "or no efficiency can be measured")
