"""④ Scrape a server's Prometheus `/metrics` (vLLM `vllm:`, SGLang `sglang:`, DCGM exporter `DCGM_FI_`)
on a thread during a run; store the timeline and summarise it per point.

Parsing uses prometheus_client's text parser. Counter samples keep their `_total` suffix there.
Server-side TTFT/ITL histograms are differenced between the first and last scrape of the window, so
the server's own view of the point's latency is a second opinion on the client's.
"""

from __future__ import annotations

import math
import threading
import time

import httpx

from bench.summary import IdleCheck

# canonical name -> accepted metric sample names (first found wins), per engine
GAUGES = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "sglang_cache_hit_rate": ("sglang:cache_hit_rate",),
    "gpu_power_w": ("DCGM_FI_DEV_POWER_USAGE",),
}
COUNTERS = {
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "prefix_queries": ("vllm:prefix_cache_queries_total",),
    "prefix_hits": ("vllm:prefix_cache_hits_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total"),
    "generation_tokens": ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
    "gpu_energy_mj": ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",),
    "sglang_cached_tokens": ("sglang:cached_tokens_total",),
}
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
    "itl": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds", "sglang:inter_token_latency_seconds",
            "sglang:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"),
    # vLLM V1: arrival at the engine to first scheduled, and first scheduled to first token (the prefill, all its chunks)
    "queue": ("vllm:request_queue_time_seconds",),
    "prefill": ("vllm:request_prefill_time_seconds",),
}


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {canonical: value} for gauges/counters (summed over label sets, per GPU
    for DCGM) and {hist: {"buckets": {le: count}, "sum": s, "count": n}} for histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    flat: dict[str, float] = {}
    hist: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            name = s.name
            if name.endswith("_bucket"):
                base = name[: -len("_bucket")]
                h = hist.setdefault(base, {"buckets": {}, "sum": 0.0, "count": 0.0})
                le = float(s.labels.get("le", "inf"))
                h["buckets"][le] = h["buckets"].get(le, 0.0) + s.value
            elif name.endswith("_sum") and fam.type == "histogram":
                hist.setdefault(name[:-4], {"buckets": {}, "sum": 0.0, "count": 0.0})["sum"] += s.value
            elif name.endswith("_count") and fam.type == "histogram":
                hist.setdefault(name[:-6], {"buckets": {}, "sum": 0.0, "count": 0.0})["count"] += s.value
            else:
                flat[name] = flat.get(name, 0.0) + s.value
    out: dict = {}
    for canon, names in {**GAUGES, **COUNTERS}.items():
        for n in names:
            if n in flat:
                out[canon] = flat[n]
                break
    out["histograms"] = {}
    for canon, names in HISTOGRAMS.items():
        for n in names:
            if n in hist:
                out["histograms"][canon] = hist[n]
                break
    out["engine"] = ("vllm" if any(k.startswith("vllm:") for k in flat) or any(k.startswith("vllm:") for k in hist)
                     else "sglang" if any(k.startswith("sglang:") for k in flat) else
                     "dcgm" if any(k.startswith("DCGM_") for k in flat) else "unknown")
    return out


def hist_delta(a: dict | None, b: dict | None) -> dict | None:
    if not a or not b:
        return None
    return {"buckets": {le: b["buckets"].get(le, 0) - a["buckets"].get(le, 0) for le in b["buckets"]},
            "sum": b["sum"] - a["sum"], "count": b["count"] - a["count"]}


def hist_quantile(h: dict | None, q: float) -> float:
    """Quantile from cumulative buckets with linear interpolation inside a bucket (Prometheus'
    histogram_quantile). Returns seconds; nan if empty."""
    if not h or h["count"] <= 0:
        return math.nan
    items = sorted(h["buckets"].items())
    total = h["count"]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return prev_le


def summarize_timeline(rows: list[dict], first: dict | None, last: dict | None) -> dict:
    """Per-point summary of the scraped timeline."""
    if not rows:
        return {}

    def col(k):
        return [r[k] for r in rows if r.get(k) is not None]

    def delta(k):
        v = col(k)
        return v[-1] - v[0] if len(v) > 1 else None

    out: dict = {"engine": rows[-1].get("engine"), "scrapes": len(rows)}
    for k in ("running", "waiting", "kv_usage"):
        v = col(k)
        if v:
            out[f"{k}_mean"] = sum(v) / len(v)
            out[f"{k}_max"] = max(v)
    out["preemptions"] = delta("preemptions")
    q, h = delta("prefix_queries"), delta("prefix_hits")
    out["prefix_cache_hit_rate"] = h / q if q else None
    if out["prefix_cache_hit_rate"] is None and col("sglang_cache_hit_rate"):
        out["prefix_cache_hit_rate"] = col("sglang_cache_hit_rate")[-1]
    out["prompt_tokens"] = delta("prompt_tokens")
    out["generation_tokens"] = delta("generation_tokens")
    for name in ("ttft", "itl", "e2e", "queue", "prefill"):
        d = hist_delta((first or {}).get("histograms", {}).get(name), (last or {}).get("histograms", {}).get(name))
        if d and d["count"] > 0:
            out[f"server_{name}_mean_ms"] = d["sum"] / d["count"] * 1e3
            out[f"server_{name}_p50_ms"] = hist_quantile(d, 0.5) * 1e3
            out[f"server_{name}_p99_ms"] = hist_quantile(d, 0.99) * 1e3
    return out


