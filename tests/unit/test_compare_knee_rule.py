"""The knee rule of compare: a knee is lost only where the new side fails a load the base sustains; a new side
whose loads were merely undecided (a repeat's p90 interval still open) is undecided, never a regression."""

import pandas as pd

from bench.compare import UNDECIDED, WORSE, _knee_row


def knee(feasible, k=None, hi=None, note=""):
    return pd.Series({"feasible": feasible, "knee": k, "bracket_hi": hi, "note": note})


def test_a_new_side_that_fails_where_the_base_passes_has_lost_its_knee():
    r = _knee_row("c", "qps", knee(True, 8.0), knee(False, hi=8.0, note="8 qps: ttft_p90 over"), 0.3)
    assert r["verdict"] == WORSE and r["why"].startswith("knee lost")


def test_undecided_loads_on_the_new_side_are_not_a_lost_knee():
    r = _knee_row("c", "qps", knee(True, 8.0), knee(False, hi=None, note="undecided between: 8 qps"), 0.3)
    assert r["verdict"] == UNDECIDED and "failed none" in r["why"]
    # a failure only above the base knee is not a loss either
    r = _knee_row("c", "qps", knee(True, 8.0), knee(False, hi=12.0, note="undecided between: 8 qps"), 0.3)
    assert r["verdict"] == UNDECIDED
