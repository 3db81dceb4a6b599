"""SSE framing and OpenAI chunk interpretation, from raw reads."""

from bench.client import interpret_events, parse_sse
from bench.records import RequestRecord
from tests.conftest import FIXTURES


def ev(obj_json: str) -> bytes:
    return f"data: {obj_json}\n\n".encode()


def test_comments_keepalives_and_done():
    reads = [(1, b": keep-alive\n\n"), (2, ev('{"choices":[{"text":"a"}]}')), (3, b":ping\n\n"), (4, b"data: [DONE]\n\n")]
    events, rest = parse_sse(reads)
    assert events == [(2, '{"choices":[{"text":"a"}]}'), (4, "[DONE]")]
    assert rest == b""


def test_event_split_across_reads_gets_completion_time():
    raw = ev('{"choices":[{"text":"hello"}]}')
    reads = [(10, raw[:7]), (20, raw[7:-1]), (30, raw[-1:])]
    events, _ = parse_sse(reads)
    assert events == [(30, '{"choices":[{"text":"hello"}]}')]


def test_several_events_in_one_read_and_crlf():
    reads = [(5, b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\n')]
    assert [e for _, e in parse_sse(reads)[0]] == ['{"a":1}', '{"b":2}']


def test_usage_deltas_count_multi_token_chunks():
    reads = [(1, ev('{"id":"cmpl-1","choices":[{"text":" a"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}')),
             (2, ev('{"id":"cmpl-1","choices":[{"text":" b c"}],"usage":{"prompt_tokens":5,"completion_tokens":3}}')),
             (3, ev('{"id":"cmpl-1","choices":[{"text":" d","finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":4}}')),
             (4, ev('{"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4}}')), (5, b"data: [DONE]\n\n")]
    r = RequestRecord(index=0, intended_ns=0)
    assert interpret_events(parse_sse(reads)[0], r)
    assert list(r.chunk_tokens) == [1, 2, 1] and list(r.chunk_ns) == [1, 2, 3]
    assert r.output_tokens == 4 and r.prompt_tokens == 5 and r.tokens_from_usage
    assert r.response_id == "cmpl-1" and r.finish_reason == "length"


def test_cached_prompt_tokens_are_read_from_the_usage_details_and_absent_is_not_zero():
    """usage.prompt_tokens_details.cached_tokens (OpenAI; vLLM --enable-prompt-tokens-details; SGLang
    --enable-cache-report) is kept per request; a server that does not say it leaves -1, never 0."""
    final = '{"id":"c","choices":[],"usage":{"prompt_tokens":40,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":32}}}'
    reads = [(1, ev('{"id":"c","choices":[{"text":" a","finish_reason":"length"}]}')), (2, ev(final)), (3, b"data: [DONE]\n\n")]
    r = RequestRecord(index=0, intended_ns=0)
    assert interpret_events(parse_sse(reads)[0], r)
    assert r.cached_tokens == 32 and r.prompt_tokens == 40
    for details in ('', ',"prompt_tokens_details":null', ',"prompt_tokens_details":{"audio_tokens":0}'):
        r = RequestRecord(index=0, intended_ns=0)
        interpret_events(parse_sse([(1, ev('{"id":"c","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1' + details + '}}'))])[0], r)
        assert r.cached_tokens == -1, details


def test_error_event_and_malformed_event():
    r = RequestRecord(index=0, intended_ns=0)
    interpret_events(parse_sse([(1, ev('{"error":{"message":"out of memory","code":500}}'))])[0], r)
    assert r.error_kind == "server_error_event" and "out of memory" in r.error
    r2 = RequestRecord(index=0, intended_ns=0)
    interpret_events(parse_sse([(1, b"data: {not json\n\n")])[0], r2)
    assert r2.error_kind == "malformed"


def test_sglang_chat_stream_without_continuous_usage():
    data = (FIXTURES / "sglang-chat-stream.txt").read_bytes()
    reads = [(i, line + b"\n\n") for i, line in enumerate(data.split(b"\n\n")) if line.strip()]
    r = RequestRecord(index=0, intended_ns=0)
    assert interpret_events(parse_sse(reads)[0], r)
    # role-only first chunk is not a token; three content chunks; usage total from the final chunk
    assert list(r.chunk_tokens) == [1, 1, 1] and r.output_tokens == 3 and r.prompt_tokens == 12
    assert not r.tokens_from_usage  # per-chunk counts were client-side
    assert r.output_text == "Hello world!"
