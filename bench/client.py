"""③ OpenAI-compatible streaming client.

Hot path (rule 3): read raw bytes and stamp each read with `perf_counter_ns()` on arrival — nothing
else. SSE framing and JSON parsing happen after the response ends (`parse_sse`, `interpret_events`),
so parsing cost never sits between a token's arrival and its timestamp.

Token counts per chunk come from `usage.completion_tokens` deltas when the server streams usage with
every chunk (vLLM/SGLang `stream_options.continuous_usage_stats`); a chunk that carries several tokens is
then counted right. Otherwise each content chunk counts as one token and the record is flagged.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Iterable, cast

import httpx
from pydantic import ValidationError

from bench.records import RequestRecord
from bench.wire import ModelList, ServerInfo, SGLangInfo, SimInfo, VersionInfo, error_message, parse_event

perf_ns = time.perf_counter_ns


# ------------------------------------------------------------------ secrets
def redact_url(url: str) -> str:
    """`http://user:pw@host` -> `http://***@host`: credentials in a URL are never stored or printed."""
    return re.sub(r"//[^/@\s]+@", "//***@", url)


def url_secrets(url: str) -> list[str]:
    """The password written into a URL (`http://user:pw@host`), so an echo of it is redacted too."""
    m = re.match(r"^[a-z]+://[^/@:\s]*:([^/@\s]+)@", url)
    return [m.group(1)] if m else []


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove secrets from a string the harness is about to record or print: each given value (API key,
    URL password), any `Bearer …`/`Basic …` credential, and URL userinfo. A server may echo the
    Authorization header in an error body (some 401 pages do)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    text = re.sub(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;}]+", r"\1\2***", text)
    return redact_url(text)


# ------------------------------------------------------------------ SSE parsing (after the fact)
def parse_sse(reads: list[tuple[int, bytes]]) -> tuple[list[tuple[int, str]], bytes]:
    """Split timestamped raw reads into SSE `data` payloads.

    Each event gets the arrival time of the read that completed it (its terminating blank line).
    Comment lines (':' keep-alives) and non-data fields are skipped; multi-line data is joined with
    '\\n'. Returns (events, leftover bytes of an unterminated final event)."""
    events: list[tuple[int, str]] = []
    buf = b""
    for t, chunk in reads:
        buf += chunk
        if b"\n\n" not in buf and b"\r\n\r\n" not in buf:
            continue
        buf = buf.replace(b"\r\n", b"\n")
        *blocks, buf = buf.split(b"\n\n")
        for block in blocks:
            data = [ln[5:].lstrip(b" ") for ln in block.split(b"\n") if ln.startswith(b"data:")]
            if data:
                events.append((t, b"\n".join(data).decode("utf-8", "replace")))
    return events, buf


def interpret_events(events: list[tuple[int, str]], rec: RequestRecord) -> bool:
    """Fill `rec` from parsed events; returns True if `[DONE]` was seen. Sets error fields on a
    malformed event or a server error event."""
    prev = 0
    usage_total = None
    text_parts: list[str] = []
    # a live record holds int64 arrays (records.RequestRecord's defaults) that this fills
    chunk_ns, chunk_tokens, server_ns = cast("list[int]", rec.chunk_ns), cast("list[int]", rec.chunk_tokens), cast("list[int]", rec.server_chunk_ns)
    done = False
    client_counted = False
    for t, data in events:
        if data == "[DONE]":
            done = True
            continue
        ev = parse_event(data)
        if isinstance(ev, str):
            rec.error_kind, rec.error = "malformed", ev
            continue
        if ev.is_error:
            rec.error_kind, rec.error = "server_error_event", ev.error_text()[:300]
            continue
        if not rec.response_id and ev.id:
            rec.response_id = str(ev.id)
        if ev.sim_recv_ns is not None:
            rec.server_recv_ns = ev.sim_recv_ns
        usage = ev.usage
        ntok = None
        if usage is not None and usage.completion_tokens is not None:
            ct = usage.completion_tokens
            ntok, prev, usage_total = ct - prev, ct, ct
            if usage.prompt_tokens is not None:
                rec.prompt_tokens = usage.prompt_tokens
            details = usage.prompt_tokens_details  # OpenAI's field; vLLM --enable-prompt-tokens-details, SGLang --enable-cache-report
            if details is not None and details.cached_tokens is not None:
                rec.cached_tokens = details.cached_tokens
        if not ev.choices:
            continue
        text = ""
        for c in ev.choices:
            text += c.content
            if c.finish_reason:
                rec.finish_reason = c.finish_reason
        if ntok is None:
            ntok = 1 if text else 0
            client_counted = client_counted or ntok > 0
        if ntok > 0:
            chunk_ns.append(t)
            chunk_tokens.append(ntok)
            if ev.sim_t_ns is not None:
                server_ns.append(ev.sim_t_ns)
        if text:
            text_parts.append(text)
    rec.output_text = "".join(text_parts)
    if usage_total is not None:
        rec.output_tokens = usage_total
        rec.tokens_from_usage = not client_counted
    else:
        rec.output_tokens = sum(rec.chunk_tokens)
        rec.tokens_from_usage = False
    return done


# ------------------------------------------------------------------ request
@dataclass(slots=True)
class Prepared:
    """A request ready to send: endpoint path and pre-serialised JSON body (built off the hot path)."""

    path: str
    body: bytes
    model: str = ""


def build_body(api: str, model: str, prompt, max_tokens: int, *, ignore_eos: bool, continuous_usage: bool,
               extra: dict | None = None) -> Prepared:
    stream_options = {"include_usage": True}
    if continuous_usage:
        stream_options["continuous_usage_stats"] = True
    body: dict = {"model": model, "stream": True, "stream_options": stream_options, "max_tokens": max_tokens}
    if ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    if api == "chat":
        body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    if extra:
        body.update(extra)
    return Prepared(path, json.dumps(body, separators=(",", ":")).encode(), model)


def make_client(base_url: str, api_key: str | None, timeout_s: float, max_conn: int | None = None,
                extra_headers: dict[str, str] | None = None) -> "StreamClient":
    return StreamClient(base_url, api_key, timeout_s, max_conn, extra_headers)


KEEPALIVE_S = 4.0


class StreamClient:
    """The hot-path HTTP client: one aiohttp session (C HTTP parser, keep-alive pool with O(1) checkout).

    httpx stays for control-plane calls (discovery, /tokenize, /metrics); it is not used here because
    httpcore's pool re-scans every open connection on each request — measured at ~56% of the client's
    CPU at 100 req/s — which would show up as timing bias."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, max_conn: int | None = None,
                 extra_headers: dict[str, str] | None = None):
        import aiohttp
        from yarl import URL

        self.base = base_url.rstrip("/")
        self.secrets = [api_key, *url_secrets(base_url), *(extra_headers or {}).values()]  # redacted from every recorded error
        self._urls: dict[str, URL] = {}
        self._URL = URL
        headers = {**(extra_headers or {}), "Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.session = aiohttp.ClientSession(
            headers=headers, auto_decompress=False,
            # idle connections are dropped at checkout after KEEPALIVE_S, below uvicorn's 5 s default
            # (vLLM, SGLang), so the client rarely reuses a connection the server is closing
            connector=aiohttp.TCPConnector(limit=max_conn or 0, keepalive_timeout=KEEPALIVE_S, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s))

    def url(self, path: str):
        """Parsed URL per endpoint, cached: parsing on every request costs tens of µs in the hot path."""
        u = self._urls.get(path)
        if u is None:
            u = self._urls[path] = self._URL(self.base + path)
        return u

    async def aclose(self) -> None:
        await self.session.close()


