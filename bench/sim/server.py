"""HTTP face of the simulator: OpenAI-compatible `/v1/completions`, `/v1/chat/completions` (streaming
and not), `/v1/models`, `/tokenize`, `/detokenize`, `/version`, `/health`, `/reset_prefix_cache`, and a
Prometheus `/metrics` with vLLM's metric names plus a simulated GPU in the DCGM exporter's names.

Tokens are whitespace-separated words (so `/tokenize` is exact and cheap); the chat template adds
3 tokens per message plus 1 for the generation prompt. Streaming responses follow vLLM's wire format
(chunk objects, `stream_options.include_usage` final usage chunk, `continuous_usage_stats` per-chunk
usage, `data: [DONE]`).

Deterministic mode (calibration): no engine; each response follows a fixed schedule seeded by the
request's sequence number — TTFT 20–30 ms, chunk gaps 5–15 ms, one chunk in ~4 carrying 2–3 tokens — and
every chunk carries the server's own send timestamp (`sim_t_ns`, `perf_counter_ns`, CLOCK_MONOTONIC,
comparable across processes on one host) plus `sim_recv_ns` in the first: the ground truth.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
import zlib
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from bench._version import __version__
from bench.sim.engine import BLOCK, Engine, Profile, SimRequest

WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "at", "by", "this", "had",
         "not", "are", "but", "from", "or", "have", "an", "they", "which", "one", "you", "were")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Hist:
    def __init__(self, buckets):
        self.b = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        self.sum += v
        self.n += 1
        for i, le in enumerate(self.b):
            if v <= le:
                self.counts[i] += 1
                break

    def family(self, name: str, doc: str, labels: dict):
        from prometheus_client.core import HistogramMetricFamily

        cum, acc = [], 0
        for le, c in zip(self.b, self.counts):
            acc += c
            cum.append((str(le), acc))
        cum.append(("+Inf", self.n))
        f = HistogramMetricFamily(name, doc, labels=list(labels))
        f.add_metric(list(labels.values()), cum, self.sum)
        return f


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def count_words(text: str) -> int:
    return len(text.split())


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    content: Any = None

    @property
    def text(self) -> str:
        return str(self.content or "")


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage on every chunk


class GenerateRequest(BaseModel):
    """The body of /v1/completions or /v1/chat/completions, the fields the simulator acts on."""

    model_config = ConfigDict(extra="allow")
    model: Any = None
    prompt: Any = None  # a string or a list of token ids (checked where it is used)
    messages: list[Message] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


def chat_tokens(messages: list[Message]) -> int:
    return sum(3 + count_words(m.text) for m in messages) + 1


def chat_text(messages: list[Message]) -> str:
    return " ".join(m.text for m in messages)


def bad_request(e: ValidationError) -> web.Response:
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        return error(400, "request body is not valid JSON")
    return error(400, f"{'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}")


def error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}}, status=status)


class SimServer:
    def __init__(self, profile: Profile, *, model: str | None = None, deterministic: bool = False, seed: int = 0,
                 error_rate: float = 0.0, cut_rate: float = 0.0, delay_ms: float = 0.0, error_status: int = 500):
        self.p = profile
        self.error_status = error_status  # what an injected failure answers: 500 (an internal error) or 429 (rate limited)
        # added before a request reaches the engine: a slower API front end (--delay-ms) and the profile's own front end
        self.delay_s = (delay_ms + profile.api_overhead_ms) / 1e3
        self.names = [n.strip() for n in (model or profile.model).split(",") if n.strip()]  # several served names, as vLLM's
        self.model = self.names[0]
        self.deterministic = deterministic
        self.seed = seed
        self.error_rate, self.cut_rate = error_rate, cut_rate
        self.rng = random.Random(seed)
        self.engine = Engine(profile)
        self.hist = {"ttft": Hist(TTFT_BUCKETS), "tpot": Hist(TPOT_BUCKETS), "e2e": Hist(TTFT_BUCKETS),
                     "queue": Hist(TTFT_BUCKETS), "prefill": Hist(TTFT_BUCKETS)}
        self.engine.observers.append(lambda kind, v: self.hist[kind].observe(v))
        self.seq = 0

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/version", self.version)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/reset_prefix_cache", self.reset_prefix)
        app.on_startup.append(self._start)
        return app

    async def _start(self, app) -> None:
        if not self.deterministic:
            self.engine_task = asyncio.ensure_future(self.engine.run())

    async def health(self, request) -> web.Response:
        """Unhealthy (500, with the reason) once the engine loop has stopped: a server that accepts requests
        it will never serve must not look healthy."""
        t = getattr(self, "engine_task", None)
        if t is not None and t.done():
            exc = t.exception() if not t.cancelled() else None
            return web.Response(status=500, text=f"engine stopped: {exc!r}")
        return web.Response(text="")

    async def models(self, request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "trilemma-sim",
                                                              "root": self.model, "max_model_len": self.p.max_model_len} for n in self.names]})

    async def version(self, request) -> web.Response:
        return web.json_response({"version": f"trilemma-sim {__version__}", "simulated": True, "profile": self.p.name,
                                  "gpu": self.p.gpu, "deterministic": self.deterministic,
                                  # the serve config, as a real server's launch flags say it
                                  "max_num_seqs": self.p.max_num_seqs, "max_num_batched_tokens": self.p.max_num_batched_tokens,
                                  "kv_capacity_tokens": self.p.kv_capacity_tokens})

    async def reset_prefix(self, request) -> web.Response:
        self.engine.prefix.clear()
        return web.Response(text="")

    async def tokenize(self, request) -> web.Response:
        try:
            body = GenerateRequest.model_validate_json(await request.read())
        except ValidationError as e:
            return bad_request(e)
        n = chat_tokens(body.messages) if body.messages is not None else count_words(str(body.prompt or ""))
        return web.json_response({"count": n, "max_model_len": self.p.max_model_len, "tokens": list(range(n))})

    async def metrics(self, request) -> web.Response:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        e, lab = self.engine, {"model_name": self.model}
        fams: list[Any] = []

        def g(name, doc, v, labels=lab):
            f = GaugeMetricFamily(name, doc, labels=list(labels))
            f.add_metric(list(labels.values()), v)
            fams.append(f)

        def c(name, doc, v):
            f = CounterMetricFamily(name, doc, labels=list(lab))
            f.add_metric(list(lab.values()), v)
            fams.append(f)

        g("vllm:num_requests_running", "Running requests (simulated)", len(e.running))
        g("vllm:num_requests_waiting", "Waiting requests (simulated)", len(e.waiting))
        g("vllm:kv_cache_usage_perc", "KV-cache usage, 0-1 (simulated)", e.kv_usage)
        c("vllm:num_preemptions", "Preemptions (simulated)", e.preemptions)
        c("vllm:prompt_tokens", "Prefilled prompt tokens (simulated)", e.prompt_tokens_total)
        c("vllm:generation_tokens", "Generated tokens (simulated)", e.generation_tokens_total)
        c("vllm:prefix_cache_queries", "Prefix-cache queried tokens (simulated)", e.prefix_queries)
        c("vllm:prefix_cache_hits", "Prefix-cache hit tokens (simulated)", e.prefix_hits)
        fams.append(self.hist["ttft"].family("vllm:time_to_first_token_seconds", "TTFT (simulated)", lab))
        fams.append(self.hist["tpot"].family("vllm:inter_token_latency_seconds", "ITL (simulated)", lab))
        fams.append(self.hist["e2e"].family("vllm:e2e_request_latency_seconds", "E2E (simulated)", lab))
        fams.append(self.hist["queue"].family("vllm:request_queue_time_seconds", "Arrival to first scheduled (simulated)", lab))
        fams.append(self.hist["prefill"].family("vllm:request_prefill_time_seconds", "First scheduled to first token (simulated)", lab))
        gl = {"gpu": "0", "UUID": f"GPU-sim-{self.p.name}", "modelName": f"{self.p.gpu} (simulated)"}
        g("DCGM_FI_DEV_POWER_USAGE", "Power draw (W), simulated", e.power_w, gl)
        g("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "Energy since start (mJ), simulated", e.energy_now_j() * 1000.0, gl)

        class _C:
            def collect(self_inner):
                return fams

        reg = CollectorRegistry(auto_describe=False)
        reg.register(_C())
        return web.Response(body=generate_latest(reg), content_type="text/plain", charset="utf-8")

    # ------------------------------------------------------------------ generation
    async def completions(self, request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request, chat: bool) -> web.StreamResponse:
        proto = id(request.protocol)
        recv_ns = _RX.pop(proto, None) or time.perf_counter_ns()
        try:
            body = GenerateRequest.model_validate_json(await request.read())
        except ValidationError as e:
            return bad_request(e)
        finally:
            _RX.pop(proto, None)  # body read: later bytes belong to the next request
        if body.model not in (None, *self.names):
            return error(404, f"The model `{body.model}` does not exist.", "NotFoundError")
        if chat:
            msgs = body.messages
            if not msgs:
                return error(400, "messages must be a non-empty list")
            n_prompt, text = chat_tokens(msgs), chat_text(msgs)
        else:
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                n_prompt, text = len(prompt), " ".join(map(str, prompt))
            elif isinstance(prompt, str):
                n_prompt, text = count_words(prompt), prompt
            else:
                return error(400, "prompt must be a string or a list of token ids")
        max_tokens = body.max_completion_tokens or body.max_tokens or 16
        if n_prompt + max_tokens > self.p.max_model_len:
            return error(400, f"This model's maximum context length is {self.p.max_model_len} tokens. However, you requested "
                              f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion).")
        if self.error_rate and self.rng.random() < self.error_rate:
            if self.error_status == 429:
                return error(429, "simulated rate limit: too many requests", "RateLimitError")
            return error(self.error_status, "simulated internal server error", "InternalServerError")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.seq += 1
        seq = self.seq
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        stream = bool(body.stream)
        so = body.stream_options or StreamOptions()
        include_usage, continuous = so.include_usage, so.continuous_usage_stats
        created = int(time.time())

        def chunk(text: str, n_gen: int, finish: str | None, first: bool, extra: dict | None = None) -> dict:
            if chat:
                delta = {"content": text}
                if first:
                    delta = {"role": "assistant", "content": text}
                ch = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model, "choices": [ch]}
            else:
                ch = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
                obj = {"id": rid, "object": "text_completion", "created": created, "model": self.model, "choices": [ch]}
            if continuous and include_usage:
                obj["usage"] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_gen, "completion_tokens": n_gen}
            if extra:
                obj.update(extra)
            return obj

        def words(start: int, n: int) -> str:
            return "".join(" " + WORDS[(start + i) % len(WORDS)] for i in range(n))

        if not stream:
            if self.deterministic:
                await asyncio.sleep(0.02)
            else:
                req = self._submit(n_prompt, max_tokens, text)
                while not req.done:
                    req.event.clear()
                    await req.event.wait()
            out = words(0, max_tokens)
            choice = ({"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "length"} if chat
                      else {"index": 0, "text": out, "finish_reason": "length", "logprobs": None})
            return web.json_response({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                                      "model": self.model, "choices": [choice],
                                      "usage": {"prompt_tokens": n_prompt, "completion_tokens": max_tokens,
                                                "total_tokens": n_prompt + max_tokens}})

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        cut_at = self.rng.randint(1, max(1, max_tokens - 1)) if self.cut_rate and self.rng.random() < self.cut_rate else None
        n_gen = 0
        if self.deterministic:
            rng = random.Random(zlib.crc32(f"{self.seed}:{seq}".encode()))
            t = recv_ns + int((0.020 + 0.010 * rng.random()) * 1e9)
            first = True
            while n_gen < max_tokens:
                k = 1 if rng.random() < 0.75 else rng.choice((2, 3))
                k = min(k, max_tokens - n_gen)
                d = t - time.perf_counter_ns()
                if d > 0:
                    await asyncio.sleep(d / 1e9)
                n_gen += k
                finish = "length" if n_gen >= max_tokens else None
                extra = {"sim_t_ns": time.perf_counter_ns()}
                if first:
                    extra["sim_recv_ns"] = recv_ns
                await resp.write(sse(chunk(words(n_gen - k, k), n_gen, finish, first, extra)))
                first = False
                t += int((0.005 + 0.010 * rng.random()) * 1e9)
        else:
            req = self._submit(n_prompt, max_tokens, text)
            first = True
            try:
                while True:
                    await req.event.wait()
                    req.event.clear()
                    k, req.pending = req.pending, 0
                    if k:
                        n_gen += k
                        finish = "length" if req.done and n_gen >= req.max_tokens else None
                        await resp.write(sse(chunk(words(n_gen - k, k), n_gen, finish, first)))
                        first = False
                        if cut_at is not None and n_gen >= cut_at:
                            request.transport.close()  # simulated dropped connection
                            return resp
                    if req.done and req.pending == 0:
                        break
            except (ConnectionResetError, asyncio.CancelledError):
                self._abort(req)
                raise
        if include_usage:  # as OpenAI (and vLLM --enable-prompt-tokens-details) say it: prompt tokens from the prefix cache
            details = {} if self.deterministic else {"prompt_tokens_details": {"cached_tokens": req.cached}}
            await resp.write(sse({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                                  "model": self.model, "choices": [],
                                  "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_gen, "completion_tokens": n_gen,
                                            **details}}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _submit(self, n_prompt: int, max_tokens: int, text: str) -> SimRequest:
        blocks = []
        if self.p.prefix_cache:
            ws = text.split()
            h = 0
            for i in range(0, len(ws) - BLOCK + 1, BLOCK):
                h = zlib.crc32(" ".join(ws[i:i + BLOCK]).encode(), h)
                blocks.append(h)
        req = SimRequest(prompt_tokens=max(1, n_prompt), max_tokens=max(1, max_tokens), blocks=blocks)
        self.engine.submit(req)
        return req

    def _abort(self, req: SimRequest) -> None:
        e = self.engine
        req.aborted = True  # the step in progress may hold it: the engine skips it when the step ends
        if req in e.waiting:
            e.waiting.remove(req)
        elif req in e.running:
            e.running.remove(req)
            e.kv_reserved -= req.kv_held
            req.kv_held = 0


_RX: dict[int, int] = {}  # connection -> perf_counter_ns of the first bytes of its pending request


def _stamp_arrivals() -> None:
    """Ground truth for calibration: stamp the first bytes of each request as they reach this process
    (aiohttp's protocol `data_received`), not when the handler is dispatched ~0.5 ms later. Applied
    only inside the simulator's own process (serve())."""
    from aiohttp import web_protocol

    orig = web_protocol.RequestHandler.data_received
    if getattr(orig, "_trilemma", False):
        return

    def data_received(self, data: bytes) -> None:
        _RX.setdefault(id(self), time.perf_counter_ns())
        orig(self, data)

    data_received._trilemma = True  # type: ignore[attr-defined]
    web_protocol.RequestHandler.data_received = data_received  # type: ignore[method-assign]


def exit_with_parent() -> None:
    """When started by a harness process (TRILEMMA_SIM_PARENT=its pid), exit with it, even after a
    `kill -9` of the parent: Linux delivers SIGTERM on the parent's death (prctl PR_SET_PDEATHSIG), and a
    watcher thread checks the parent pid every 0.5 s where prctl is unavailable."""
    import os
    import signal
    import threading

    parent = os.environ.get("TRILEMMA_SIM_PARENT")
    if not parent or not parent.isdigit():
        return
    pid = int(parent)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != pid:  # the parent died before prctl took effect
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def serve(profile: Profile, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Run the simulated server until interrupted (or until the harness that started it is gone)."""
    exit_with_parent()
    _stamp_arrivals()
    srv = SimServer(profile, **kw)
    mode = "deterministic calibration mode" if srv.deterministic else f"profile {profile.name} ({profile.gpu})"
    print(f"trilemma sim: SIMULATED OpenAI-compatible server, {mode}, model '{srv.model}', http://{host}:{port}", flush=True)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    # handler_cancellation: a client that disconnects aborts its request, as vLLM and SGLang do
    web.run_app(srv.app(), host=host, port=port, print=None, access_log=None, handle_signals=True, loop=loop,
                handler_cancellation=True)
