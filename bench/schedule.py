"""② Arrival process -> absolute intended send offsets (ns from t0), computed up front from the seed.

Sending at `t0 + offset[i]` (not after relative sleeps) keeps errors from compounding; the runner records
both intended and actual send times so lag is visible (coordinated-omission free latency).
"""

from __future__ import annotations

import numpy as np

from bench.config import Arrival


def interarrival_s(arrival: Arrival, rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n inter-arrival gaps in seconds with mean 1/rate.

    poisson: Exp(1/rate) (CV = 1); gamma: shape k = 1/CV², scale = 1/(rate·k) (mean 1/rate, CV as given);
    constant: all 1/rate.
    """
    if arrival.kind == "constant":
        return np.full(n, 1.0 / rate)
    if arrival.kind == "poisson":
        return rng.exponential(1.0 / rate, n)
    k = 1.0 / (arrival.cv**2)
    return rng.gamma(k, 1.0 / (rate * k), n)


def open_loop_offsets_ns(
    arrival: Arrival, rate: float, seed: int, *, duration_s: float | None = None, count: int | None = None
) -> np.ndarray:
    """Intended send offsets (int64 ns, first at 0) for an open loop at `rate` req/s.

    With `duration_s` the schedule stops at the last arrival inside [0, duration); with `count` it has
    exactly `count` arrivals; with both, whichever comes first.
    """
    rng = np.random.default_rng(seed)
    if count is None:
        assert duration_s is not None
        n_guess = int(rate * duration_s * 1.5 + 50)
    else:
        n_guess = count
    gaps = interarrival_s(arrival, rate, n_guess, rng)
    t = np.concatenate(([0.0], np.cumsum(gaps[:-1])))
    if duration_s is not None:
        while t[-1] + gaps[-1] < duration_s and count is None:  # extremely bursty gamma: extend
            more = interarrival_s(arrival, rate, n_guess, rng)
            t = np.concatenate((t, t[-1] + gaps[-1] + np.concatenate(([0.0], np.cumsum(more[:-1])))))
            gaps = more
        t = t[t < duration_s]
    if count is not None:
        t = t[:count]
    return (t * 1e9).astype(np.int64)


def profile_offsets_ns(arrival: Arrival, pieces: list[tuple[float, float, float]], seed: int) -> np.ndarray:
    """Intended send offsets (int64 ns) for an open loop whose rate changes over time: `pieces` of
    (seconds, rate at start, rate at end), linear within a piece (a ramp) or constant (a stage).

    Time rescaling: arrivals of the unit-rate process (Exp(1) gaps for Poisson, Gamma with the given CV, or
    1 for constant) at s_1, s_2, ... are sent at Λ⁻¹(s_i), where Λ(t) = ∫ rate is the expected number of
    arrivals by t. So the count in any stretch has the rate's integral as its mean, and the arrival process
    keeps its own shape (a Poisson process stays Poisson, with the time-varying rate)."""
    rng = np.random.default_rng(seed)
    # Λ on a grid: exact at piece boundaries; a ramp's quadratic Λ on 2,000 points (linear interpolation between)
    ts, lam = [0.0], [0.0]
    for dur, r0, r1 in pieces:
        if dur <= 0:
            continue
        k = 2000 if r0 != r1 else 1
        u = np.linspace(0.0, dur, k + 1)[1:]
        base_t, base_l = ts[-1], lam[-1]
        ts.extend((base_t + u).tolist())
        lam.extend((base_l + r0 * u + (r1 - r0) * u**2 / (2 * dur)).tolist())
    t_grid, l_grid = np.asarray(ts), np.asarray(lam)
    total = float(l_grid[-1])
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    unit = Arrival(kind=arrival.kind, cv=arrival.cv)
    n = int(total * 1.3 + 50)
    s = np.cumsum(interarrival_s(unit, 1.0, n, rng))
    while s[-1] < total:
        s = np.concatenate((s, s[-1] + np.cumsum(interarrival_s(unit, 1.0, n, rng))))
    s = np.concatenate(([0.0], s[:-1])) if arrival.kind == "constant" else s  # a constant schedule starts at 0, as open_loop_offsets_ns
    s = s[s < total]
    keep = np.concatenate(([True], np.diff(l_grid) > 0))  # Λ is flat where the rate is 0 (a ramp's first instant)
    t = np.interp(s, l_grid[keep], t_grid[keep])
    out: np.ndarray = (t * 1e9).astype(np.int64)
    return out


def scaled_trace_offsets_ns(timestamps_s: np.ndarray, speedup: float) -> np.ndarray:
    """Trace replay: offsets relative to the first timestamp, divided by `speedup` (same shape, faster)."""
    ts = np.asarray(timestamps_s, dtype=np.float64)
    out: np.ndarray = (((ts - ts[0]) / speedup) * 1e9).round().astype(np.int64)
    return out
