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
