"""A fault-injection OpenAI-compatible server for tests: raw asyncio HTTP/1.1 on loopback, in a thread.

It misbehaves the ways real servers do:
- `reset_control`: after answering a control-plane request (/v1/models, /tokenize, ...) it keeps the
  connection open without `Connection: close`, then resets it (RST) when the next request arrives on
  it — a kept-alive connection the server dropped, met by the client's reuse.
- `tokenize_fails_after=N`: every /tokenize request after the first N is reset, on any connection.
- `no_done`: streams end after the finish_reason (and usage chunk) without `data: [DONE]`, as
  `transformers serve` does.
- `slow_models_s`: /v1/models answers after this delay (a server still starting).
- `echo_auth`: completions answer HTTP 401 with a body echoing the Authorization header.

Tokens are space-separated words; /tokenize adds 1 (BOS) and, for chat, 3 per message + 1. Bounded:
at most 64 connections, 64 KiB of headers and 1 MiB of body per request.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

CONTROL = {"/v1/models", "/version", "/get_server_info", "/tokenize", "/health", "/metrics", "/reset_prefix_cache", "/flush_cache"}
MAX_BODY = 1 << 20


class FaultServer:
    def __init__(self, *, reset_control: bool = False, no_done: bool = False, slow_models_s: float = 0.0, echo_auth: bool = False,
                 tokenize_fails_after: int | None = None, max_model_len: int = 4096):
        self.reset_control, self.no_done, self.slow_models_s, self.echo_auth = reset_control, no_done, slow_models_s, echo_auth
        self.tokenize_fails_after, self.max_model_len = tokenize_fails_after, max_model_len
        self.counts = {"connections": 0, "resets": 0, "tokenize": 0, "streams": 0}
        self.seen: list[tuple[dict, dict]] = []  # (headers, body) of every generation request and control call
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="fault-server")
        self._sem = asyncio.Semaphore(64)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0, limit=1 << 16)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ connection
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._sem:
            self.counts["connections"] += 1
            poisoned = False
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    line, *hdrs = head.decode("latin-1").split("\r\n")
                    method, path, _ = line.split(" ", 2)
                    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in hdrs if ":" in h)}
                    n = int(headers.get("content-length", "0"))
                    if n > MAX_BODY:
                        return
                    body = await reader.readexactly(n) if n else b""
                    if poisoned or (path == "/tokenize" and self.tokenize_fails_after is not None
                                    and self.counts["tokenize"] >= self.tokenize_fails_after):
                        self._reset(writer)
                        return
                    await self._route(method, path.split("?")[0], headers, body, writer)
                    poisoned = self.reset_control and path.split("?")[0] in CONTROL
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError, asyncio.CancelledError):
                pass  # the client went away, sent garbage, or the server is shutting down
            finally:
                writer.close()

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        """Close with RST (SO_LINGER 0), as a server dropping the connection under a request does."""
        self.counts["resets"] += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    @staticmethod
    async def _json(writer: asyncio.StreamWriter, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}.get(status, "Error")
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (status, reason.encode(), len(data), data))
        await writer.drain()

    async def _route(self, method: str, path: str, headers: dict, body: bytes, writer: asyncio.StreamWriter) -> None:
        req = json.loads(body) if body else {}
        self.seen.append((dict(headers), dict(req, _path=path)))
        if path == "/v1/models":
            if self.slow_models_s:
                await asyncio.sleep(self.slow_models_s)
            await self._json(writer, 200, {"object": "list", "data": [{"id": "fault-model", "max_model_len": self.max_model_len}]})
        elif path == "/tokenize":
            self.counts["tokenize"] += 1
            if "messages" in req:
                n = sum(len(str(m.get("content", "")).split()) + 3 for m in req["messages"]) + 1
            else:
                n = len(str(req.get("prompt", "")).split()) + 1
            await self._json(writer, 200, {"count": n, "max_model_len": self.max_model_len})
        elif path in ("/health", "/reset_prefix_cache"):
            await self._json(writer, 200, {})
        elif path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            if self.echo_auth:
                await self._json(writer, 401, {"error": {"message": f"invalid key; you sent Authorization: {headers.get('authorization')}"}})
            else:
                await self._stream(path, req, writer)
        else:
            await self._json(writer, 404, {"error": {"message": f"{path} not found"}})

    async def _stream(self, path: str, req: dict, writer: asyncio.StreamWriter) -> None:
        self.counts["streams"] += 1
        chat = path.endswith("chat/completions")
        n_out = int(req.get("max_tokens") or 16)
        prompt = req.get("messages") if chat else req.get("prompt", "")
        n_in = (sum(len(str(m.get("content", "")).split()) + 3 for m in prompt) + 1) if chat else len(str(prompt).split()) + 1
        per_chunk = bool((req.get("stream_options") or {}).get("continuous_usage_stats"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

        def send(obj) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        for k in range(n_out):
            choice = {"index": 0, "finish_reason": "length" if k == n_out - 1 else None}
            choice.update({"delta": {"content": " w"}} if chat else {"text": " w"})
            chunk = {"id": "fault-1", "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}
            if per_chunk:
                chunk["usage"] = {"prompt_tokens": n_in, "completion_tokens": k + 1, "total_tokens": n_in + k + 1}
            send(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)
        send({"id": "fault-1", "choices": [], "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}})
        if not self.no_done:
            send(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
