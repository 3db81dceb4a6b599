"""Users' own files without a server: every format and compression, column mapping, their own traces in the
shipped traces' formats, and bad files answered with one line naming the file and line."""

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.config import SpecError, WorkloadSpec
from bench.prompts import PromptBuilder, WordTokenizer
from bench.workload import Workload

QA = [{"question": "what is the capital of france", "answer": "paris"},
      {"question": "name three primary colours please", "answer": "red yellow blue"}]


def wl(dataset: str, **kw) -> Workload:
    return Workload(WorkloadSpec(dataset=dataset, **kw), PromptBuilder(WordTokenizer()), seed=0)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def zstd(data: bytes) -> bytes:
    out = pa.BufferOutputStream()
    with pa.CompressedOutputStream(out, "zstd") as z:
        z.write(data)
    return out.getvalue().to_pybytes()


def test_a_question_column_is_the_prompt_once_mapped(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_bytes(jsonl(QA))
    with pytest.raises(SpecError, match=r"qa.jsonl:1: give one of the columns .*found: question, answer.*--columns"):
        wl(f"file:{f}")
    w = wl(f"file:{f}", columns="prompt=question")
    assert [w.item(i).prompt for i in range(2)] == [r["question"] for r in QA]
    assert w.item(0).isl == 6  # counted by the tokenizer: the exact prompt, not a synthetic one
    with pytest.raises(ValueError, match="unknown field 'question'"):
        WorkloadSpec(dataset=f"file:{f}", columns="question=prompt")
    with pytest.raises(SpecError, match=r"qa.jsonl:1: no column 'query' to map \(found: question, answer\)"):
        wl(f"file:{f}", columns={"prompt": "query"})


@pytest.mark.parametrize("name,pack", [("qa.jsonl.gz", gzip.compress), ("qa.jsonl.bz2", bz2.compress),
                                       ("qa.jsonl.zst", zstd), ("qa.data", gzip.compress)])  # the last: by magic bytes
def test_compressed_files_read_the_same(tmp_path, name, pack):
    f = tmp_path / name
    f.write_bytes(pack(jsonl(QA)))
    w = wl(f"file:{f}", columns="prompt=question")
    assert [w.item(i).prompt for i in range(2)] == [r["question"] for r in QA]


def test_every_table_format_gives_the_same_rows(tmp_path):
    rows = [{"q": "one two three", "n": 5}, {"q": "four five", "n": 7}]
    (tmp_path / "a.csv").write_text("q,n\none two three,5\nfour five,7\n")
    (tmp_path / "a.tsv").write_text("q\tn\none two three\t5\nfour five\t7\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_bytes(jsonl(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for ext in ("csv", "tsv", "json", "jsonl", "parquet"):
        w = wl(f"file:{tmp_path / f'a.{ext}'}", columns="prompt=q,output_tokens=n")
        assert [(w.item(i).prompt, w.item(i).osl) for i in range(2)] == [("one two three", 5), ("four five", 7)], ext


def test_a_length_only_csv_is_mapped_to_exact_lengths(tmp_path):
    f = tmp_path / "lengths.csv"
    f.write_text("num_prefill_tokens,num_decode_tokens\n40,8\n17,3\n")
    with pytest.raises(SpecError, match="found: num_prefill_tokens, num_decode_tokens"):
        wl(f"file:{f}")
    w = wl(f"file:{f}", columns="input_tokens=num_prefill_tokens,output_tokens=num_decode_tokens")
    assert [(w.item(i).isl, w.item(i).osl, len(w.item(i).prompt.split())) for i in range(2)] == [(40, 8, 40), (17, 3, 17)]


def test_a_users_mooncake_trace_replays_its_times_and_shares_its_blocks(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_bytes(jsonl([{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [7, 8]},
                         {"timestamp": 1500, "input_length": 520, "output_length": 6, "hash_ids": [7, 9]},
                         {"timestamp": 900, "input_length": 100, "output_length": 2, "hash_ids": [10]}]))
    w = wl(f"mooncake:{f}", speedup=2.0)
    assert w.source.timed and w.source.size == 3
    items = [w.item(i) for i in range(3)]  # sorted by time: 0, 900, 1500 ms
    assert [it.offset_ns for it in items] == [0, 450_000_000, 750_000_000]
    assert [it.isl for it in items] == [600, 100, 520] and items[0].source == "mooncake:mine.jsonl:row 0"
    first_block = [" ".join(it.prompt.split()[:512]) for it in (items[0], items[2])]
    assert first_block[0] == first_block[1]  # hash id 7 in both: the same 512-token block of text
    (tmp_path / "bad.jsonl").write_bytes(jsonl([{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": "x"}]))
    with pytest.raises(SpecError, match=r"bad.jsonl:1: hash_ids must be a list of integers"):
        wl(f"mooncake:{tmp_path / 'bad.jsonl'}")


def test_burstgpt_leaves_out_and_counts_failed_requests(tmp_path):
    f = tmp_path / "burst.csv"
    f.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,100,20,120,Conversation log\n6,GPT-4,80,0,80,Conversation log\n9,ChatGPT,30,7,37,API log\n")
    w = wl(f"burstgpt:{f}")
    assert w.source.size == 2 and w.source.describe()["failed_rows_skipped"] == 1
    assert [(w.item(i).isl, w.item(i).osl, w.item(i).offset_ns) for i in range(2)] == [(100, 20, 0), (30, 7, 4_000_000_000)]


def test_a_users_azure_trace(tmp_path):
    f = tmp_path / "az.csv.gz"
    f.write_bytes(gzip.compress(b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,30,4\n2023-11-16 18:15:48.0,12,9\n"))
    w = wl(f"azure:{f}")
    assert [(w.item(i).isl, w.item(i).osl, w.item(i).offset_ns) for i in range(2)] == [(30, 4, 0), (12, 9, 1_500_000_000)]


@pytest.mark.parametrize("content,dataset,match", [
    (b'{"prompt": "a"}\n{"prompt": \n', "file", r"x:2: not valid JSON"),
    (b"\x1f\x8b\x08\x00garbage", "file", r"x: looks gzip-compressed but does not decompress"),
    (b"\xff\xfe\x00a,b", "file", r"x: not UTF-8 text"),
    (b"Timestamp,Model,Request tokens,Response tokens\n1,m,ten,3\n", "burstgpt", r"x:2: column 'Request tokens' must be a number"),
    (b"TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,4\n", "azure", r"x:2: TIMESTAMP must look like"),
    (b'{"timestamp": 0, "input_length": 5}\n', "mooncake", r"x:1: no column 'output_length' \(found: timestamp, input_length\)"),
])
def test_bad_files_get_one_line_naming_file_and_line(tmp_path, content, dataset, match):
    f = tmp_path / "x"
    f.write_bytes(content)
    with pytest.raises(SpecError, match=match):
        wl(f"{dataset}:{f}")


SHAREGPT = [{"id": "c1", "conversations": [{"from": "human", "value": "hello there friend"}, {"from": "gpt", "value": "hi how are you"},
                                           {"from": "human", "value": "tell me a story"}, {"from": "gpt", "value": "once upon a time"},
                                           {"from": "human", "value": "and then"}, {"from": "gpt", "value": "the end"}]},
            {"id": "c2", "conversations": [{"from": "human", "value": "one question only"}]}]


def test_sharegpt_conversations_become_sessions_of_turns(tmp_path):
    f = tmp_path / "sg.json"
    f.write_text(json.dumps(SHAREGPT))
    w = wl(f"sharegpt:{f}", think_s=2.0)
    assert w.source.size == 2 and w.source.describe()["turns_max"] == 3
    it = w.item(0)
    assert it.prompt == [{"role": "user", "content": "hello there friend"}] and it.turn == 0 and it.think_s == 2.0
    assert it.osl == 4  # the recorded answer's tokens: the length this turn asks for
    assert [(q, o, think) for q, _, o, think in it.followups] == [("tell me a story", 4, None), ("and then", 2, None)]
    assert w.item(1).followups == [] and w.item(1).index == 16  # turns of session i are 16·i + k
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"},
                                             {"role": "assistant", "content": "c"}, {"role": "user", "content": "d e f"}]}) + "\n")
    c = wl(f"chat:{chat}").item(0)
    assert c.prompt == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"}]
    assert [q for q, *_ in c.followups] == ["d e f"]
    (tmp_path / "bad.jsonl").write_text('{"conversations": [{"from": "human"}]}\n')
    with pytest.raises(SpecError, match=r"bad.jsonl:1: each turn must be an object with a text 'value'"):
        wl(f"sharegpt:{tmp_path / 'bad.jsonl'}")
    (tmp_path / "none.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(SpecError, match=r"none.jsonl:1: expected 'conversations'.*found: text"):
        wl(f"sharegpt:{tmp_path / 'none.jsonl'}")


def test_a_conversations_own_timestamps_give_its_think_times(tmp_path):
    """Turns with timestamps (epoch seconds, milliseconds or ISO 8601): each follow-up waits the trace's gap
    between the recorded answer and the next user turn; turns without one use --think-time; a gap that goes
    backwards or an unreadable time is one line naming file and line."""
    chat = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": "a", "timestamp": 100}, {"role": "assistant", "content": "b", "timestamp": 101.5},
                          {"role": "user", "content": "c", "timestamp": 104.0}, {"role": "assistant", "content": "d", "timestamp": 105},
                          {"role": "user", "content": "e"}]},
            {"messages": [{"role": "user", "content": "a", "created_at": "2024-05-01T12:00:00Z"},
                          {"role": "assistant", "content": "b", "created_at": "2024-05-01T12:00:02Z"},
                          {"role": "user", "content": "c", "created_at": "2024-05-01T12:00:09.5Z"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "timestamp": 1_714_564_800_000},
                          {"role": "user", "content": "c", "timestamp": 1_714_564_803_250}]}]
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    w = wl(f"chat:{chat}", think_s=0.7)
    assert [think for *_, think in w.item(0).followups] == [2.5, None]  # 104 - 101.5; the last turn has no time
    assert [think for *_, think in w.item(1).followups] == [7.5] and [think for *_, think in w.item(2).followups] == [3.25]
    assert w.source.describe()["think_from_trace"] == 3 and w.item(0).think_s == 0.7
    cut = wl(f"chat:{chat}", max_think_s=3.0)  # a log's long gaps (hours between turns) are cut: a run never sleeps that long
    assert [think for *_, think in cut.item(1).followups] == [3.0] and [think for *_, think in cut.item(2).followups] == [3.0]
    d = cut.source.describe()
    assert d["think_longest_s"] == 7.5 and d["think_cut_to_max"] == 2
    for bad, match in (({"role": "user", "content": "c", "timestamp": 100.5}, r"chat.jsonl:1: turn 1's timestamp is before the answer"),
                       ({"role": "user", "content": "c", "timestamp": "yesterday"}, r"chat.jsonl:1: timestamp 'yesterday' is neither"),
                       ({"role": "user", "content": "c", "timestamp": float("nan")}, r"chat.jsonl:1: timestamp nan is neither")):
        chat.write_text(json.dumps({"messages": [*rows[0]["messages"][:2], bad]}) + "\n")
        with pytest.raises(SpecError, match=match):
            wl(f"chat:{chat}")


def test_a_local_dataset_snapshot_directory(tmp_path):
    """A Hugging Face `save_to_disk` directory (Arrow stream shards beside dataset_info.json and state.json)
    and a hub snapshot of parquet shards read as one file, with the same column mapping."""
    import pyarrow.ipc as ipc

    saved = tmp_path / "saved"
    saved.mkdir()
    for k, rows in enumerate((QA[:1], QA[1:])):
        t = pa.Table.from_pylist(rows)
        with ipc.new_stream(saved / f"data-0000{k}-of-00002.arrow", t.schema) as w:
            w.write_table(t)
    (saved / "dataset_info.json").write_text('{"features": {}}')
    (saved / "state.json").write_text('{"_data_files": []}')
    hub = tmp_path / "snapshot" / "data"
    hub.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(QA[:1]), hub / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(QA[1:]), hub / "train-00001-of-00002.parquet")
    for d in (saved, tmp_path / "snapshot"):
        w = wl(f"file:{d}", columns="prompt=question")
        assert [w.item(i).prompt for i in range(2)] == [r["question"] for r in QA]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="a directory with no data files"):
        wl(f"file:{tmp_path / 'empty'}")
