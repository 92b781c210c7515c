"""Texts -> token ids, with the checkpoint's own fast tokenizer, truncation reported.

The tokenizer is asked explicitly for no padding and truncation at max_seq_length on every call, so
settings stored in `tokenizer.json` (the all-MiniLM-L6-v2 one pads to 128) never leak in. Padding is
the batcher's job. Lowercasing (`do_lower_case`) is done as sentence-transformers does it: the
tokenizers library's `Lowercase` normalizer in front of the tokenizer's own normalizer.

Cost per text is bounded by the context, whatever the text: a text too long to matter is first
reduced (`wordpiece.reduce`) to a prefix that tokenizes to exactly the same first tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from berta_jax.text import wordpiece
from berta_jax.errors import ConfigError
from berta_jax.storage.model_files import TOKENIZER_LIMIT, ModelFiles
from berta_jax.storage.json_fields import Fields

# Files the transformers tokenizer loader may open; each is checked before it does.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "config.json",
)
_SPECIAL_TOKENS = ("cls_token", "sep_token", "pad_token", "unk_token")


@dataclasses.dataclass(frozen=True)
class TokenizedTexts:
    """Per-text token ids (variable length, special tokens included) and truncation flags."""

    input_ids: list[np.ndarray]  # each [length], int32
    token_type_ids: list[np.ndarray]  # each [length], int32
    truncated: np.ndarray  # [n] bool: the text was cut to max_seq_length tokens
    # tokens of [CLS] + prompt (0 without a prompt), as sentence-transformers counts them
    prompt_length: int

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)


class TextTokenizer:
    """The checkpoint's fast tokenizer with explicit, per-call padding/truncation settings."""

    def __init__(
        self,
        hf_tokenizer,
        max_seq_length: int,
        model_vocab_size: int,
        source: str = "tokenizer",
        lowercase: bool = False,
    ):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ConfigError(
                f"{source}: a fast (Rust) tokenizer is required; the folder needs a tokenizer.json"
            )
        check_agreement(hf_tokenizer, model_vocab_size, source)
        self.hf = with_lowercase(hf_tokenizer) if lowercase else hf_tokenizer
        self.lowercase = lowercase
        self.max_seq_length = max_seq_length
        self.reducer = wordpiece.Reducer.for_tokenizer(
            json.loads(self.hf.backend_tokenizer.to_str()), max_seq_length
        )

    @classmethod
    def from_files(
        cls, files: ModelFiles, max_seq_length: int, model_vocab_size: int, lowercase: bool = False
    ) -> TextTokenizer:
        present = [name for name in TOKENIZER_FILES[:-1] if files.exists(name)]
        source = f"{files.folder} (tokenizer from {', '.join(present)})"
        return cls(load_hf_tokenizer(files), max_seq_length, model_vocab_size, source, lowercase)

    def _encode(self, texts: list[str]):
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
        )

    def prompt_length(self, prompt: str) -> int:
        """[CLS] + prompt tokens after truncation to the context, without a trailing special token:
        the count sentence-transformers excludes from pooling with include_prompt=false."""
        if not prompt:
            return 0
        ids = self.hf(
            prompt, add_special_tokens=True, truncation=True, max_length=self.max_seq_length
        )["input_ids"]
        if ids and ids[-1] in set(self.hf.all_special_ids):
            ids = ids[:-1]
        return len(ids)

    def __call__(self, texts: Sequence[str], prompt: str = "") -> TokenizedTexts:
        batch = [self.reducer(prompt + t) for t in texts]
        enc = (
            self._encode(batch)
            if batch
            else {"input_ids": [], "token_type_ids": [], "overflow_to_sample_mapping": []}
        )
        first_row: dict[int, int] = {}
        truncated = np.zeros(len(batch), dtype=bool)
        for row, sample in enumerate(enc["overflow_to_sample_mapping"]):
            if sample in first_row:
                truncated[sample] = True
            else:
                first_row[sample] = row
        ids = [
            np.asarray(enc["input_ids"][first_row[i]], dtype=np.int32) for i in range(len(batch))
        ]
        types = [
            np.asarray(enc["token_type_ids"][first_row[i]], dtype=np.int32)
            for i in range(len(batch))
        ]
        return TokenizedTexts(ids, types, truncated, self.prompt_length(prompt))


