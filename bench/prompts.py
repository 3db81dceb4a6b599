"""Tokenizers and exact-length prompts: count tokens as the served model does, and build prompts of exactly N.

Exact prompt lengths: we find "pieces" — words that the served tokenizer turns into exactly one token
when preceded by a space, and whose concatenation is additive (byte-level BPE and SentencePiece do not
merge across a space). A prompt of N tokens is then `N − overhead` pieces, where the overhead is what
the server adds (BOS, chat template). Counts come from the server's `/tokenize` (vLLM, SGLang) or a
local `tokenizer.json`; built prompts are re-counted (a sample, or all with `verify="all"`) and fixed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.config import SpecError

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------ tokenizers
class Tokenizer:
    """Counts tokens as the server will. `count(text)` includes special tokens the server adds for a
    completions prompt; `count_chat(messages)` includes the chat template."""

    max_model_len: int | None = None

    def count(self, text: str) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def count_chat(self, messages: list) -> int:  # pragma: no cover
        raise NotImplementedError


class ServerTokenizer(Tokenizer):
    """Uses the server's /tokenize endpoint (vLLM, SGLang)."""

    def __init__(self, base_url: str, model: str, headers: dict | None = None):
        self.http = httpx.Client(base_url=base_url, headers=headers or {}, timeout=30)
        self.model = model

    def _post(self, payload: dict) -> int:
        from bench.client import control_call, redact

        base = str(self.http.base_url)
        r = control_call("POST /tokenize", base, lambda: self.http.post("/tokenize", json={"model": self.model, **payload}), 30)
        if r.status_code != 200:
            body = redact(r.text[:200].replace("\n", " "), [self.http.headers.get("authorization")])
            raise SpecError(f"/tokenize answered HTTP {r.status_code}: {body}; pass --tokenizer PATH to count locally")
        try:
            obj = r.json()
            if self.max_model_len is None and obj.get("max_model_len"):
                self.max_model_len = int(obj["max_model_len"])
            return int(obj["count"]) if "count" in obj else len(obj["tokens"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SpecError(f"/tokenize returned no token count ({r.text[:80]!r}); pass --tokenizer PATH to count locally") from None

    def count(self, text: str) -> int:
        return self._post({"prompt": text})

    def count_chat(self, messages: list) -> int:
        return self._post({"messages": messages, "add_generation_prompt": True})

    @staticmethod
    def available(base_url: str, model: str, headers: dict | None = None) -> bool:
        from bench.client import ControlPlaneError, control_call

        try:
            r = control_call("POST /tokenize", base_url, lambda: httpx.post(base_url + "/tokenize", json={"model": model, "prompt": "hello"},
                                                                            headers=headers or {}, timeout=10), 10)
            return r.status_code == 200 and ("count" in r.json() or "tokens" in r.json())
        except (ControlPlaneError, ValueError, AttributeError):
            return False


class LocalTokenizer(Tokenizer):
    """A local Hugging Face tokenizer (`tokenizer.json`, or a model dir holding it). Chat counting needs
    the template: `chat_template` in tokenizer_config.json, or `chat_template.jinja` beside it (where
    transformers saves it today); rendering it uses jinja2."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as HFTok

        p = Path(path)
        tj = p / "tokenizer.json" if p.is_dir() else p
        if not tj.is_file():
            raise SpecError(f"--tokenizer {path}: no tokenizer.json there; give a model dir or a tokenizer.json path")
        self.tok = HFTok.from_file(str(tj))
        cfg = tj.parent / "tokenizer_config.json"
        self.config = json.loads(cfg.read_text()) if cfg.is_file() else {}
        self.bos = self.config.get("bos_token") if isinstance(self.config.get("bos_token"), str) else None
        jinja = tj.parent / "chat_template.jinja"
        if not self.config.get("chat_template") and jinja.is_file():
            self.config["chat_template"] = jinja.read_text()

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True).ids)

    def count_chat(self, messages: list) -> int:
        import jinja2

        tpl = self.config.get("chat_template")
        if not tpl:
            raise SpecError("--tokenizer has no chat template (neither chat_template in tokenizer_config.json nor chat_template.jinja); "
                            "use --api completions or the server's /tokenize")
        text = jinja2.Environment().from_string(tpl).render(messages=messages, add_generation_prompt=True, bos_token=self.bos or "")
        return len(self.tok.encode(text, add_special_tokens=False).ids)


class WordTokenizer(Tokenizer):
    """Fallback when no tokenizer is available: one token per space-separated word (approximate; the
    run warns through the token-count mismatch check)."""

    def count(self, text: str) -> int:
        return len(text.split())

    def count_chat(self, messages: list) -> int:
        return sum(len(str(m.get("content", "")).split()) for m in messages)


# ------------------------------------------------------------------ exact-length prompts
def _candidate_words() -> list[str]:
    words = re.findall(r"[a-z]+", (DATA / "traces" / "vllm-sonnet" / "sonnet.txt").read_text().lower())
    seen: dict[str, None] = {}
    for w in sorted(words, key=lambda w: (len(w), w)):
        if 2 <= len(w) <= 6:
            seen.setdefault(w, None)
    return list(seen)[:400]


class PromptBuilder:
    """Builds prompts of exact token counts for one tokenizer and API."""

    def __init__(self, tok: Tokenizer, api: str = "completions"):
        self.tok, self.api = tok, api
        counts = {w: tok.count(" " + w) for w in _candidate_words()}
        base1 = min(counts.values())
        self.pieces = np.array([" " + w for w, c in counts.items() if c == base1])
        if len(self.pieces) < 16:
            raise SpecError("could not find single-token words for this tokenizer; pass --tokenizer for the served model")
        self.overhead = (self.count(self.pieces[0]) - 1)
        probe = "".join(self.pieces[:32])
        if self.count(probe) != self.overhead + 32:
            # not additive (unusual tokenizer): keep going but the verify step will fix each prompt
            pass

    def count(self, text: str) -> int:
        if self.api == "chat":
            return self.tok.count_chat([{"role": "user", "content": text}])
        return self.tok.count(text)

    def text(self, rng: np.random.Generator, n_tokens: int, prefix: str = "", prefix_tokens: int = 0) -> str:
        k = max(1, n_tokens - self.overhead - prefix_tokens)
        return prefix + "".join(rng.choice(self.pieces, k))

    def fix(self, text: str, target: int, rng: np.random.Generator) -> tuple[str, int]:
        """Re-count and add/remove pieces until the count hits `target` (few iterations)."""
        n = self.count(text)
        for _ in range(6):
            if n == target:
                break
            if n < target:
                text += "".join(rng.choice(self.pieces, target - n))
            else:
                cut = 0
                for _ in range(n - target):
                    cut = text.rfind(" ", 0, len(text) - 1 if cut == 0 else cut)
                text = text[:max(cut, 1)]
            n = self.count(text)
        return text, n


# ------------------------------------------------------------------ synthetic workload
class PromptCache:
    """The tokenizer and prompt pieces found for a target — (url, model, api, tokenizer, server version) — kept across
    the points that share it (a sweep's, a calibration ladder's): finding them costs a few hundred /tokenize calls. The
    caller that makes one closes it (its server tokenizers hold a connection)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], tuple[Tokenizer, str, PromptBuilder]] = {}

    def close(self) -> None:
        for tok, _, _ in self.entries.values():
            http = getattr(tok, "http", None)
            if http is not None:
                http.close()
        self.entries.clear()

    def __enter__(self) -> PromptCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_tokenizer(tokenizer_path: str | None, base_url: str, model: str, headers: dict | None) -> tuple[Tokenizer, str]:
    """Local tokenizer if given, else the server's /tokenize, else the approximate word counter."""
    if tokenizer_path:
        return LocalTokenizer(tokenizer_path), f"local:{tokenizer_path}"
    if ServerTokenizer.available(base_url, model, headers):
        return ServerTokenizer(base_url, model, headers), "server:/tokenize"
    return WordTokenizer(), "approximate:words"