async def send_streaming(client: StreamClient, req: Prepared, rec: RequestRecord,
                         on_first_byte: Callable[[int], None] | None = None) -> None:
    """Send one streaming request and fill `rec`. Never raises for request failures.

    One resend is allowed, and counted in `rec.retries`, when the connection drops before any response
    byte: that is a pooled keep-alive connection the server closed just as it was reused (uvicorn closes
    idle connections after 5 s; measured ~1 in 240 requests reusing a connection idle near that age).
    Latency still counts from the first send, so the resend's cost stays in the numbers."""
    import aiohttp

    reads: list[tuple[int, bytes]] = []
    append = reads.append
    rec.sent_ns = perf_ns()
    try:
        for attempt in (0, 1):
            try:
                async with client.session.post(client.url(req.path), data=req.body) as resp:
                    rec.status = resp.status
                    if resp.status != 200:
                        body = await resp.read()
                        rec.end_ns = perf_ns()
                        rec.error_kind = "http"
                        rec.error = f"HTTP {resp.status}: {error_message(body)}"
                        return
                    async for chunk in resp.content.iter_any():
                        append((perf_ns(), chunk))
                        if not rec.first_byte_ns:  # while in flight: a probe may stop on a TTFT known to be over
                            rec.first_byte_ns = reads[0][0]
                            if on_first_byte is not None:  # a worker process tells the scheduler's process
                                on_first_byte(rec.first_byte_ns)
                rec.end_ns = perf_ns()
            except aiohttp.ClientConnectorError as e:
                rec.end_ns, rec.error_kind, rec.error = perf_ns(), "connect", f"cannot connect: {e}"[:300]
                return
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
                rec.end_ns, rec.error_kind, rec.error = perf_ns(), "timeout", f"no data for the read timeout ({type(e).__name__})"[:300]
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt == 0 and rec.status == 0 and not reads:
                    rec.retries += 1
                    continue
                rec.end_ns, rec.error_kind, rec.error = perf_ns(), "stream_cut", f"{type(e).__name__}: {e}"[:300]
            except aiohttp.ClientPayloadError as e:
                rec.end_ns, rec.error_kind, rec.error = perf_ns(), "stream_cut", f"{type(e).__name__}: {e}"[:300]
            except aiohttp.ClientError as e:
                rec.end_ns, rec.error_kind, rec.error = perf_ns(), "client", f"{type(e).__name__}: {e}"[:300]
            break
    finally:  # also on cancellation (Ctrl-C): the first byte stays recorded
        if reads:
            rec.first_byte_ns = reads[0][0]
        if rec.error:  # an error body may echo the Authorization header
            rec.error = redact(rec.error, client.secrets)
    events, rest = parse_sse(reads)
    done = interpret_events(events, rec)
    if not rec.error_kind and not done:
        if rec.finish_reason and not rest:
            # the body ended cleanly after a finish_reason: complete. `transformers serve` ends streams
            # this way, without the `data: [DONE]` sentinel; the record notes it (a count in the summary).
            rec.done_marker = False
        else:
            rec.error_kind = "stream_cut"
            rec.error = "stream ended before [DONE]" + (f" ({len(rest)} bytes of a partial event)" if rest else "")
    if rec.error:
        rec.error = redact(rec.error, client.secrets)
    rec.ok = not rec.error_kind and rec.output_tokens > 0


