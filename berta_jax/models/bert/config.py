"""The BERT architecture config, read from a checkpoint's `config.json`.

Every architectural number comes from the checkpoint; nothing is hard-coded except the `berta()`
preset, which documents the sergeyzh/BERTA shape for tests and for `jax.eval_shape` checks. Every
field is read with its JSON type checked (a string where a number belongs, `Infinity`, a list where
an object belongs are errors naming the file and the field).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from berta_jax.errors import ConfigError
from berta_jax.storage.model_files import ModelFiles
from berta_jax.storage.json_fields import Fields


MODEL_TYPE = "bert"  # config.json's model_type for this family (see models.registry)
# transformers' ACT2FN names this model implements -> the jax.nn function and its arguments (the
# model builds it; this table stays free of JAX so that reading a config imports none). "gelu" is
# BERT's exact erf GELU.
ACTIVATIONS: dict[str, tuple[str, dict]] = {
    "gelu": ("gelu", {"approximate": False}),
    "gelu_new": ("gelu", {"approximate": True}),
    "gelu_pytorch_tanh": ("gelu", {"approximate": True}),
    "relu": ("relu", {}),
}
_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True, slots=True)
class BertConfig:
    """Shape and numerics of a BERT encoder (the fields of HF `BertConfig` the model uses)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1  # transformers' defaults; used only in training mode
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self) -> None:
        """Every value checked here, once, whether the config came from a file or from code."""
        for name in _SHAPE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name}={value!r}: expected a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"config field hidden_act={self.hidden_act!r} is not implemented; "
                f"supported: {', '.join(ACTIVATIONS)}"
            )
        if not _finite(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ConfigError(
                f"config field layer_norm_eps={self.layer_norm_eps!r}: expected a finite number > 0"
            )
        for name in _DROPOUT_FIELDS:
            if not _finite(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise ConfigError(
                    f"config field {name}={getattr(self, name)!r}: expected a number in [0, 1)"
                )
        if not (isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(
                f"config field pad_token_id={self.pad_token_id!r} is outside the vocabulary "
                f"(vocab_size={self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def berta(cls) -> BertConfig:
        """The sergeyzh/BERTA shape (BERT-base with a 55,083-token WordPiece vocabulary)."""
        return cls(
            vocab_size=55083,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        )

    @classmethod
    def from_dict(cls, raw: Any, source: str = "config.json") -> BertConfig:
        """Validate a parsed `config.json` and keep the fields the encoder uses."""
        f = Fields(raw, source)
        f.str("model_type", choices=(MODEL_TYPE,))
        if f.raw.get("auto_map"):
            raise ConfigError(
                f"{source}: field auto_map asks to run custom code from the repository; "
                "berta-jax never executes repository code. Use a plain BERT checkpoint."
            )
        f.str("position_embedding_type", "absolute", choices=("absolute",))
        if f.bool("is_decoder", False) or f.bool("add_cross_attention", False):
            raise ConfigError(
                f"{source}: decoder / cross-attention BERT variants are not supported"
            )
        # JSON types here (Fields names the file and field); the values' rules in __post_init__
        values = {name: f.int(name) for name in _SHAPE_FIELDS if name != "type_vocab_size"}
        values["type_vocab_size"] = f.int("type_vocab_size", 2)
        values["layer_norm_eps"] = f.number("layer_norm_eps", 1e-12)
        values["hidden_act"] = f.str("hidden_act", "gelu")
        values["pad_token_id"] = f.int("pad_token_id", 0)
        values.update({name: f.number(name, 0.1) for name in _DROPOUT_FIELDS})
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        return cls.from_dict(ModelFiles(path.parent).read_json(path.name), source=str(path))
