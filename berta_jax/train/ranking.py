"""In-batch negatives: sentence-transformers' MultipleNegativesRankingLoss (InfoNCE) and its cached
form.

Columns are (anchor, positive, negative_1, ...). Each anchor's candidates are every positive of the
batch and then every negative column, concatenated in that order as sentence-transformers does, and
its target is its own positive. `directions`, `partition_mode`, `hardness_mode` and
`hardness_strength` are sentence-transformers 6's: `directions=("query_to_doc", "doc_to_query"),
partition_mode="per_direction"` is its MultipleNegativesSymmetricRankingLoss. There is no
`gather_across_devices`: under `jax.jit` over a batch sharded across devices the loss already sees
the global batch, which is what that option gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from berta_jax.errors import ConfigError
from berta_jax.train.base import (SIMILARITIES, Embeddings, check_choice, check_columns,
                                  check_positive)

DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")


def _check_directions(field: str, directions: tuple, partition_mode: str) -> None:
    if not directions:
        raise ConfigError(f"{field}.directions: give at least one (of {', '.join(DIRECTIONS)})")
    for direction in directions:
        check_choice(f"{field}.directions", direction, DIRECTIONS)
    if "query_to_doc" not in directions:
        raise ConfigError(f"{field}.directions: must include 'query_to_doc' (it holds the "
                          "positive pair)")
    check_choice(f"{field}.partition_mode", partition_mode, PARTITION_MODES)
    if partition_mode == "per_direction" and {"query_to_query", "doc_to_doc"} & set(directions):
        raise ConfigError(f"{field}.partition_mode: 'per_direction' needs every direction to hold "
                          "the positive pair, and 'query_to_query' and 'doc_to_doc' do not: use "
                          "'joint'")


def _similarities(sim, queries, docs: list, directions: tuple) -> dict[str, Float[Array, "B N"]]:
    """Each direction's [B, candidates] similarity matrix, self-pairs masked with -inf."""
    batch = queries.shape[0]
    docs_all = jnp.concatenate(docs, axis=0)  # [B * (1 + negatives), D]
    own = jnp.eye(batch, dtype=bool)
    matrices = {"query_to_doc": sim(queries, docs_all)}
    if "query_to_query" in directions:
        matrices["query_to_query"] = jnp.where(own, -jnp.inf, sim(queries, queries))
    if "doc_to_query" in directions:
        matrices["doc_to_query"] = sim(queries, docs[0]).T
    if "doc_to_doc" in directions:
        own_docs = jnp.tile(own, (1, len(docs)))  # every document of the same query
        matrices["doc_to_doc"] = jnp.where(own_docs, -jnp.inf, sim(docs_all, docs[0]).T)
    return matrices


def _hardness(raw: Float[Array, "B N"], mode: str, strength: float, columns: int):
    """`strength * stop_gradient(similarity)` on the negatives that `mode` names, 0 elsewhere."""
    batch = raw.shape[0]
    own = jnp.tile(jnp.eye(batch, dtype=bool), (1, columns))  # own positive and own negatives
    in_positives = jnp.arange(raw.shape[1])[None, :] < batch
    if mode == "hard_negatives":
        keep = own & ~in_positives
    elif mode == "in_batch_negatives":
        keep = ~own
    else:
        keep = ~(own & in_positives)
    return jnp.where(keep, strength * jax.lax.stop_gradient(raw), 0.0)


@dataclass(frozen=True)
class MultipleNegativesRankingLoss:
    """InfoNCE with in-batch negatives: pick it for (anchor, positive[, negatives...]) rows, the
    usual retrieval fine-tuning; no labels. `similarity="dot"` usually wants `scale=1`."""

    scale: float = 20.0
    similarity: str = "cos"
    directions: tuple[str, ...] = ("query_to_doc",)
    partition_mode: str = "joint"
    hardness_mode: str | None = None
    hardness_strength: float = 0.0
    name: ClassVar[str] = "mnrl"
    needs_labels: ClassVar[bool] = False

    def __post_init__(self):
        field = f"loss.{self.name}"
        check_positive(f"{field}.scale", self.scale)
        check_choice(f"{field}.similarity", self.similarity, tuple(SIMILARITIES))
        if isinstance(self.directions, str):
            raise ConfigError(f"{field}.directions: must be a list of directions, got the string "
                              f"{self.directions!r}; write [{self.directions!r}]")
        object.__setattr__(self, "directions", tuple(self.directions))
        _check_directions(field, self.directions, self.partition_mode)
        if self.hardness_mode is not None:
            check_choice(f"{field}.hardness_mode", self.hardness_mode, HARDNESS_MODES)
        check_positive(f"{field}.hardness_strength", self.hardness_strength, zero_ok=True)

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> None:
        return None

    def __call__(self, embeddings: Embeddings, labels: Array | None = None,
                 aux: dict | None = None) -> Float[Array, ""]:
        queries, *docs = check_columns(self.name, embeddings, 2)
        matrices = _similarities(SIMILARITIES[self.similarity], queries, docs, self.directions)
        penalty = 0.0
        if self.hardness_mode is not None and self.hardness_strength > 0:
            penalty = _hardness(matrices["query_to_doc"], self.hardness_mode,
                                self.hardness_strength, len(docs))
        matrices = {key: m * self.scale for key, m in matrices.items()}
        matrices["query_to_doc"] = matrices["query_to_doc"] + penalty
        positives = jnp.diagonal(matrices["query_to_doc"])  # own positive: column i of the first B
        if self.partition_mode == "joint":
            log_z = jax.nn.logsumexp(jnp.concatenate(list(matrices.values()), axis=1), axis=1)
        else:
            log_z = sum(jax.nn.logsumexp(m, axis=1) for m in matrices.values()) / len(matrices)
        return -jnp.mean(positives - log_z)


@dataclass(frozen=True)
class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """The same loss, the same value, for batches too large to embed at once: the trainer embeds
    `mini_batch_size` rows at a time (gradient caching) and then calls this on the whole batch."""

    mini_batch_size: int = 32
    name: ClassVar[str] = "cached_mnrl"

    def __post_init__(self):
        super().__post_init__()
        size = self.mini_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"loss.{self.name}.mini_batch_size: must be a whole number >= 1, "
                              f"got {size!r}")