# ------------------------------------------------------------------ control plane
class TargetError(Exception):
    """The target cannot be used; the message is one line naming the fix."""


class ControlPlaneError(TargetError):
    """A control-plane call (discovery, /tokenize, cache reset) failed; one line naming the call."""


# A kept-alive connection the server has closed (or reset) fails on reuse with one of these; a new
# connection usually works, so such a failure is retried once.
_STALE = (httpx.NetworkError, httpx.RemoteProtocolError)


def _control_error(call: str, base_url: str, e: httpx.HTTPError, timeout_s: float | None) -> ControlPlaneError:
    url = redact_url(base_url)
    if isinstance(e, httpx.ConnectError):
        why = f"cannot reach {url}: connection refused or host unknown; is the server running? check --url"
    elif isinstance(e, httpx.TimeoutException):
        why = f"{url} did not answer within {timeout_s:g} s; check --url and that the server has finished starting"
    else:
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        why = (f"{url} closed or reset the connection twice ({type(e).__name__}: {detail}); "
               "check the server's log, or a proxy between the harness and it")
    return ControlPlaneError(f"{call} failed: {why}")


def control_call(call: str, base_url: str, send: Callable[[], httpx.Response], timeout_s: float | None = None) -> httpx.Response:
    """The one error boundary for synchronous control-plane requests: a stale kept-alive connection or
    another transport error is retried once; a second failure (or a timeout) raises ControlPlaneError,
    one line naming the call. HTTP statuses are returned for the caller to judge."""
    for attempt in (0, 1):
        try:
            return send()
        except _STALE as e:
            if attempt:
                raise _control_error(call, base_url, e, timeout_s) from None
        except httpx.HTTPError as e:
            raise _control_error(call, base_url, e, timeout_s) from None
    raise AssertionError("unreachable")


