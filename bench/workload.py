"""① Workload spec -> WorkItems: ISL/OSL sampling, prompts of exact token counts (bench.prompts), shared prefixes,
trace replay and text datasets (bench.datasets)."""

from __future__ import annotations

import numpy as np

from bench.config import WorkloadSpec
from bench.datasets import WorkItem, sample_lengths
from bench.prompts import PromptBuilder, WordTokenizer


class Workload:
    """Deterministic item generator: item(i) depends only on (seed, i).

    A finite dataset shorter than the schedule wraps around: item i uses row i mod N (as `vllm bench
    serve` oversamples a short dataset to the requested count, and GuideLLM cycles its data). Items
    built from a reused row are remembered (`reused`) so the run can state how many it sent."""

    def __init__(self, spec: WorkloadSpec, builder: PromptBuilder | None, seed: int, api: str = "completions"):
        from bench import datasets

        self.spec, self.builder, self.seed, self.api = spec, builder, seed, api
        self.clipped = 0  # items built with clipped lengths
        self.clipped_idx: set[int] = set()  # their indices (the run counts those actually sent)
        self.reused: set[int] = set()  # indices of items built from a wrapped-around dataset row
        self.source = None
        if spec.dataset or spec.isl.kind == "trace":
            self.source = datasets.open_source(spec.dataset or f"trace:{spec.isl.trace}", spec, seed)
        self.prefixes: list[tuple[str, int]] = []
        if spec.prefix_groups and builder is not None:
            rng = np.random.default_rng([seed, 7])
            for g in range(spec.prefix_groups):
                k = spec.prefix_tokens
                self.prefixes.append(("".join(rng.choice(builder.pieces, k)), k))

    @property
    def size(self) -> int | None:
        """Number of items for finite sources (traces/datasets), None for synthetic."""
        return self.source.size if self.source else None

    def lengths(self, i: int, rng: np.random.Generator) -> tuple[int, int]:
        if self.source is not None and self.source.has_lengths:
            return self.source.lengths(i, rng)
        isl = int(sample_lengths(self.spec.isl, 1, rng)[0])
        osl = int(sample_lengths(self.spec.osl, 1, rng)[0])
        return isl, osl

    def item(self, i: int) -> WorkItem:
        n = self.size
        row = i % n if (n and i >= n and self.source is not None and not self.source.wraps) else i
        clipped_before = self.clipped
        # rng from i, not the row: a reused row of `input_tokens` gets new text (no accidental cache hits)
        it = self._build(row, np.random.default_rng([self.seed, i]))
        if row != i:
            self.reused.add(i)
            it.index = i
        if self.clipped > clipped_before:
            self.clipped_idx.add(i)
        return it

    def _build(self, i: int, rng: np.random.Generator) -> WorkItem:
        if self.source is not None and self.source.makes_items:
            it = self.source.item(i, rng, self)
        else:
            isl, osl = self.lengths(i, rng)
            isl, osl = self._clip(isl, osl)
            group = -1
            prefix, ptok = "", 0
            if self.prefixes:
                group = int(rng.integers(0, len(self.prefixes)))
                prefix, ptok = self.prefixes[group]
                ptok = min(ptok, max(0, isl - 1 - (self.builder.overhead if self.builder else 0)))
            text = self.builder.text(rng, isl, prefix, ptok) if self.builder else " ".join(["hello"] * isl)
            it = WorkItem(i, text, isl, osl, prefix_group=group, source=self.source.name(i) if self.source else "synthetic")
            if self.source is not None:
                it.offset_ns = self.source.offset_ns(i)
        if self.api == "chat" and isinstance(it.prompt, str):
            it.prompt = [{"role": "user", "content": it.prompt}]
        return it

    def _clip(self, isl: int, osl: int) -> tuple[int, int]:
        mx = self.spec.max_model_len
        if mx and isl + osl > mx:
            self.clipped += 1
            osl = min(osl, mx - 1)
            isl = min(isl, mx - osl)
        return isl, osl

    def verify(self, items: list[WorkItem], sample: int = 32) -> int:
        """Re-count a sample of prompts (all if one is off) and fix them in place; returns fixes made."""
        if self.builder is None or isinstance(self.builder.tok, WordTokenizer):
            return 0
        fixes = 0
        pool = [it for it in items if isinstance(it.prompt, str) or it.turn <= 0]
        step = max(1, len(pool) // sample)
        todo = pool[::step]
        checked: set[int] = set()
        while todo:
            it = todo.pop()
            if it.index in checked or not isinstance(it.prompt, (str, list)):
                continue
            checked.add(it.index)
            text = it.prompt if isinstance(it.prompt, str) else it.prompt[-1]["content"]
            n = self.builder.count(text)
            if n != it.isl:
                fixes += 1
                text, _ = self.builder.fix(text, it.isl, np.random.default_rng([self.seed, it.index, 1]))
                if isinstance(it.prompt, str):
                    it.prompt = text
                else:
                    it.prompt[-1]["content"] = text
                if len(checked) < len(pool):  # one was off: check everything
                    todo = [p for p in pool if p.index not in checked]
        return fixes
