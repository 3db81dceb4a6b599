"""③ One load point, sized by its data: warmup and window in request lifetimes, sequential looks, early stop.

The monitor watches a running load point (it is told of every request sent and ended) and decides:
- **warmup end**: not before `warmup_lifetimes` request lifetimes have passed and half of the requests
  sent have completed (so the lifetime estimate — median of E2E, or age for those still in flight — is
  not read off a ramp that has not filled yet);
- **window end**: the window lasts at least max(`min_duration_s`, `window_lifetimes` · lifetime). A
  sequential probe then looks at growing intervals and stops when every SLO is decided *pass* and
  steady state is shown, or at once when an SLO is decided *fail* or the server is saturated (early abort:
  failing probes are the most expensive GPU time of a search); otherwise at the maximum, undecided.
Requests still in flight count where they are already known: no response byte after the TTFT threshold,
or alive past the E2E threshold, is an exceedance. The decision that stopped the probe is kept (`report()`), since an aborted probe's in-flight
requests are cancelled and the summary computed afterwards no longer sees them.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array

import numpy as np

from bench import stats
from bench.config import SLO, ProbeRule
from bench.metrics import SERIES_DEFF, over_samples, request_value, steady_state
from bench.records import RequestRecord

perf_ns = time.perf_counter_ns


class ProbeMonitor:
    CHECK_S = 0.25

    def __init__(self, rule: ProbeRule | None, slos: list[SLO], mode: str, warm_s: float = 0.0, warm_n: int = 0,
                 duration_s: float | None = None):
        self.rule, self.slos, self.mode = rule, slos, mode
        self.warm_n, self.warm_s = warm_n, warm_s
        self.t0 = self.warm_until = 0
        self.warm_fixed = rule is None or warm_n > 0
        self.duration_s = duration_s
        self.stop_at: int | None = None
        self.stopped, self.why = "", ""
        self.conf = rule.look_confidence() if rule else 0.95
        self.starts, self.ends = array("q"), array("q")
        self.inflight: dict[int, RequestRecord] = {}
        self.samples = [(array("d"), array("d"), array("b")) for _ in slos]  # member time, block time, over
        self.values = [array("d") for _ in slos]  # SERIES_DEFF SLOs (TTFT): each value, for its autocorrelation time
        self.looks: list[dict] = []
        self.next_look_s: float | None = None
        self.done = asyncio.Event()

    def begin(self, t0_ns: int) -> None:
        """The schedule's origin: warmup and window count from here."""
        self.t0 = t0_ns
        self.warm_until = t0_ns + int(self.warm_s * 1e9)

    # ------------------------------------------------------------------ bookkeeping (hot path: O(1) + samples)
    def is_warm(self, i: int, intended_ns: int) -> bool:
        return i < self.warm_n if self.warm_n else intended_ns < self.warm_until

    def started(self, rec: RequestRecord) -> int:
        slot = len(self.starts)
        self.starts.append(rec.intended_ns)
        self.ends.append(0)
        self.inflight[slot] = rec
        return slot

    def finished(self, slot: int, rec: RequestRecord) -> None:
        self.inflight.pop(slot, None)
        if rec.error_kind == "cancelled":
            return
        self.ends[slot] = rec.end_ns
        if self.rule is None:  # a fixed window never looks: its samples would only grow with the run's tokens
            return
        t0 = self.t0
        for (mem, bt, ov), vals, slo in zip(self.samples, self.values, self.slos):
            ts, over = over_samples(rec, slo)
            n = len(ts)
            if not n:
                continue
            if slo.metric in SERIES_DEFF:
                vals.append(request_value(rec, slo) or 0.0)  # over_samples gave a sample: the value is there
            mem.extend([(rec.intended_ns - t0) / 1e9] * n)
            bt.frombytes(((np.asarray(ts, dtype=np.int64) - t0) / 1e9).tobytes())
            ov.frombytes(np.asarray(over, dtype=np.int8).tobytes())

    # ------------------------------------------------------------------ estimates
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self.starts, dtype=np.int64), np.frombuffer(self.ends, dtype=np.int64)

    def lifetime_s(self, now: int, since: int | None = None) -> tuple[float, float]:
        """(median lifetime so far, share of requests sent that have completed), over requests sent
        since `since`: E2E for completed ones, age for those in flight — a lower bound."""
        st, en = self._arrays()
        if since is not None:
            keep = st >= since
            st, en = st[keep], en[keep]
        if st.size == 0:
            return 0.0, 0.0
        life = (np.where(en > 0, en, now) - st) / 1e9
        return float(np.median(life)), float((en > 0).mean())

    def window_target_s(self, now: int) -> float:
        """How long the window must run at least: the rule's minimum and its lifetimes."""
        if self.rule is None:
            return self.duration_s or math.inf
        life, _ = self.lifetime_s(now, self.warm_until)
        return min(self.rule.max_duration_s, max(self.rule.min_duration_s, self.rule.window_lifetimes * life))

    def measured_count(self) -> int:
        st, _ = self._arrays()
        return int((st >= self.warm_until).sum())

    # ------------------------------------------------------------------ the watch loop
    async def watch(self) -> None:
        """Runs beside the sender; sets `stop_at` (the window's end) and `done`."""
        try:
            while self.stop_at is None:
                await asyncio.sleep(self.CHECK_S)
                self.check(perf_ns())
        finally:
            self.done.set()

    def check(self, now: int) -> None:
        if now < self.warm_until or (not self.warm_fixed and not self._warmup_over(now)):
            return
        rule = self.rule
        win_s = (now - self.warm_until) / 1e9
        if rule is None:  # fixed --duration: the window is the schedule's, to the nanosecond
            if self.duration_s is not None and win_s >= self.duration_s:
                self._stop(self.warm_until + int(self.duration_s * 1e9), "schedule", "")
            return
        target = self.window_target_s(now)
        if rule.max_requests and self.measured_count() >= rule.max_requests:
            self._final_look(now, "max", f"reached max_requests {rule.max_requests}")
            return
        if win_s >= rule.max_duration_s:
            self._final_look(now, "max", f"reached max_duration_s {rule.max_duration_s:g}")
            return
        if not rule.sequential and win_s >= target:
            self._stop(now, "schedule", f"window {win_s:.1f} s (>= {target:.1f} s: minimum and {rule.window_lifetimes:g} lifetimes)")
            return
        if win_s < rule.min_duration_s:  # looks start at the minimum window: a FAIL needs no steady state
            return
        if self.next_look_s is not None and win_s < self.next_look_s:
            return
        self.next_look_s = win_s * rule.look_growth
        self.look(now)  # a non-sequential probe looks only for a decisive failure (early abort)

    def _warmup_over(self, now: int) -> bool:
        """Time-based warmup of a probe: extended until it spans `warmup_lifetimes` lifetimes and half the
        requests sent have completed; capped at half the maximum window."""
        rule = self.rule
        assert rule is not None
        elapsed = (now - self.t0) / 1e9
        life, done = self.lifetime_s(now)
        if elapsed >= rule.max_duration_s / 2 or (done >= 0.5 and elapsed >= rule.warmup_lifetimes * life):
            self.warm_until = max(self.warm_until, now)
            self.warm_fixed = True
            return True
        self.warm_until = now + int(2 * self.CHECK_S * 1e9)  # still warming up: what is sent until the next check is warmup
        return False

    def look(self, now: int, final: bool = False) -> dict:
        st, en = self._arrays()
        measured = st >= self.warm_until
        ss = steady_state(st, en, measured, self.warm_until, now, self.mode, self.rule.window_lifetimes if self.rule else 0.0)
        lo_s, hi_s = (self.warm_until - self.t0) / 1e9, (now - self.t0) / 1e9
        decisions = {}
        for (mem, bt, ov), vals, slo in zip(self.samples, self.values, self.slos):
            m, b, o = np.frombuffer(mem), np.frombuffer(bt), np.frombuffer(ov, dtype=np.int8).astype(bool)
            sel = m >= lo_s
            b, o = b[sel], o[sel]
            tau = 1.0
            if slo.metric in SERIES_DEFF:  # one value per request, in completion order: put them in send order
                x = np.frombuffer(vals)[sel]
                tau = stats.autocorr_time(x[np.argsort(b, kind="stable")], clip_at=slo.threshold_ms)
            extra_t, extra_o = self._inflight_known(slo, now)
            if extra_t:
                b = np.concatenate([b, extra_t])
                o = np.concatenate([o, extra_o])
            n_b, k_b = stats.block_counts(b, o, lo_s, hi_s)
            d, iv = stats.percentile_decision(n_b, k_b, slo.pct, self.conf, tau)
            decisions[slo.name] = {"decision": d, "n": iv["n"], "k": iv["k"], "ci": [iv["lo"], iv["hi"]], "deff": iv["deff"], "tau": tau}
        look = {"t_s": round((now - self.warm_until) / 1e9, 2), "measured": int(measured.sum()), "slos": decisions,
                "saturated": ss["saturated"], "steady": ss["steady"], "lifetime_s": ss["lifetime_s"]}
        self.looks.append(look)
        failed = [k for k, v in decisions.items() if v["decision"] == "fail"]
        if failed:
            v = decisions[failed[0]]
            self._stop(now, "fail", f"{failed[0]} fails decisively: {v['k']} of {v['n']} samples over the threshold "
                                    f"(exceedance 95% CI {100 * v['ci'][0]:.2f}-{100 * v['ci'][1]:.2f}%)")
        elif ss["saturated"]:
            self._stop(now, "saturated", ss["reason"])
        elif self.rule is not None and self.rule.sequential and all(v["decision"] == "pass" for v in decisions.values()) and ss["steady"]:
            self._stop(now, "decided", "every SLO decided (pass) in steady state")
        elif final:
            open_ = [k for k, v in decisions.items() if v["decision"] == "undecided"]
            self._stop(now, "max", f"{', '.join(open_)} undecided" if open_ else
                       ("" if ss["steady"] else f"not steady: {ss['reason']}"))
        return look

    def _final_look(self, now: int, kind: str, why: str) -> None:
        if self.slos:
            self.look(now, final=True)
            if self.stopped == "max":
                self.why = f"{why}; {self.why}"
        else:
            self._stop(now, kind, why)

    def _inflight_known(self, slo: SLO, now: int) -> tuple[list[float], list[bool]]:
        """Exceedances already certain for requests still in flight: no response byte yet (so no first token)
        after the TTFT threshold, or alive past the E2E threshold. Nothing else is known until the stream
        ends (chunks are parsed afterwards), so nothing else is counted."""
        if slo.metric not in ("ttft", "e2e"):
            return [], []
        ts = []
        for r in self.inflight.values():
            if r.intended_ns < self.warm_until or (slo.metric == "ttft" and r.first_byte_ns):
                continue
            if (now - r.intended_ns) / 1e6 > slo.threshold_ms:
                ts.append((r.intended_ns - self.t0) / 1e9)
        return ts, [True] * len(ts)

    def _stop(self, now: int, kind: str, why: str) -> None:
        if self.stop_at is None:
            self.stop_at, self.stopped, self.why = now, kind, why

    def interrupt(self, now: int) -> None:
        self._stop(now, "interrupted", "interrupted")

    # ------------------------------------------------------------------ after the run
    @property
    def aborted(self) -> bool:
        """Stopped on a decisive failure: requests still in flight are cancelled, not drained."""
        return self.stopped in ("fail", "saturated")

    def drain_timeout_s(self, now: int) -> float:
        life, _ = self.lifetime_s(now, self.warm_until)
        return max(10.0, 3 * life)

    def window_ns(self, end_ns: int) -> tuple[int, int]:
        return self.warm_until, self.stop_at if self.stop_at is not None else end_ns

    def report(self) -> dict:
        r = self.rule
        return {"rule": r.model_dump() if r else None, "looks_planned": r.looks() if r else 1, "confidence_per_look": self.conf,
                "stopped": self.stopped or "schedule", "why": self.why, "warmup_s": (self.warm_until - self.t0) / 1e9,
                "window_s": ((self.stop_at - self.warm_until) / 1e9) if self.stop_at else None, "looks": self.looks}