async def acontrol_call(call: str, base_url: str, send: Callable[[], Awaitable[httpx.Response]],
                        timeout_s: float | None = None) -> httpx.Response:
    """`control_call` for async callers (same retry rule, same errors)."""
    for attempt in (0, 1):
        try:
            return await send()
        except _STALE as e:
            if attempt:
                raise _control_error(call, base_url, e, timeout_s) from None
        except httpx.HTTPError as e:
            raise _control_error(call, base_url, e, timeout_s) from None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ target discovery
async def discover(base_url: str, headers: dict) -> ServerInfo:
    """GET /v1/models (required), /version and SGLang's /get_server_info (optional)."""
    url = redact_url(base_url)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as c:
        r = await acontrol_call("GET /v1/models", base_url, lambda: c.get("/v1/models"), 10)
        if r.status_code in (401, 403):
            raise TargetError(f"{url}/v1/models answered HTTP {r.status_code}: set the API key (--api-key or the env var in api_key_env)")
        if r.status_code != 200:
            raise TargetError(f"{url}/v1/models answered HTTP {r.status_code}; is this an OpenAI-compatible server? check --url")
        try:
            cards = ModelList.model_validate_json(r.content).cards
        except ValidationError:
            raise TargetError(f"{url}/v1/models did not return JSON; is this an OpenAI-compatible server? check --url") from None
        models = [m.id for m in cards if m.id is not None]
        out = ServerInfo(models=models, default_model=models[0] if len(models) == 1 else None,
                         max_model_len=next((m.max_model_len for m in cards if m.max_model_len), None))
        try:  # optional endpoints: a server without them is still usable
            v = await acontrol_call("GET /version", base_url, lambda: c.get("/version"), 10)
            if v.status_code == 200:
                vj = VersionInfo.model_validate_json(v.content)
                out.server_version = vj.version
                if vj.simulated:
                    out.simulated, out.server_kind = True, "trilemma-sim"
                    out.sim = SimInfo.model_validate_json(v.content)
                elif out.server_version:
                    out.server_kind = "vllm"
        except (ControlPlaneError, ValidationError):
            pass
        try:
            si = await acontrol_call("GET /get_server_info", base_url, lambda: c.get("/get_server_info"), 10)
            if si.status_code == 200:
                info = SGLangInfo.model_validate_json(si.content)
                out.server_kind = "sglang"
                out.server_version = info.version if "version" in info.model_fields_set else out.server_version
                out.server_info = info
        except (ControlPlaneError, ValidationError):
            pass
    return out


async def reset_prefix_cache(base_url: str, headers: dict) -> str:
    """vLLM POST /reset_prefix_cache, SGLang POST /flush_cache. Returns which one worked, or 'unsupported'.
    A connection failing twice raises ControlPlaneError (the user asked for a reset)."""
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as c:
        for path in ("/reset_prefix_cache", "/flush_cache"):
            r = await acontrol_call(f"POST {path}", base_url, partial(c.post, path), 30)
            if r.status_code == 200:
                return path
    return "unsupported"
