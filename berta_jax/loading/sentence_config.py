"""What a sentence-transformers folder says about turning tokens into a sentence vector.

Reads `modules.json` (Transformer -> Pooling [-> Normalize]), `1_Pooling/config.json` (pooling mode,
include_prompt), `sentence_bert_config.json` (max_seq_length, do_lower_case) and
`config_sentence_transformers.json` (prompts, default prompt, truncate_dim), each field with its
type checked. A plain HF folder without these gets what sentence-transformers gives it: mean
pooling, no normalisation, no prompts, the model's position limit (capped by the tokenizer's) as
context.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

from berta_jax.models.bert.config import BertConfig
from berta_jax.errors import ConfigError
from berta_jax.storage.model_files import ModelFiles
from berta_jax.storage.json_fields import Fields
from berta_jax.models.vectors import POOLING_MODES

# sentence-transformers' legacy boolean keys -> its pooling_mode names.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_KNOWN_MODULES = {_TRANSFORMER, _POOLING, _NORMALIZE}

# The prompt names `encode_query` / `encode_document` look for, in order: a model's own retrieval
# prompts.
RETRIEVAL_PROMPT_NAMES = {
    "query": ("query", "search_query"),
    "document": ("document", "search_document", "passage"),
}


@dataclasses.dataclass(frozen=True)
class SentenceConfig:
    """Pooling, normalisation, context length, prompts and output dimension of a sentence
    encoder."""

    pooling: str = "mean"
    include_prompt: bool = True
    normalize: bool = False
    max_seq_length: int = 512
    # sentence_bert_config.json do_lower_case: texts (prompt included) are lowercased
    lowercase: bool = False
    prompts: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    default_prompt_name: str | None = None
    # keep the first N dimensions (Matryoshka), as sentence-transformers does
    truncate_dim: int | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ConfigError(
                f"pooling={self.pooling!r} is not supported; choose one of "
                f"{', '.join(POOLING_MODES)}"
            )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ConfigError(
                f"default_prompt_name={self.default_prompt_name!r} is not among the prompts "
                f"({', '.join(self.prompts) or 'none'})"
            )
        object.__setattr__(self, "prompts", MappingProxyType(dict(self.prompts)))

    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prefix to prepend, as sentence-transformers chooses it ("" means none)."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("pass either prompt or prompt_name, not both")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not defined by this model; available: "
                    f"{', '.join(sorted(self.prompts)) or 'none'}"
                )
            return self.prompts[prompt_name]
        return self.prompts[self.default_prompt_name] if self.default_prompt_name else ""

    def retrieval_prompt_name(self, role: str) -> str | None:
        """The model's own prompt name for 'query' or 'document' inputs (`RETRIEVAL_PROMPT_NAMES`).

        None when the model defines no prompts at all; an error when it defines prompts but none for
        this role (rather than silently using the default).
        """
        candidates = RETRIEVAL_PROMPT_NAMES[role]
        for name in candidates:
            if name in self.prompts:
                return name
        if not self.prompts:
            return None
        raise ValueError(
            f"this model defines no {role} prompt (looked for {', '.join(candidates)}); its "
            f"prompts are {', '.join(sorted(self.prompts))}. Use encode(..., prompt_name=...) to "
            "choose one."
        )

    @classmethod
    def from_folder(cls, files: ModelFiles, model: BertConfig) -> SentenceConfig:
        values: dict = {}
        if files.exists("modules.json"):
            values.update(_read_modules(files, model))
        values.update(_read_bert_config(files, model))
        if files.exists("config_sentence_transformers.json"):
            values.update(_read_st_config(files, model))
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{files.folder}: {e}") from None


def sentence_files(files: ModelFiles) -> list[str]:
    """The sentence-transformers files `SentenceConfig.from_folder` reads from this folder: its
    three configs that exist and the config.json of the modules.json's Pooling module."""
    configs = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
    names = [name for name in configs if files.exists(name)]
    modules = files.read_json("modules.json") if "modules.json" in names else []
    pooling = [
        m["path"].rstrip("/") + "/config.json"
        for m in (modules if isinstance(modules, list) else [])
        if isinstance(m, dict) and m.get("type") == _POOLING and isinstance(m.get("path"), str)
    ]
    return names + pooling


