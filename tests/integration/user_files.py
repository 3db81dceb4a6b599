"""The four kinds of user file that did not load as-is, made from a few rows of the real shapes, with the
`trilemma run` arguments that read each and what every request must then carry (exact token counts)."""

import gzip
import json
from pathlib import Path

QUESTIONS = ["what is the capital of france and why", "name three primary colours", "how far away is the moon from the earth",
             "write one sentence about the sea", "which planet is the largest in the solar system", "why is the sky blue"]


def make(tmp: Path) -> dict[str, tuple[list, dict]]:
    """kind -> (`trilemma run` arguments, {request index: (exact ISL, OSL)} where the file gives lengths; a
    prompt file's ISL is what the harness counted, and the server must count the same)."""
    qa = tmp / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in QUESTIONS))
    gz = tmp / "qa.jsonl.gz"
    gz.write_bytes(gzip.compress(qa.read_bytes()))
    lengths = tmp / "lengths.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{40 + 9 * i},{4 + i}\n" for i in range(6)))
    moon = tmp / "moon.jsonl"
    moon.write_text("".join(json.dumps({"timestamp": 300 * i, "input_length": 600 - 40 * i, "output_length": 5,
                                        "hash_ids": [1, 2 + i]}) + "\n" for i in range(6)))
    return {
        "question": (["--dataset", f"file:{qa}", "--columns", "prompt=question", "--osl", 6], {}),
        "gzip": (["--dataset", f"file:{gz}", "--columns", "prompt=question"], {}),
        "lengths": (["--dataset", f"file:{lengths}", "--columns", "input_tokens=num_prefill_tokens,output_tokens=num_decode_tokens"],
                    {i: (40 + 9 * i, 4 + i) for i in range(6)}),
        "mooncake": (["--dataset", f"mooncake:{moon}"], {i: (600 - 40 * i, 5) for i in range(6)}),
    }


def check(df, expected: dict) -> None:
    """Every request ok, the server's prompt token count equal to the harness' (exact prompts), and the
    file's lengths exact where it gives them."""
    df = df.sort_values("index")
    assert len(df) == 6 and df["ok"].all(), df[["index", "ok", "error"]]
    assert (df["prompt_tokens"] == df["isl"]).all(), df[["index", "isl", "prompt_tokens", "source"]]
    for i, (isl, osl) in expected.items():
        row = df[df["index"] == i].iloc[0]
        assert (row["prompt_tokens"], row["output_tokens"]) == (isl, osl), row["source"]


def sharegpt(tmp: Path, turns: int = 3, n: int = 4, name: str = "sg.json") -> Path:
    """n ShareGPT conversations of `turns` user turns (about 60 words each, so a history spans several KV
    blocks) with recorded answers of 6-8 words (the lengths each turn asks for)."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    convs = []
    for c in range(n):
        conv = []
        for t in range(turns):
            conv.append({"from": "human", "value": " ".join(words[(c + t + k) % len(words)] for k in range(60))})
            conv.append({"from": "gpt", "value": " ".join(words[:6 + t])})
        convs.append({"id": f"c{c}", "conversations": conv})
    p = tmp / name
    p.write_text(json.dumps(convs))
    return p


def check_sessions(doc: dict, df, turns: int, n: int, think_s: float, words_are_tokens: bool = False) -> None:
    """Every turn ok; turn k+1 carries the history (its prompt holds turn k's prompt and answer) and is sent
    after turn k's answer ended plus the think time; per-turn TTFT and sessions in the summary."""
    assert len(df) == turns * n and df["ok"].all(), df[["index", "turn", "ok", "error"]]
    df = df.set_index(["conversation", "turn"]).sort_index()
    for c in range(n):
        for t in range(1, turns):
            prev, cur = df.loc[(c, t - 1)], df.loc[(c, t)]
            assert cur["prompt_tokens"] > prev["prompt_tokens"] + prev["output_tokens"]
            assert cur["sent_ns"] >= prev["end_ns"] + think_s * 1e9
            # each turn asks for its recorded answer's length (answers grow by a word a turn) and gets it exactly
            assert cur["output_tokens"] == cur["osl"] and cur["osl"] > prev["osl"]
            if words_are_tokens:  # the simulator's tokenizer: one word, one token
                assert cur["osl"] == 6 + t
    s = doc["summary"]
    assert sorted(s["per_turn"]) == [str(t) for t in range(turns)]
    assert s["sessions"]["n"] == n and s["sessions"]["complete"] == n and s["sessions"]["turns_mean"] == turns
    assert s["sessions"]["duration_s"]["p50"] > (turns - 1) * think_s
