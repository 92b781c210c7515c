"""The one table between Hugging Face BERT parameter names and the Flax tree.

Each row pairs an HF `BertModel` name with a per-layer path of
`berta_jax.models.bert.model.BertModel` (`berta_jax.models.bert.params` stacks the layers) and names
the transform between them. `{i}` stands for the layer index. Both directions
(HF -> Flax and Flax -> HF) are derived from this table; nothing else in the project spells a
parameter name.

HF `nn.Linear` stores `weight` as [out, in]; `nnx.Linear` stores `kernel` as
[in, out]: those rows are TRANSPOSE. Everything else is copied unchanged.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from berta_jax.errors import CheckpointError

NONE = "none"
TRANSPOSE = "transpose"


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str
    flax: str
    transform: str


def _linear(hf: str, flax: str) -> tuple[Rule, ...]:
    return (
        Rule(f"{hf}.weight", f"{flax}.kernel", TRANSPOSE),
        Rule(f"{hf}.bias", f"{flax}.bias", NONE),
    )


def _norm(hf: str, flax: str) -> tuple[Rule, ...]:
    return (Rule(f"{hf}.weight", f"{flax}.scale", NONE), Rule(f"{hf}.bias", f"{flax}.bias", NONE))


PARAM_TABLE: tuple[Rule, ...] = (
    Rule("embeddings.word_embeddings.weight", "embeddings.word.embedding", NONE),
    Rule("embeddings.position_embeddings.weight", "embeddings.position.embedding", NONE),
    Rule("embeddings.token_type_embeddings.weight", "embeddings.token_type.embedding", NONE),
    *_norm("embeddings.LayerNorm", "embeddings.norm"),
    *_linear("encoder.layer.{i}.attention.self.query", "layers.{i}.attention.query"),
    *_linear("encoder.layer.{i}.attention.self.key", "layers.{i}.attention.key"),
    *_linear("encoder.layer.{i}.attention.self.value", "layers.{i}.attention.value"),
    *_linear("encoder.layer.{i}.attention.output.dense", "layers.{i}.attention.out"),
    *_norm("encoder.layer.{i}.attention.output.LayerNorm", "layers.{i}.ln_attn"),
    *_linear("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn_in"),
    *_linear("encoder.layer.{i}.output.dense", "layers.{i}.ffn_out"),
    *_norm("encoder.layer.{i}.output.LayerNorm", "layers.{i}.ln_ffn"),
)

# HF tensors the encoder does not use, skipped by name and nothing else:
# the position-id buffer, the pooler (BertModel's tanh CLS head) and the
# pre-training / task heads (`cls.*`). The converter carries them through so
# that HF -> Flax -> HF gives back every tensor.
IGNORED_HF_PATTERNS: tuple[str, ...] = (
    r"embeddings\.position_ids",
    r"pooler\..*",
    r"cls\..*",
)

# Prefixes under which the encoder's weights can be saved: BertForXxx (`bert.`),
# a sentence-transformers module saved whole (`0.auto_model.`), or none (BertModel).
HF_PREFIXES: tuple[str, ...] = ("bert.", "0.auto_model.")

# Old TF-era checkpoints name LayerNorm parameters gamma/beta; transformers
# renames them on load, and so do we.
_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"\Z")


_HF_TO_FLAX = [(_template_regex(r.hf), r) for r in PARAM_TABLE]
_FLAX_TO_HF = [(_template_regex(r.flax), r) for r in PARAM_TABLE]
_IGNORED = [re.compile(p + r"\Z") for p in IGNORED_HF_PATTERNS]


def _fill(template: str, match: re.Match[str]) -> str:
    return template.replace("{i}", match.group("i")) if "{i}" in template else template


def hf_to_flax_name(hf_name: str) -> tuple[str, str] | None:
    """Flax path and transform for an (unprefixed) HF name, or None if no row matches."""
    for regex, rule in _HF_TO_FLAX:
        if m := regex.match(hf_name):
            return _fill(rule.flax, m), rule.transform
    return None


def flax_to_hf_name(flax_path: str) -> tuple[str, str] | None:
    """HF name and transform for a Flax path, or None if no row matches."""
    for regex, rule in _FLAX_TO_HF:
        if m := regex.match(flax_path):
            return _fill(rule.hf, m), rule.transform
    return None


def is_ignored(hf_name: str) -> bool:
    return any(p.match(hf_name) for p in _IGNORED)


def apply_transform(array: np.ndarray, transform: str) -> np.ndarray:
    """Apply a named transform; each is its own inverse."""
    if transform == TRANSPOSE:
        return np.ascontiguousarray(array.T)
    if transform == NONE:
        return array
    raise ValueError(f"unknown transform {transform!r}")


def rename_legacy(hf_name: str) -> str:
    for old, new in _LEGACY_SUFFIXES.items():
        if hf_name.endswith(old) and "LayerNorm" in hf_name:
            return hf_name[: -len(old)] + new
    return hf_name


def strip_prefix(names: list[str], source: str) -> dict[str, str]:
    """Map each checkpoint key to its unprefixed HF name.

    A checkpoint must use one prefix for its encoder weights: a mix of prefixed
    and unprefixed encoder keys is ambiguous and refused.
    """

    def encoder_key(name: str) -> bool:
        return hf_to_flax_name(rename_legacy(name)) is not None

    found = {p for p in HF_PREFIXES for n in names if n.startswith(p) and encoder_key(n[len(p) :])}
    bare = [n for n in names if encoder_key(n)]
    if len(found) + bool(bare) > 1:
        kinds = sorted(found | ({"<no prefix>"} if bare else set()))
        raise CheckpointError(
            f"{source}: encoder weights are stored under more than one prefix "
            f"({', '.join(kinds)}); cannot tell which set is the model. "
            "Keep one set of weights in the checkpoint."
        )
    prefix = found.pop() if found else ""
    return {
        n: rename_legacy(n[len(prefix) :] if prefix and n.startswith(prefix) else n) for n in names
    }
