"""`trilemma compare --fail-on-regression` as a CI gate, and knee/report/compare on awkward results, through the
CLI on small synthetic result sets (tests/synthetic.py: planted differences, no server needed)."""

import re

import pytest

from bench.config import SLO
from tests.integration.conftest import trilemma
from tests.synthetic import write_sweep

SLO_P50 = [SLO(metric="ttft", pct=50, threshold_ms=200)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("gate")
    write_sweep(r, "base", labels={"gpu": "h100"})
    return r


def gate(root, new, *extra):
    return trilemma("compare", root / "base", root / new, "--fail-on-regression", "5%", *extra, check=False)


def test_thirty_percent_failed_requests_fail_the_gate_on_the_error_rule(root):
    write_sweep(root, "errors", fail_frac=0.3, labels={"gpu": "h100"})
    p = gate(root, "errors")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "errors rule" in p.stderr and "Traceback" not in p.stderr
    assert re.search(r"REGRESSION c, 5 req/s: error rate \(errors rule\) — 90/300 failed vs 0/300", p.stdout), p.stdout


def test_no_feasible_knee_fails_the_gate_on_the_knee_rule(root):
    write_sweep(root, "noknee", slow=10.0, labels={"gpu": "h100"})  # TTFT ~10x: over the 200 ms SLO at every load
    p = gate(root, "noknee")
    assert p.returncode == 1 and "knee rule" in p.stderr, p.stdout + p.stderr
    assert "REGRESSION c: knee (req/s) (knee rule) — knee lost: base sustains 10 req/s" in p.stdout.replace("\n", " ")


def test_identical_setup_passes_only_what_it_decides(root):
    """Same synthetic server, other seed: no regression, exit 0 — but one run per side leaves throughput
    undecided, and the gate says so instead of calling it a pass."""
    write_sweep(root, "same", seed=7, labels={"gpu": "h100"})
    p = gate(root, "same")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no regression beyond 5% among the decided checks" in p.stdout
    assert "needs repeats ≥ 2 per side" in p.stdout and "REGRESSION" not in p.stdout


def test_mismatched_setups_are_refused_with_every_difference_on_one_line(root):
    write_sweep(root, "other", arrival="constant", slos=[SLO(metric="ttft", pct=50, threshold_ms=300)], labels={"gpu": "h100"})
    p = gate(root, "other")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: different setups"), p.stderr
    assert "arrival: poisson vs constant" in lines[0] and "SLOs: ttft_p50<=200ms vs ttft_p50<=300ms" in lines[0]


def test_concurrency_is_never_matched_against_a_request_rate(root):
    write_sweep(root, "closed", mode="concurrency", labels={"gpu": "h100"})
    p = gate(root, "closed")
    assert p.returncode == 2 and "load unit: req/s vs concurrency" in p.stderr, p.stderr
    p = gate(root, "closed", "--allow-mismatch")
    assert "setup differs (--allow-mismatch): load unit" in p.stdout
    assert "knees in different units are not compared" in p.stdout and "+100" not in p.stdout
    assert re.search(r"\d+ (req/s|conc)\s*│ ttft_p50", p.stdout) is None  # no latency row pairs 5 req/s with 5 concurrent


def test_hardware_and_version_differences_are_shown_not_refused(root):
    write_sweep(root, "h200", labels={"gpu": "h200"}, server_version="2.0")
    p = gate(root, "h200")
    assert p.returncode in (0, 1), p.stderr
    assert "differs (compared for): gpu: h100  →  h200" in p.stdout and "server_version: 1.0  →  2.0" in p.stdout


def test_a_p999_slo_with_failures_renders_in_knee_report_and_compare(root, tmp_path):
    """1% failed requests make a p99.9 SLO value infinite (stored as null in run.json): knee, report and
    compare all read it back and print it, none crashes. 4,000 requests per point: a p99.9 is decided PASS
    only with >= 3,688 clean samples (at 300 it is undecided on both sides, and no knee exists to lose)."""
    slo = [SLO(metric="ttft", pct=99.9, threshold_ms=500)]
    write_sweep(tmp_path, "ok", slos=slo, n=4000, labels={"gpu": "h100", "gpus": "1"})
    write_sweep(tmp_path, "onefail", slos=slo, n=4000, fail_frac=0.01, labels={"gpu": "h100", "gpus": "1"})
    k = trilemma("knee", tmp_path / "onefail", "--no-plots")
    assert "∞ (failures)" in re.sub(r"[│\s]+", " ", k.stdout), k.stdout
    r = trilemma("report", tmp_path / "ok", tmp_path / "onefail", "--name", "inf", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "inf" / "summary.md").read_text()
    assert "∞ (failures)" in md and "knee lost" in md, md
    c = trilemma("compare", tmp_path / "ok", tmp_path / "onefail", "--fail-on-regression", "5%", check=False)
    assert c.returncode == 1 and "Traceback" not in c.stderr, c.stderr
    assert "∞ (failures)" in c.stdout and "knee rule" in c.stderr
    assert r.returncode == 0 and k.returncode == 0


def test_gpus_per_replica_is_never_assumed(root, tmp_path):
    """Without a gpus label (and no NVML process info) the report prices nothing and says why; the flag fills
    it in; a 2-GPU replica costs exactly twice a 1-GPU one per token at the same knee."""
    r = trilemma("report", root / "base", "--name", "unknown", "--out", tmp_path)
    md = (tmp_path / "unknown" / "summary.md").read_text()
    assert "GPUs per replica unknown" in md and "$2.50" not in md
    rows = {}
    for g in (1, 2):
        trilemma("report", root / "base", "--name", f"g{g}", "--out", tmp_path, "--gpus-per-replica", g)
        md = (tmp_path / f"g{g}" / "summary.md").read_text()
        line = next(ln for ln in md.splitlines() if ln.startswith("| base | c |"))
        cells = [x.strip() for x in line.strip("|").split("|")]
        assert "10.00 req/s (" in cells[10] and "out tok/s measured" in cells[10], cells  # priced at the knee load
        rows[g] = cells
    assert rows[2][9].startswith("2 (--gpus-per-replica)")
    per_m = {g: float(rows[g][12].replace(",", "")) for g in rows}
    per_1k = {g: float(rows[g][14].replace(",", "")) for g in rows}
    assert per_m[2] == pytest.approx(2 * per_m[1], rel=1e-3) and per_1k[2] == pytest.approx(2 * per_1k[1], rel=1e-3)
    assert r.returncode == 0
