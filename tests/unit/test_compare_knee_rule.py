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


def test_an_open_base_bracket_is_a_lower_bound_not_a_match():
    """Base passed every tested load up to 1.4 (knee >= 1.4, end unknown); new's knee is bracketed [11.44, 12.48]:
    nothing says where the base's knee ends, so the row is undecided, not 'within' (it was, before)."""
    r = _knee_row("c", "qps", knee(True, 1.4, None), knee(True, 11.44, 12.48), 0.05)
    assert r["verdict"] == UNDECIDED and "base knee ≥ 1.4" in r["why"], r["why"]
    # a new bracket wholly below the base's lower bound is still a decided loss
    assert _knee_row("c", "qps", knee(True, 10.0, None), knee(True, 4.0, 5.0), 0.05)["verdict"] == WORSE
    # both open with the new side passing the base's whole tested range: no loss in that range
    r = _knee_row("c", "qps", knee(True, 10.0, None), knee(True, 10.0, None), 0.05)
    assert r["verdict"] == "within" and "tested range" in r["why"]
    # closed brackets that overlap are within; a new bracket far above the base's is better
    assert _knee_row("c", "qps", knee(True, 8.0, 10.0), knee(True, 8.0, 9.5), 0.05)["verdict"] == "within"
    assert _knee_row("c", "qps", knee(True, 8.0, 10.0), knee(True, 12.0, 14.0), 0.05)["verdict"] == "better"
