"""The BERT architecture config, read from a checkpoint's `config.json`.

Every architectural number comes from the checkpoint; nothing is hard-coded
except the `berta()` preset, which documents the sergeyzh/BERTA shape for tests
and for `jax.eval_shape` checks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from berta_jax.errors import ConfigError

# hidden_act values of transformers' ACT2FN that this model implements.
# "gelu" is the exact erf GELU; the other two are the tanh approximation.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True, slots=True)
class BertConfig:
    """Shape and numerics of a BERT encoder (the fields of HF `BertConfig` we use)."""

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
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name}={value!r}: expected a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"config field hidden_act={self.hidden_act!r} is not implemented; "
                f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ConfigError(f"config field layer_norm_eps={self.layer_norm_eps!r}: expected a positive number")
        if not (0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(
                f"config field pad_token_id={self.pad_token_id} is outside the vocabulary (vocab_size={self.vocab_size})"
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
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> BertConfig:
        """Validate a parsed `config.json` and keep the fields the encoder uses."""
        model_type = raw.get("model_type")
        if model_type != "bert":
            raise ConfigError(f"{source}: field model_type={model_type!r} is not supported; berta-jax implements 'bert'")
        if raw.get("auto_map"):
            raise ConfigError(
                f"{source}: field auto_map asks to run custom code from the repository; "
                "berta-jax never executes repository code. Use a plain BERT checkpoint."
            )
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ConfigError(
                f"{source}: field position_embedding_type={position_type!r} is not supported; only 'absolute' is"
            )
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ConfigError(f"{source}: decoder / cross-attention BERT variants are not supported")
        missing = [
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in raw
        ]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)}")
        values = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw and raw[f.name] is not None}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The HF `config.json` fields, so a written checkpoint loads in transformers."""
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "position_embedding_type": "absolute",
            **dataclasses.asdict(self),
        }


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, turning every failure into a ConfigError that names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
