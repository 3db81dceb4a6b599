"""The hot-path client against a raw HTTP server that closes a kept-alive connection as it is reused."""

import asyncio

from bench.client import Prepared, make_client, send_streaming
from bench.records import RequestRecord

SSE = (b'data: {"id":"cmpl-1","choices":[{"index":0,"text":"a","finish_reason":null}]}\n\n'
       b'data: {"id":"cmpl-1","choices":[{"index":0,"text":"b","finish_reason":"length"}],'
       b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
       b"data: [DONE]\n\n")


def _response() -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (SSE,)) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body


async def _serve(close_after: int, counts: dict):
    """Answers `close_after` requests per connection, then closes the next one without a response."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        counts["connections"] += 1
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            if served == close_after:
                writer.close()
                return
            writer.write(_response())
            await writer.drain()
            served += 1
            counts["served"] += 1

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _run(close_after: int, n: int) -> tuple[list[RequestRecord], dict]:
    async def main():
        counts = {"connections": 0, "served": 0}
        server = await _serve(close_after, counts)
        port = server.sockets[0].getsockname()[1]
        client = make_client(f"http://127.0.0.1:{port}", None, 10)
        recs = []
        for i in range(n):  # one after another: each request reuses the pooled connection
            rec = RequestRecord(index=i, intended_ns=0)
            await send_streaming(client, Prepared("/v1/completions", b'{"prompt":"x"}'), rec)
            recs.append(rec)
        await client.aclose()
        server.close()
        return recs, counts

    return asyncio.run(main())


def test_stale_keepalive_connection_is_resent_once_and_counted():
    recs, counts = _run(close_after=1, n=3)
    assert [r.ok for r in recs] == [True, True, True]
    assert [r.retries for r in recs] == [0, 1, 1]  # the 2nd and 3rd reused a connection the server had closed
    assert [r.output_tokens for r in recs] == [2, 2, 2] and counts["connections"] == 3 and counts["served"] == 3


def test_server_that_never_answers_is_a_stream_cut_after_one_resend():
    recs, counts = _run(close_after=0, n=1)
    (r,) = recs
    assert not r.ok and r.error_kind == "stream_cut" and r.retries == 1 and counts["connections"] == 2