def _read_bert_config(files: ModelFiles, model: BertConfig) -> dict:
    """sentence_bert_config.json: context length and lowercasing (absent: the position and tokenizer
    limits)."""
    name = "sentence_bert_config.json"
    f = Fields(files.read_json(name) if files.exists(name) else {}, str(files.folder / name))
    max_len = f.int("max_seq_length", None, minimum=2)
    if max_len is None:
        # as sentence-transformers: the tokenizer's model_max_length caps the position table
        max_len = int(min(model.max_position_embeddings, tokenizer_max_length(files)))
    elif max_len > model.max_position_embeddings:
        raise ConfigError(
            f"{f.source}: field max_seq_length={max_len} exceeds max_position_embeddings="
            f"{model.max_position_embeddings} in config.json"
        )
    return {"max_seq_length": max_len, "lowercase": f.bool("do_lower_case", False)}


def _read_st_config(files: ModelFiles, model: BertConfig) -> dict:
    name = "config_sentence_transformers.json"
    f = Fields(files.read_json(name), str(files.folder / name))
    truncate_dim = f.int("truncate_dim", None, minimum=1, maximum=model.hidden_size)
    prompts, default = f.str_map("prompts", {}), f.str("default_prompt_name", None) or None
    if default is not None and default not in prompts:
        raise ConfigError(
            f"{f.source}: field default_prompt_name={default!r} is not among the prompts "
            f"({', '.join(prompts) or 'none'})"
        )
    return {"prompts": prompts, "default_prompt_name": default, "truncate_dim": truncate_dim}


def tokenizer_max_length(files: ModelFiles) -> int | float:
    """tokenizer_config.json's model_max_length, or no limit when absent."""
    name = "tokenizer_config.json"
    if not files.exists(name):
        return float("inf")
    value = Fields(files.read_json(name), str(files.folder / name)).number(
        "model_max_length", None, minimum=0
    )
    return value if value is not None and value >= 2 else float("inf")


def _read_modules(files: ModelFiles, model: BertConfig) -> dict:
    source = str(files.folder / "modules.json")
    modules = files.read_json("modules.json")
    if not isinstance(modules, list):
        raise ConfigError(f"{source}: expected a JSON array of modules")
    entries = [Fields(m, f"{source}: module {i}") for i, m in enumerate(modules)]
    types = [e.str("type") for e in entries]
    unknown = [t for t in types if t not in _KNOWN_MODULES]
    if unknown:
        raise ConfigError(
            f"{source}: module type(s) {', '.join(unknown)} are not supported; berta-jax "
            "implements Transformer -> Pooling [-> Normalize]"
        )
    if types[:1] != [_TRANSFORMER] or types.count(_TRANSFORMER) != 1:
        raise ConfigError(f"{source}: the first and only Transformer module must come first")
    if types.count(_POOLING) > 1:
        raise ConfigError(f"{source}: more than one Pooling module")
    for entry in entries:
        files._inside(entry.str("path", "") or ".")  # a module path may never leave the folder
    values: dict = {"normalize": _NORMALIZE in types}
    if _POOLING in types:
        if _NORMALIZE in types and types.index(_NORMALIZE) < types.index(_POOLING):
            raise ConfigError(f"{source}: Normalize before Pooling is not supported")
        folder = entries[types.index(_POOLING)].str("path", "")
        if not folder.strip("/ ."):
            raise ConfigError(
                f"{source}: the Pooling module's path must name its folder (e.g. 1_Pooling), got "
                f"{folder!r}"
            )
        values.update(_read_pooling(files, f"{folder.rstrip('/')}/config.json", model))
    return values


def _read_pooling(files: ModelFiles, name: str, model: BertConfig) -> dict:
    f = Fields(files.read_json(name), str(files.folder / name))
    if "pooling_mode" in f:
        mode = f.raw["pooling_mode"]
        modes = (
            [mode]
            if isinstance(mode, str)
            else f.list("pooling_mode", item=lambda m: isinstance(m, str), what="strings")
        )
    else:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if f.bool(key, False)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ConfigError(
            f"{f.source}: pooling mode(s) {modes} are not supported; berta-jax implements exactly "
            f"one of {', '.join(POOLING_MODES)}"
        )
    dimension = f.int("word_embedding_dimension", model.hidden_size, minimum=1)
    if dimension != model.hidden_size:
        raise ConfigError(
            f"{f.source}: field word_embedding_dimension={dimension} does not match config.json's "
            f"hidden_size={model.hidden_size}; the folder's files belong to different models"
        )
    return {"pooling": modes[0], "include_prompt": f.bool("include_prompt", True)}
