"""Texts -> token ids, with the checkpoint's own fast tokenizer, truncation reported.

The tokenizer is asked explicitly for no padding and truncation at
max_seq_length on every call, so settings stored in `tokenizer.json` (the
all-MiniLM-L6-v2 one pads to 128) never leak in. Padding is the batcher's job.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from berta_jax.errors import ConfigError

# Texts longer than this many characters per token of context are cut before
# tokenizing (a multi-megabyte string would otherwise be tokenized whole just to
# keep its first max_seq_length tokens). The cut is checked never to change the result.
CHARS_PER_TOKEN_LIMIT = 64
_WHITESPACE = re.compile(r"\s")


@dataclasses.dataclass(frozen=True)
class TokenizedTexts:
    """Per-text token ids (variable length, special tokens included) and truncation flags."""

    input_ids: list[np.ndarray]  # each [length], int32
    token_type_ids: list[np.ndarray]  # each [length], int32
    truncated: np.ndarray  # [n] bool: the text was cut to max_seq_length tokens
    prompt_length: int  # tokens of [CLS] + prompt (0 without a prompt), as sentence-transformers counts them

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)


class TextTokenizer:
    """The checkpoint's fast tokenizer with explicit, per-call padding/truncation settings."""

    def __init__(
        self, hf_tokenizer, max_seq_length: int, model_vocab_size: int, source: str = "tokenizer", lowercase: bool = False
    ):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ConfigError(f"{source}: a fast (Rust) tokenizer is required; the folder needs a tokenizer.json")
        if len(hf_tokenizer) > model_vocab_size:
            raise ConfigError(
                f"{source}: the tokenizer has {len(hf_tokenizer)} tokens but the model's embedding table has "
                f"vocab_size={model_vocab_size} rows; ids past the table would read wrong rows"
            )
        self.hf = hf_tokenizer
        self.lowercase = lowercase  # sentence-transformers' do_lower_case: lowercases prompt + text
        self.max_seq_length = max_seq_length
        self.char_limit = max_seq_length * CHARS_PER_TOKEN_LIMIT

    @classmethod
    def from_folder(
        cls, folder: str | Path, max_seq_length: int, model_vocab_size: int, lowercase: bool = False
    ) -> TextTokenizer:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{folder}: cannot load the tokenizer ({e})") from None
        return cls(tok, max_seq_length, model_vocab_size, source=str(folder), lowercase=lowercase)

    def _encode(self, texts: list[str], **kwargs):
        return self.hf(
            texts,
            add_special_tokens=True,
            padding=False,
            truncation=True,
            max_length=self.max_seq_length,
            return_overflowing_tokens=True,
            stride=0,
            return_attention_mask=False,
            return_token_type_ids=True,
            **kwargs,
        )

    def prompt_length(self, prompt: str) -> int:
        """[CLS] + prompt tokens, without a trailing special token (sentence-transformers' count)."""
        if not prompt:
            return 0
        ids = self.hf(prompt.lower() if self.lowercase else prompt, add_special_tokens=True, truncation=False)["input_ids"]
        if ids and ids[-1] in set(self.hf.all_special_ids):
            ids = ids[:-1]
        return len(ids)

    def __call__(self, texts: Sequence[str], prompt: str = "") -> TokenizedTexts:
        full = [(prompt + t).lower() if self.lowercase else prompt + t for t in texts]
        cut = [i for i, t in enumerate(full) if len(t) > self.char_limit]
        batch = [t[: self.char_limit] if len(t) > self.char_limit else t for t in full]
        enc = self._encode(batch) if batch else {"input_ids": [], "token_type_ids": [], "overflow_to_sample_mapping": []}
        first_row: dict[int, int] = {}
        truncated = np.zeros(len(full), dtype=bool)
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            if sample in first_row:
                truncated[sample] = True
            else:
                first_row[sample] = row
        ids = [np.asarray(enc["input_ids"][first_row[i]], dtype=np.int32) for i in range(len(full))]
        types = [np.asarray(enc["token_type_ids"][first_row[i]], dtype=np.int32) for i in range(len(full))]
        for i in cut:
            if not (truncated[i] and self._cut_is_safe(batch[i])):
                whole = self._encode([full[i]])
                ids[i] = np.asarray(whole["input_ids"][0], dtype=np.int32)
                types[i] = np.asarray(whole["token_type_ids"][0], dtype=np.int32)
                truncated[i] = len(whole["input_ids"]) > 1
        return TokenizedTexts(ids, types, truncated, self.prompt_length(prompt))

    def _cut_is_safe(self, cut_text: str) -> bool:
        """The kept tokens end before a whitespace that precedes the cut, so the cut cannot change them."""
        enc = self._encode([cut_text], return_offsets_mapping=True)
        ends = [end for start, end in enc["offset_mapping"][0] if end > start]
        return bool(ends) and _WHITESPACE.search(cut_text, max(ends)) is not None
