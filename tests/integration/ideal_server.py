"""An ideal constant-latency OpenAI-compatible server for ground-truth tests: every request, whatever the
load, gets its first token `--ttft-ms` after arrival and one token every `--itl-ms` after that (absolute
times, no drift), with usage on every chunk. Infinite capacity: delivered rate = offered rate exactly.

    python -m tests.integration.ideal_server --port 8123 --ttft-ms 50 --itl-ms 10
"""

import argparse
import asyncio
import json
import time

from aiohttp import web


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def make_app(ttft_ms: float, itl_ms: float, model: str = "ideal") -> web.Application:
    async def completions(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        body = await request.json()
        n_prompt = len(str(body.get("prompt", "")).split())
        n = int(body.get("max_tokens") or 16)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(n):
            await asyncio.sleep(max(0.0, t0 + (ttft_ms + k * itl_ms) / 1e3 - time.perf_counter()))
            await resp.write(sse({"id": "cmpl-ideal", "object": "text_completion", "model": model,
                                  "choices": [{"index": 0, "text": " tok", "finish_reason": "length" if k == n - 1 else None}],
                                  "usage": {"prompt_tokens": n_prompt, "completion_tokens": k + 1, "total_tokens": n_prompt + k + 1}}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "max_model_len": 4096}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", lambda r: web.Response(text=""))
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ttft-ms", type=float, default=50)
    ap.add_argument("--itl-ms", type=float, default=10)
    a = ap.parse_args()
    web.run_app(make_app(a.ttft_ms, a.itl_ms), host="127.0.0.1", port=a.port, print=None)
