"""⑧ Console rendering of a point summary (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table


def _f(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:,.{nd}f}"


def print_summary(doc: dict, console: Console | None = None) -> None:
    c = console or Console()
    s = doc.get("summary") or {}
    tgt = doc.get("target") or {}
    sim = " [bold magenta](SIMULATED server)[/]" if tgt.get("simulated") else ""
    c.print(f"[bold]{doc.get('run_id')}[/] — {tgt.get('model', '?')} @ {tgt.get('url', '?')} "
            f"({tgt.get('server_kind', '?')} {tgt.get('server_version') or ''}){sim}  status: [bold]{doc.get('status')}[/]")
    if doc.get("error"):
        c.print(f"[red]{doc['error']}[/]")
    if not s:
        return
    lat = s.get("latency_ms", {})
    t = Table(title="latency (ms, from the scheduled send)", title_justify="left")
    for col in ("metric", "n", "mean", "p50", "p90", "p95", "p99", "p99 95% CI"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    names = {"ttft": "TTFT", "ttft_from_send": "TTFT (from send)", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E", "send_lag": "send lag"}
    for k, label in names.items():
        d = lat.get(k)
        if not d:
            continue
        lo, hi = (d.get("p99_ci") or [None, None])
        t.add_row(label, str(d["n"]), _f(d["mean"], 2), _f(d["p50"], 2), _f(d["p90"], 2), _f(d["p95"], 2), _f(d["p99"], 2),
                  f"[{_f(lo, 2)}, {_f(hi, 2)}]")
    c.print(t)
    c.print(f"window {_f(s.get('window_s'), 1)} s · requests {s['n_ok']}/{s['n_measured']} ok (+{s['n_warmup']} warmup) · "
            f"{_f(s.get('request_throughput'), 2)} req/s · output {_f(s.get('output_tps'), 1)} tok/s · "
            f"total {_f(s.get('total_tps'), 1)} tok/s · interactivity p50 {_f(s.get('interactivity_p50'), 1)} tok/s/user")
    if s.get("offered_qps"):
        c.print(f"offered {s['offered_qps']:g} req/s · achieved send rate {_f(s.get('achieved_send_qps'), 2)} req/s · "
                f"mean in flight {_f(s.get('mean_in_flight'), 1)}")
    for d in s.get("per_stage") or []:
        ask = f"{d['qps']:g} req/s" if d["qps"] is not None else "{:g}→{:g} req/s".format(*d["qps_from_to"])
        c.print(f"stage {d['stage']}: {d['start_s']:g}-{d['start_s'] + d['duration_s']:g} s at {ask} · sent {d['sent']} "
                f"({_f(d['realised_qps'], 2)} req/s; {d['expected_requests']:.0f} expected) · measured {d['ok']}/{d['measured']} ok · "
                f"TTFT p50 {_f(d['ttft']['p50'], 1)} ms · p99 {_f(d['ttft']['p99'], 1)} ms")
    for t, d in (s.get("per_turn") or {}).items():
        c.print(f"turn {t}: {d['n']} requests · TTFT p50 {_f(d['ttft']['p50'], 1)} ms · p99 {_f(d['ttft']['p99'], 1)} ms · "
                f"mean prompt {_f(d['prompt_tokens_mean'], 0)} tokens")
    if s.get("sessions"):
        ss = s["sessions"]
        c.print(f"sessions: {ss['n']} ({ss['complete']} complete) · {ss['turns_mean']:.1f} turns on average · duration p50 "
                f"{_f(ss['duration_s']['p50'], 1)} s · p90 {_f(ss['duration_s']['p90'], 1)} s")
    w = doc.get("workload") or {}
    if w.get("dataset"):
        c.print(f"dataset {w['dataset']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in w.items()
                                                        if k not in ("dataset", "tokenizer") and v not in (None, 0)))
    if s.get("errors"):
        c.print("[red]errors:[/] " + ", ".join(f"{k}={v}" for k, v in s["errors"].items()))
    if s.get("slos"):
        parts = [f"{v['slo']} {_f(v['value_ms'], 1)}/{v['threshold_ms']:g} ms {'[green]met[/]' if v['met'] else '[red]missed[/]'}"
                 for v in s["slos"]]
        c.print("SLOs: " + " · ".join(parts) + f" · goodput {_f(s.get('goodput_rps'), 2)} req/s "
                f"(attainment {_f(100 * (s.get('attainment') or 0), 1)}%)")
    e = s.get("energy")
    if e:
        c.print(f"energy ({e.get('source')}): {_f(e.get('energy_j'), 1)} J · avg {_f(e.get('avg_power_w'), 1)} W · "
                f"{_f(e.get('j_per_output_token'), 3)} J/output token")
    sv = s.get("server")
    if sv:
        c.print(f"server ({sv.get('engine')}): running mean {_f(sv.get('running_mean'))} · max waiting {_f(sv.get('waiting_max'), 0)} · "
                f"KV max {_f(100 * (sv.get('kv_usage_max') or 0))}% · preemptions {_f(sv.get('preemptions'), 0)} · "
                f"prefix hit {_f(100 * sv['prefix_cache_hit_rate']) + '%' if sv.get('prefix_cache_hit_rate') is not None else '—'}"
                + (f" · client−server TTFT mean {_f(lat['ttft']['mean'] - sv['server_ttft_mean_ms'], 2)} ms" if sv.get("server_ttft_mean_ms") else ""))
    for n in (doc.get("telemetry") or {}).get("notices", []):
        c.print(f"[dim]note: {n}[/]")
    for w in s.get("warnings", []):
        c.print(f"[yellow]warning:[/] {w}")


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:+.1f}%"


_COLOUR = {"worse": "red", "better": "green", "undecided": "yellow"}


def print_compare(res: dict, title: str, cm, c: Console) -> None:
    """compare.compare's result: intended differences, every check with its samples and interval, the knees,
    the cost at each knee (with the load it is priced at), and which regression rules fired."""
    from bench.compare import check_label
    from bench.cost import GPUS_UNKNOWN, cost_at_knee, find_sku, gpus_known, load_catalog
    from bench.knee import fmt

    thr = res["threshold"]
    for e in res["env"]:
        c.print(f"[cyan]differs (compared for):[/] {e['field']}: {e['base']}  →  {e['new']}")
    for e in res["mismatch"]:
        c.print(f"[red]setup differs (--allow-mismatch):[/] {e['field']}: {e['base']}  →  {e['new']}")
    if res.get("interrupted"):
        c.print(f"[yellow]INTERRUPTED points included (read as measured, never a PASS):[/] {'; '.join(res['interrupted'])}")
    rows = res["rows"].to_dict("records") if len(res["rows"]) else []
    if res.get("single_run"):
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
        side = {s: "none" if k.get(f"{s}_row") and not k[f"{s}_row"].get("feasible") else fmt(k[s], 2) for s in ("base", "new")}
        c.print(f"knee {k['cell']} ({k['unit']}): {side['base']} → {side['new']} ({_pct(k['delta'])}) — "
                + (f"[{col}]{k['verdict']}[/]" if col else k["verdict"]) + f": {k['why']}")
        for which in ("base_row", "new_row"):
            row = k.get(which)
            if not row or not row.get("feasible"):
                continue
            sku = find_sku(cat, row.get("gpu") or "")
            at = f"at knee {fmt(row['knee'], 2)} {k['unit']} ({fmt(row.get('knee_qps'), 2)} req/s, {fmt(row.get('output_tps'))} out tok/s measured)"
            if sku is None:
                c.print(f"   {row['sweep']}: no cost — no SKU in the catalog for GPU label '{row.get('gpu') or ''}'")
            elif not gpus_known(row):
                c.print(f"   {row['sweep']} ({row['gpu']}) {at}: no $/M — {GPUS_UNKNOWN}")
            else:
                x = cost_at_knee(row, sku, cm)
                c.print(f"   {row['sweep']} ({row['gpu']}, {x['gpus_per_replica']:g} GPUs/replica) {at}: ${x['usd_per_gpu_hour']:.2f}/GPU-h → "
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
