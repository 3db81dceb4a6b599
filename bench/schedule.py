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


def scaled_trace_offsets_ns(timestamps_s: np.ndarray, speedup: float) -> np.ndarray:
    """Trace replay: offsets relative to the first timestamp, divided by `speedup` (same shape, faster)."""
    ts = np.asarray(timestamps_s, dtype=np.float64)
    out: np.ndarray = (((ts - ts[0]) / speedup) * 1e9).round().astype(np.int64)
    return out
