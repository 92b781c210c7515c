"""What a sentence-transformers folder says about turning tokens into a sentence vector.

Reads `modules.json` (Transformer -> Pooling [-> Normalize]),
`1_Pooling/config.json` (pooling mode, include_prompt),
`sentence_bert_config.json` (max_seq_length) and
`config_sentence_transformers.json` (prompts, default prompt). A plain HF folder
without these gets what sentence-transformers gives it: mean pooling, no
normalisation, no prompts, the model's position limit as context.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from berta_jax.config import BertConfig, read_json
from berta_jax.errors import ConfigError

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
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

# Prompt names that mean "query" / "document" in retrieval, in order of preference.
QUERY_PROMPT_NAMES = ("query", "search_query")
DOCUMENT_PROMPT_NAMES = ("document", "search_document", "passage")


@dataclasses.dataclass(frozen=True)
class SentenceConfig:
    """Pooling, normalisation, context length and prompts of a sentence encoder."""

    pooling: str = "mean"
    include_prompt: bool = True
    normalize: bool = False
    max_seq_length: int = 512
    lowercase: bool = False  # sentence_bert_config.json do_lower_case: texts (prompt included) are lowercased
    prompts: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    default_prompt_name: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling={self.pooling!r} is not supported; choose one of {', '.join(POOLING_MODES)}")
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
        """The model's own prompt name for 'query' or 'document' retrieval inputs.

        None when the model defines no prompts at all; an error when it defines
        prompts but none for this role (rather than silently using the default).
        """
        candidates = QUERY_PROMPT_NAMES if role == "query" else DOCUMENT_PROMPT_NAMES
        for name in candidates:
            if name in self.prompts:
                return name
        if not self.prompts:
            return None
        raise ValueError(
            f"this model defines no {role} prompt (looked for {', '.join(candidates)}); its prompts are "
            f"{', '.join(sorted(self.prompts))}. Use encode(..., prompt_name=...) to choose one."
        )

    @classmethod
    def from_folder(cls, folder: str | Path, model: BertConfig) -> SentenceConfig:
        folder = Path(folder)
        values: dict = {"max_seq_length": model.max_position_embeddings}
        modules_file = folder / "modules.json"
        if modules_file.exists():
            values.update(_read_modules(modules_file, folder))
        bert_config = folder / "sentence_bert_config.json"
        raw = read_json(bert_config) if bert_config.exists() else {}
        if raw.get("max_seq_length") is not None:
            values["max_seq_length"] = raw["max_seq_length"]
        else:  # as sentence-transformers: the tokenizer's model_max_length caps the position table
            values["max_seq_length"] = int(min(model.max_position_embeddings, _tokenizer_max_length(folder)))
        values["lowercase"] = bool(raw.get("do_lower_case", False))
        st_config = folder / "config_sentence_transformers.json"
        if st_config.exists():
            raw = read_json(st_config)
            values["prompts"] = raw.get("prompts") or {}
            values["default_prompt_name"] = raw.get("default_prompt_name") or None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in values["prompts"].items()):
                raise ConfigError(f"{st_config}: field prompts must map names to strings")
        max_len = values["max_seq_length"]
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
            raise ConfigError(f"{bert_config}: field max_seq_length={max_len!r}: expected an integer >= 2")
        if max_len > model.max_position_embeddings:
            raise ConfigError(
                f"{bert_config}: field max_seq_length={max_len} exceeds max_position_embeddings="
                f"{model.max_position_embeddings} in config.json"
            )
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{folder}: {e}") from None


def _tokenizer_max_length(folder: Path) -> int | float:
    """tokenizer_config.json's model_max_length, or no limit when absent or not a number."""
    path = folder / "tokenizer_config.json"
    raw = read_json(path) if path.exists() else {}
    value = raw.get("model_max_length") if isinstance(raw, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 2 else float("inf")


def _read_modules(modules_file: Path, folder: Path) -> dict:
    modules = read_json(modules_file)
    if not isinstance(modules, list):
        raise ConfigError(f"{modules_file}: expected a list of modules")
    types = [m.get("type") for m in modules]
    unknown = [t for t in types if t not in _KNOWN_MODULES]
    if unknown:
        raise ConfigError(
            f"{modules_file}: module type(s) {', '.join(map(str, unknown))} are not supported; berta-jax "
            "implements Transformer -> Pooling [-> Normalize]"
        )
    if types[:1] != [_TRANSFORMER] or types.count(_TRANSFORMER) != 1:
        raise ConfigError(f"{modules_file}: the first and only Transformer module must come first")
    if types.count(_POOLING) > 1:
        raise ConfigError(f"{modules_file}: more than one Pooling module")
    values: dict = {"normalize": _NORMALIZE in types}
    if _POOLING in types:
        pooling_module = modules[types.index(_POOLING)]
        if _NORMALIZE in types and types.index(_NORMALIZE) < types.index(_POOLING):
            raise ConfigError(f"{modules_file}: Normalize before Pooling is not supported")
        values.update(_read_pooling(folder / pooling_module.get("path", "") / "config.json"))
    return values


def _read_pooling(path: Path) -> dict:
    raw = read_json(path)
    if "pooling_mode" in raw:
        modes = raw["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if raw.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ConfigError(
            f"{path}: pooling mode(s) {modes} are not supported; berta-jax implements exactly one of "
            f"{', '.join(POOLING_MODES)}"
        )
    include_prompt = raw.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise ConfigError(f"{path}: field include_prompt={include_prompt!r}: expected true or false")
    return {"pooling": modes[0], "include_prompt": include_prompt}
