"""Trace and dataset sources, without a server: a word-level tokenizer stands in for the server's."""

import numpy as np
import pytest

from bench import datasets
from bench.config import SpecError, WorkloadSpec
from bench.prompts import PromptBuilder, WordTokenizer
from bench.workload import Workload


@pytest.fixture
def builder():
    return PromptBuilder(WordTokenizer())


def test_azure_replay_offsets_and_lengths(builder):
    spec = WorkloadSpec(dataset="azure-conv", speedup=2.0, window_s=(0, 60))
    wl = Workload(spec, builder, seed=0)
    src = wl.source
    assert src.timed and src.size > 100
    first = wl.item(0)
    assert first.offset_ns == 0 and first.isl == 374 and first.osl == 44 and first.source == "azure-conv:row 0"
    second = wl.item(1)  # 18:15:50.9951690 - 18:15:46.6805900 = 4.314579 s, halved
    assert second.offset_ns == pytest.approx(4.314579e9 / 2, abs=1000)  # µs: float timestamps
    assert all(src.offset_ns(i) < 30e9 for i in range(src.size))  # 60 s of trace at 2x
    assert len(first.prompt.split()) == 374  # exact length for this tokenizer


def test_clipping_is_counted(builder):
    wl = Workload(WorkloadSpec(dataset="azure-code", window_s=(0, 120), max_model_len=1024), builder, seed=0)
    items = [wl.item(i) for i in range(wl.size)]
    assert all(it.isl + it.osl <= 1024 for it in items)
    assert wl.clipped > 0


def test_length_pairs_keep_the_correlation(builder):
    wl = Workload(WorkloadSpec(isl="trace:azure-conv"), builder, seed=1)
    pairs = np.array([wl.lengths(i, np.random.default_rng(i)) for i in range(400)])
    rows = {(r[1], r[2]) for r in datasets._azure_rows("azure-conv")}
    assert all((a, b) in rows for a, b in pairs)  # every sample is a real (ISL, OSL) row


def test_mooncake_equal_hash_ids_share_prompt_prefixes(builder):
    spec = WorkloadSpec(dataset="mooncake", window_s=(0, 5), max_model_len=8192)
    wl = Workload(spec, builder, seed=0)
    a, b = wl.item(0), wl.item(1)  # both start with hash id 0
    pa, pb = a.prompt.split(), b.prompt.split()
    assert pa[:512] == pb[:512] and pa[512:1024] != pb[512:1024]
    scr = Workload(WorkloadSpec(dataset="mooncake:scrambled", window_s=(0, 5), max_model_len=8192), builder, seed=0)
    sa, sb = scr.item(0), scr.item(1)
    assert sa.prompt.split()[:512] != sb.prompt.split()[:512] and sa.isl == a.isl


def test_mt_bench_items_carry_their_second_turn(builder):
    wl = Workload(WorkloadSpec(dataset="mt-bench", osl=32), builder, seed=0, api="chat")
    it = wl.item(0)
    assert it.turn == 0 and it.conversation == 81 and len(it.followups) == 1 and it.prompt[0]["role"] == "user"


def test_user_file_errors_name_the_line(tmp_path, builder):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hello there"}\n{"input_tokens": "many"}\n')
    with pytest.raises(SpecError, match=r"p.jsonl:2: column 'input_tokens' must be a number"):
        Workload(WorkloadSpec(dataset=f"file:{f}"), builder, seed=0)
    f.write_text('{"prompt": "a b c", "output_tokens": 5, "timestamp": 0}\n{"input_tokens": 7, "timestamp": 1.5}\n')
    wl = Workload(WorkloadSpec(dataset=f"file:{f}"), builder, seed=0)
    assert wl.source.timed and wl.item(1).offset_ns == 1_500_000_000 and wl.item(1).isl == 7
    assert wl.item(0).osl == 5 and wl.item(0).source.endswith("line 1")
    c = tmp_path / "p.csv"
    c.write_text("prompt,output_tokens\nhello,3\n,\n")
    with pytest.raises(SpecError, match=r"p.csv:3: give one of the columns"):
        Workload(WorkloadSpec(dataset=f"file:{c}"), builder, seed=0)


def test_unknown_dataset_lists_the_choices(builder):
    with pytest.raises(SpecError, match="azure-conv, azure-code, mooncake"):
        Workload(WorkloadSpec(dataset="nope"), builder, seed=0)


def test_mooncake_prompts_do_not_depend_on_the_hash_seed():
    """Equal seeds send byte-identical Mooncake prompts in every process, whatever PYTHONHASHSEED is."""
    import os
    import subprocess
    import sys

    code = ("import hashlib; from bench.config import WorkloadSpec; from bench.prompts import PromptBuilder, WordTokenizer\n"
            "from bench.workload import Workload\n"
            "for ds in ('mooncake', 'mooncake:scrambled'):\n"
            "    wl = Workload(WorkloadSpec(dataset=ds, window_s=(0, 5), max_model_len=8192), PromptBuilder(WordTokenizer()), seed=7)\n"
            "    print(hashlib.sha256(''.join(wl.item(i).prompt for i in range(6)).encode()).hexdigest())")
    out = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": s}, capture_output=True, text=True,
                          check=True).stdout for s in ("0", "1", "12345")}
    assert len(out) == 1 and len(next(iter(out)).split()) == 2, out
