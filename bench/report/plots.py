"""⑧ Knee plots (matplotlib, PNG + SVG) from point tables: latency vs load with SLO lines and the knee,
throughput vs latency, throughput per GPU vs interactivity (Pareto), achieved vs offered rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})
    return plt


def _save(fig, out: Path, name: str) -> list[Path]:
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    return paths


def _series(df: pd.DataFrame):
    """(label, color, frame) per sweep x cell, rate-axis points only, sorted by load, repeats averaged."""
    q = df[(df["mode"] == "qps") & (df["role"] != "baseline")]
    keys = list(dict.fromkeys(zip(q["sweep"], q["cell"])))
    multi_sweep = q["sweep"].nunique() > 1
    for i, (sw, cell) in enumerate(keys):
        g = q[(q["sweep"] == sw) & (q["cell"] == cell)].groupby("load", as_index=False).mean(numeric_only=True).sort_values("load")
        label = f"{sw} · {cell}" if multi_sweep else cell
        yield label, COLORS[i % len(COLORS)], g, sw, cell


def plot_all(df: pd.DataFrame, knees: pd.DataFrame, out: Path, slo_lines: dict[str, float] | None = None) -> list[Path]:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    slo_lines = slo_lines or {}
    files: list[Path] = []
    if (df["mode"] == "stages").all():  # staged runs only: their per-stage table is the result, no load axis
        return files
    sim = " (SIMULATED)" if df["simulated"].any() else ""

    # 1. latency vs offered load, at the percentile each SLO names (p99 where no SLO names one)
    def col(metric: str) -> str:
        pct = next((n.split("_p")[1] for n in slo_lines if n.startswith(metric + "_p")), "99")
        c = f"{metric}_p{pct}"
        return c if c in df else f"{metric}_p99"

    ttft_c = col("ttft")
    tail_metric = "tpot" if any(n.startswith("tpot") for n in slo_lines) else "itl"
    tail_c = col(tail_metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, color, g, sw, cell in _series(df):
        axes[0].plot(g["load"], g[ttft_c], "o-", color=color, label=f"{label} {ttft_c.split('_')[1]}")
        axes[0].plot(g["load"], g["ttft_p50"], "o--", color=color, alpha=0.5, label=f"{label} p50")
        axes[1].plot(g["load"], g[tail_c], "o-", color=color, label=f"{label} {tail_c.replace('_', ' ').upper()}")
        other = "tpot_p50" if tail_metric == "itl" else "itl_p50"
        axes[1].plot(g["load"], g[other], "s--", color=color, alpha=0.5, label=f"{label} {other.replace('_', ' ').upper()}")
        k = knees[(knees["sweep"] == sw) & (knees["cell"] == cell) & (knees["mode"] == "qps")]
        if len(k) and k["feasible"].iloc[0]:
            hi = k["bracket_hi"].iloc[0]
            for ax in axes:
                ax.axvline(k["knee"].iloc[0], color=color, ls=":", lw=1.5)
                if hi is not None and hi == hi:  # the bracket: loads between the knee and the first failing one
                    ax.axvspan(k["knee"].iloc[0], hi, color=color, alpha=0.08)
            axes[0].annotate(f"knee {k['knee'].iloc[0]:.2f}", (k["knee"].iloc[0], axes[0].get_ylim()[0]), color=color, fontsize=8,
                             rotation=90, va="bottom", ha="right")
    for ax, metric, title in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "itl", "ITL / TPOT (ms)")):
        for name, thr in slo_lines.items():
            if name.startswith(metric) or (metric == "itl" and name.startswith("tpot")):
                ax.axhline(thr, color="k", ls="--", lw=1)
                ax.text(ax.get_xlim()[0], thr, f" SLO {name} {thr:g} ms", va="bottom", fontsize=8)
        ax.set_xlabel("offered load (req/s)")
        ax.set_ylabel(title)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(f"Latency vs offered load{sim} — dotted lines: SLO knee, shaded: its bracket")
    files += _save(fig, out, "latency_vs_load")
    plt.close(fig)

    # 2. throughput vs latency, and the Pareto view
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, color, g, sw, cell in _series(df):
        axes[0].plot(g["ttft_p99"], g["output_tps"], "o-", color=color, label=label)
        axes[1].plot(g["interactivity"], g["output_tps"] / g["gpus"], "o-", color=color, label=label)
        k = knees[(knees["sweep"] == sw) & (knees["cell"] == cell) & (knees["mode"] == "qps")]
        if len(k) and k["feasible"].iloc[0]:
            axes[1].plot(k["interactivity"], k["output_tps_per_gpu"], "*", ms=14, color=color, mec="k")
    axes[0].set_xlabel("TTFT p99 (ms)")
    axes[0].set_ylabel("output tok/s")
    axes[0].set_xscale("log")
    axes[0].set_title("Throughput vs latency")
    axes[1].set_xlabel("interactivity = 1000 / TPOT p50 (tok/s/user)")
    axes[1].set_ylabel("output tok/s per GPU")
    axes[1].set_title("Throughput per GPU vs interactivity (★ = SLO knee)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"Throughput trade-offs{sim}")
    files += _save(fig, out, "throughput_pareto")
    plt.close(fig)

    # 3. achieved vs offered
    fig, ax = plt.subplots(figsize=(5.5, 4))
    hi = 0.0
    for label, color, g, sw, cell in _series(df):
        ax.plot(g["load"], g["request_throughput"], "o-", color=color, label=label)
        hi = max(hi, g["load"].max())
    ax.plot([0, hi], [0, hi], "k--", lw=1, label="achieved = offered")
    ax.set_xlabel("offered (req/s)")
    ax.set_ylabel("completed (req/s)")
    ax.set_title(f"Achieved vs offered rate{sim}\n(flattening = saturation)")
    ax.legend(fontsize=7)
    files += _save(fig, out, "achieved_vs_offered")
    plt.close(fig)
    return files


def plot_cost_energy(knees: pd.DataFrame, out: Path) -> list[Path]:
    """Bars: $/M output tokens and blended $/M at the SLO knee; J/output token and average power."""
    plt = _plt()
    k = knees[knees["feasible"]].copy()
    files: list[Path] = []
    if k.empty:
        return files
    labels = [f"{r.sweep}\n{r.cell}" for r in k.itertuples()]
    colors = [COLORS[i % len(COLORS)] for i in range(len(k))]
    sim = " (SIMULATED)" if k["simulated"].any() else ""
    has = k["usd_per_m_output"].notna().to_numpy() if "usd_per_m_output" in k else None
    if has is not None and has.any():  # rows without a price (GPUs per replica unknown, no SKU) are left out, not drawn as 0
        kp = k[has]
        lp = [lab for lab, h in zip(labels, has) if h]
        cp = [c for c, h in zip(colors, has) if h]
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, col, title in ((axes[0], "usd_per_m_output", "$ per M output tokens at the SLO knee"),
                               (axes[1], "usd_per_m_blended", "blended $ per M tokens (3:1 in:out) at the knee")):
            bars = ax.bar(lp, kp[col], color=cp)
            ax.bar_label(bars, fmt="$%.3f", fontsize=8)
            ax.set_title(title)
            ax.set_ylabel("$/M tokens")
        fig.suptitle(f"Cost at the SLO{sim} — pricing: {kp['pricing'].iloc[0]}, utilisation {kp['utilization'].iloc[0]:.0%}")
        files += _save(fig, out, "cost_per_slo")
        plt.close(fig)
    if k["j_per_output_token"].notna().any():
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        bars = axes[0].bar(labels, k["j_per_output_token"], color=colors)
        axes[0].bar_label(bars, fmt="%.3f", fontsize=8)
        axes[0].set_title("energy per output token at the knee (J)")
        bars = axes[1].bar(labels, k["avg_power_w"], color=colors)
        axes[1].bar_label(bars, fmt="%.0f W", fontsize=8)
        axes[1].set_title("average GPU power at the knee (W)")
        src = ", ".join(sorted(set(k["energy_source"].dropna())))
        fig.suptitle(f"Energy{sim} — source: {src}")
        files += _save(fig, out, "energy")
        plt.close(fig)
    return files
