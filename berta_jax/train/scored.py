"""Losses whose labels are scores: sentence-transformers' MarginMSELoss (a teacher's margins) and
CoSENTLoss (a similarity score per pair)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from berta_jax.errors import ConfigError
from berta_jax.train.base import (PAIRWISE, Embeddings, check_choice, check_columns,
                                  check_positive, require_labels)


def _margins(name: str, labels: Float[Array, "..."], batch: int, negatives: int):
    """The teacher's margins `[B, negatives]` from margins or from `[B, 1 + negatives]` raw scores
    (positive first), as MarginMSELoss reads them; `[B]` is one margin per row."""
    if labels.shape == (batch, negatives + 1):
        labels = labels[:, :1] - labels[:, 1:]
    if labels.shape == (batch,):
        labels = labels[:, None]
    if labels.shape != (batch, negatives):
        raise ConfigError(f"loss {name!r}: labels of shape {labels.shape} are neither the "
                          f"teacher's margins ({batch}, {negatives}) nor its scores "
                          f"({batch}, {negatives + 1}) with the positive's first")
    return labels


@dataclass(frozen=True)
class MarginMSELoss:
    """The student's margin sim(q, pos) - sim(q, neg) against a cross-encoder teacher's, squared
    error: pick it to distil a reranker into the encoder from (query, positive, negatives...)
    rows."""

    similarity: str = "dot"
    name: ClassVar[str] = "margin_mse"
    needs_labels: ClassVar[bool] = True
    truncates_labels: ClassVar[bool] = False

    def __post_init__(self):
        check_choice(f"loss.{self.name}.similarity", self.similarity, tuple(PAIRWISE))

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> None:
        return None

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        query, positive, *negatives = check_columns(self.name, embeddings, 3)
        what = "the teacher's margins, [B, negatives], or scores, [B, 1 + negatives]"
        labels = require_labels(self.name, labels, what)
        labels = _margins(self.name, labels, query.shape[0], len(negatives))
        sim = PAIRWISE[self.similarity]
        positive_scores = sim(query, positive)
        margins = jnp.stack([positive_scores - sim(query, n) for n in negatives], axis=1)
        return jnp.mean((margins - labels) ** 2)


@dataclass(frozen=True)
class CoSENTLoss:
    """CoSENT: every pair with a higher gold score must get a higher cosine than every pair with a
    lower one; pick it for (sentence, sentence, score) rows such as STS."""

    scale: float = 20.0
    similarity: str = "cos"
    name: ClassVar[str] = "cosent"
    needs_labels: ClassVar[bool] = True
    truncates_labels: ClassVar[bool] = False

    def __post_init__(self):
        check_positive(f"loss.{self.name}.scale", self.scale)
        check_choice(f"loss.{self.name}.similarity", self.similarity, tuple(PAIRWISE))

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> None:
        return None

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        first, second = check_columns(self.name, embeddings, 2)[:2]
        labels = require_labels(self.name, labels, "one gold score per pair, [B]")
        if labels.size != first.shape[0]:
            raise ConfigError(f"loss {self.name!r}: expects {first.shape[0]} labels (one per "
                              f"pair), got shape {labels.shape}")
        labels = labels.reshape(-1)
        scores = PAIRWISE[self.similarity](first, second) * self.scale
        # s_i - s_j for every pair i, j whose gold scores are ordered l_i < l_j, and a 0
        differences = jnp.where(labels[:, None] < labels[None, :],
                                scores[:, None] - scores[None, :], -jnp.inf)
        return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1), differences.reshape(-1)]))
