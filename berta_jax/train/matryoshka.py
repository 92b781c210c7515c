"""sentence-transformers' MatryoshkaLoss: a loss summed over prefixes of the embeddings.

As sentence-transformers does it: the dims are taken largest first; at each dim every column is cut
to its first `dim` values and L2-normalised again (each cut is made from the previous cut, as its
cached forward does), and the inner loss is weighted by the dim's weight. Labels whose last axis is
the student's width (the teacher vectors of `mse` and `embed_distill` when teacher and student are
as wide) are cut to `dim` too, not renormalised. Where sentence-transformers' projection would fail
on a cut student, a projection in `aux` takes the cut through the first `dim` rows of its kernel:
the same as projecting the cut vector padded with zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax.numpy as jnp
from jaxtyping import Array, Float

from berta_jax.errors import ConfigError
from berta_jax.train.base import Embeddings, Loss, check_columns, normalize


def _check_dims(dims: Sequence[int], weights: Sequence[float] | None) -> tuple[tuple, tuple]:
    """(dims, weights) sorted by dim, largest first; weights default to 1 each."""
    dims = tuple(dims)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"matryoshka.dims: must be one or more whole numbers >= 1, got {dims!r}")
    weights = (1,) * len(dims) if weights is None else tuple(weights)
    if len(weights) != len(dims):
        raise ConfigError(f"matryoshka.weights: {len(weights)} weights for {len(dims)} dims; give "
                          "one weight per dim")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"matryoshka.weights: each weight must be a finite number, got {w!r}")
    ordered = sorted(zip(dims, weights), key=lambda pair: pair[0], reverse=True)
    return tuple(d for d, _ in ordered), tuple(w for _, w in ordered)


def _cut_aux(aux: dict | None, dim: int) -> dict | None:
    if aux is None or "projection" not in aux:
        return aux
    projection = aux["projection"]
    return {**aux, "projection": {**projection, "kernel": projection["kernel"][:dim]}}


@dataclass(frozen=True)
class MatryoshkaLoss:
    """The inner loss at several embedding widths, so the vectors can be cut short at inference:
    pick it when users will keep only the first 64, 128, ... dimensions."""

    inner: Loss
    dims: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"matryoshka({self.inner.name})"

    @property
    def needs_labels(self) -> bool:
        return self.inner.needs_labels

    @property
    def mini_batch_size(self) -> int | None:
        """The inner loss's, for the trainer's gradient caching; None when it is not cached."""
        return getattr(self.inner, "mini_batch_size", None)

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> dict | None:
        return self.inner.init_aux(key, student_dim, teacher_dim)

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        columns = check_columns(self.name, embeddings, 1)
        width = columns[0].shape[-1]
        if self.dims[0] > width:
            raise ConfigError(f"matryoshka.dims: {self.dims[0]} is wider than the embeddings' "
                              f"{width} dimensions; use dims <= {width}")
        cut_labels = getattr(self.inner, "truncates_labels", False) and labels is not None
        total = 0.0
        for dim, weight in zip(self.dims, self.weights):
            columns = [normalize(column[:, :dim]) for column in columns]
            dim_labels = labels
            if cut_labels and jnp.ndim(labels) in (2, 3) and jnp.shape(labels)[-1] == width:
                dim_labels = labels[..., :dim]
            total = total + weight * self.inner(columns, dim_labels, _cut_aux(aux, dim))
        return total


def matryoshka(inner: Loss, dims: Sequence[int], weights: Sequence[float] | None = None) -> Loss:
    """`inner` summed over the embedding prefixes `dims` (weights 1 each unless given)."""
    dims, weights = _check_dims(dims, weights)
    return MatryoshkaLoss(inner, dims, weights)