def fetch_text(http: httpx.Client, url: str) -> tuple[int, str]:
    """GET `url` → (status, body text), the response released at once. An httpx Response and its stream refer to
    each other, so a dropped one waits, body included, for the cyclic collector's oldest generation, which a run
    holds off (runner: gc.freeze, raised thresholds): one /metrics body a second stayed in memory for the whole run
    (11 KB a scrape from the simulator; vLLM's /metrics is ~56 KB: ~6 MB a minute)."""
    r = http.get(url)
    try:
        return r.status_code, r.text
    finally:
        r.stream = httpx.ByteStream(b"")  # the body was read: the stream that refers back to the response goes


def wait_idle(base_url: str, headers: dict | None = None, timeout_s: float = 120.0, poll_s: float = 0.25) -> IdleCheck:
    """Wait until the server's own gauges say no request is running or waiting (vLLM / SGLang / the
    simulator): a load point must not start behind the queue an earlier one left (a cancelled request
    the engine is still serving). `idle` is None where the server has no such gauges."""
    t0 = time.monotonic()
    with httpx.Client(timeout=5, headers=headers or {}) as c:
        while True:
            try:
                status, text = fetch_text(c, base_url.rstrip("/") + "/metrics")
                m = parse_metrics(text) if status == 200 else {}
            except (httpx.HTTPError, ValueError):
                m = {}
            waited = round(time.monotonic() - t0, 2)
            busy = {k: m[k] for k in ("running", "waiting") if k in m}
            if not busy:
                return IdleCheck(waited_s=waited)
            if sum(v or 0 for v in busy.values()) == 0:
                return IdleCheck(waited_s=waited, idle=True)
            if time.monotonic() - t0 > timeout_s:
                return IdleCheck(waited_s=waited, idle=False, busy={"running": None, "waiting": None} | busy)
            time.sleep(poll_s)


class MetricsScraper:
    """Scrapes `url` every `period_s` on a thread (sync httpx: the client's event loop stays free)."""

    def __init__(self, url: str, period_s: float = 1.0, headers: dict | None = None):
        self.url, self.period = url, period_s
        self.http = httpx.Client(timeout=max(2.0, period_s), headers=headers or {})
        self.rows: list[dict] = []
        self.first: dict | None = None
        self.last: dict | None = None
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> dict | None:
        try:
            status, text = fetch_text(self.http, self.url)
            if status != 200:
                self.errors += 1
                return None
            m = parse_metrics(text)
        except (httpx.HTTPError, ValueError):
            self.errors += 1
            return None
        m["t"] = time.time()
        if self.first is None:
            self.first = m
        self.last = m
        self.rows.append({k: v for k, v in m.items() if k != "histograms"})
        return m

    def _loop(self) -> None:
        nxt = time.perf_counter()
        while not self._stop.is_set():
            self.scrape_once()
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def start(self) -> bool:
        ok = self.scrape_once() is not None
        if ok:
            self._thread = threading.Thread(target=self._loop, name="trilemma-metrics", daemon=True)
            self._thread.start()
        return ok

    def stop(self) -> dict:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
            self.scrape_once()
        self.http.close()
        return summarize_timeline(self.rows, self.first, self.last)


def dcgm_energy(scraper: MetricsScraper) -> dict | None:
    """GPU energy from a DCGM exporter scrape: Δ DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION (mJ) over the
    window, else ∫ DCGM_FI_DEV_POWER_USAGE dt (flagged)."""
    rows = scraper.rows
    if len(rows) < 2:
        return None
    dt = rows[-1]["t"] - rows[0]["t"]
    e = [r.get("gpu_energy_mj") for r in rows]
    if e[0] is not None and e[-1] is not None and e[-1] >= e[0]:
        j, src = (e[-1] - e[0]) / 1000.0, "dcgm_energy_counter"
    else:
        pts = [(r["t"], r["gpu_power_w"]) for r in rows if r.get("gpu_power_w") is not None]
        if len(pts) < 2:
            return None
        j = sum((t2 - t1) * (p1 + p2) / 2 for (t1, p1), (t2, p2) in zip(pts, pts[1:]))
        src = "dcgm_power_integral"
    return {"energy_j": j, "source": src, "window_s": dt, "avg_power_w": j / dt if dt > 0 else None, "gpus": None}
