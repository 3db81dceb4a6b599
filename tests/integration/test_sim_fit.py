"""`trilemma sim fit` on measured probes of the served simulator: the fitted profile reproduces what was measured,
states its error, predicts a knee, and loads as a sweep target's profile."""

import subprocess
import sys
from pathlib import Path

import yaml

from bench.sim.engine import load_profile

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "results-v1" / "v1-sweep"  # the served tiny-test simulator, 32/16 at 5 and 20 req/s


def test_fit_on_served_simulator_probes_recovers_its_step_time(tmp_path):
    base = load_profile("tiny-test").model_dump(exclude_none=True)
    base.update(name="tiny-test-perturbed", step_overhead_ms=20.0, flop_eff=0.05, mem_eff=0.2)  # far from the truth
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "fitted.yaml"
    r = subprocess.run([sys.executable, "-m", "bench.cli", "sim", "fit", str(FIXTURE), "--base", str(tmp_path / "base.yaml"),
                        "--out", str(out), "--predict", "32/16", "--slo", "ttft_p90=500ms"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    fitted = load_profile(str(out))
    truth = load_profile("tiny-test")
    # the served simulator's decode step is its profile's step time: 5 ms overhead + the memory roofline
    step_truth = truth.step_time_s(1, 40, 0, 1) * 1e3
    step_fit = fitted.step_time_s(1, 40, 0, 1) * 1e3
    assert abs(step_fit / step_truth - 1) < 0.1, (step_fit, step_truth, r.stdout)
    assert fitted.fit and fitted.fit["probes"] == 2 and fitted.fit["max_abs_error"] < 0.15, fitted.fit
    assert "predicted knee for 32/16" in r.stdout and "req/s" in r.stdout


def test_fit_refuses_what_it_cannot_use_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.cli", "sim", "fit", str(tmp_path / "nope"), "--base", "tiny-test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "bench.cli", "sim", "fit", str(FIXTURE), "--base", "tiny-test", "--predict", "x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--predict 'x'" in r.stderr and "Traceback" not in r.stderr, r.stderr