def with_lowercase(hf_tokenizer):
    """A copy whose normalizer starts with tokenizers' `Lowercase`, exactly as sentence-transformers
    does for do_lower_case (it maps a word-final capital sigma to σ, where Python's str.lower()
    gives ς)."""
    from tokenizers.normalizers import Lowercase, Sequence as NormalizerSequence

    tokenizer = copy.deepcopy(hf_tokenizer)
    backend = tokenizer.backend_tokenizer
    normalizer = backend.normalizer
    if not _has_lowercase(normalizer):
        rest = (
            list(normalizer)
            if isinstance(normalizer, NormalizerSequence)
            else [normalizer]
            if normalizer
            else []
        )
        backend.normalizer = NormalizerSequence([Lowercase(), *rest])
    return tokenizer


def _has_lowercase(normalizer) -> bool:
    from tokenizers.normalizers import Lowercase, Sequence as NormalizerSequence

    if isinstance(normalizer, Lowercase):
        return True
    return isinstance(normalizer, NormalizerSequence) and any(
        isinstance(n, Lowercase) for n in normalizer
    )


def load_hf_tokenizer(files: ModelFiles):
    """The folder's fast tokenizer, after checking every file the transformers loader may open."""
    # berta-jax needs only transformers' tokenizers: its advice that PyTorch is missing is noise
    # here
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    present = [name for name in TOKENIZER_FILES if files.exists(name)]
    if "tokenizer.json" not in present and "vocab.txt" not in present:
        raise ConfigError(
            f"{files.folder}: no tokenizer.json or vocab.txt; the model folder must ship its "
            "tokenizer (transformers would otherwise build an empty one and turn every word into "
            "[UNK])"
        )
    for name in present:
        files.path(name, TOKENIZER_LIMIT)
    if "tokenizer_config.json" in present:
        _check_tokenizer_config(
            Fields(
                files.read_json("tokenizer_config.json", TOKENIZER_LIMIT),
                str(files.folder / "tokenizer_config.json"),
            )
        )
    for name in ("special_tokens_map.json", "added_tokens.json", "tokenizer.json"):
        if name in present:
            Fields(files.read_json(name, TOKENIZER_LIMIT), str(files.folder / name))
    try:
        return AutoTokenizer.from_pretrained(
            str(files.folder), use_fast=True, trust_remote_code=False
        )
    except Exception as e:
        # third-party parsing of untrusted files raises many types: name the files
        raise ConfigError(
            f"{files.folder}: cannot build the tokenizer from {', '.join(present)} "
            f"({type(e).__name__}: {e})"
        ) from e


def _check_tokenizer_config(f: Fields) -> None:
    """The fields of tokenizer_config.json that change tokenization, with their types."""
    f.number("model_max_length", None, minimum=0)
    for name in (
        "do_lower_case",
        "tokenize_chinese_chars",
        "clean_up_tokenization_spaces",
        "do_basic_tokenize",
    ):
        f.bool(name, None)
    if f.raw.get("strip_accents") is not None:
        f.bool("strip_accents")
    f.str("tokenizer_class", None)
    for side in ("padding_side", "truncation_side"):
        f.str(side, None, choices=("left", "right"))
    for name in (*_SPECIAL_TOKENS, "mask_token"):
        value = f.raw.get(name)
        if value is not None and not isinstance(value, (str, dict)):
            raise ConfigError(f"{f.source}: field {name}={value!r}: expected a token string")
    f.list("model_input_names", None, item=lambda v: isinstance(v, str), what="strings")
    f.object("added_tokens_decoder", None)


def check_agreement(hf_tokenizer, model_vocab_size: int, source: str) -> None:
    """The tokenizer must fit the model: every id inside the embedding table, the special tokens
    present."""
    if len(hf_tokenizer) > model_vocab_size:
        raise ConfigError(
            f"{source}: the tokenizer has {len(hf_tokenizer)} tokens but the model's embedding "
            f"table has vocab_size={model_vocab_size} rows (config.json); ids past the table would "
            "read wrong rows"
        )
    top = max(hf_tokenizer.get_vocab().values(), default=-1)
    if top >= model_vocab_size:
        raise ConfigError(
            f"{source}: the tokenizer assigns id {top}, outside the model's embedding table "
            f"(vocab_size={model_vocab_size} in config.json)"
        )
    missing = [
        name for name in _SPECIAL_TOKENS if getattr(hf_tokenizer, f"{name}_id", None) is None
    ]
    if missing:
        raise ConfigError(
            f"{source}: the tokenizer defines no {', '.join(missing)}; a BERT tokenizer needs "
            f"{', '.join(_SPECIAL_TOKENS)}"
        )
