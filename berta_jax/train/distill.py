"""Distillation from a teacher's vectors: sentence-transformers 6's MSELoss and EmbedDistillLoss,
and a relational loss that sentence-transformers does not have.

The labels are the teacher's vectors: `[B, T]` for every column alike (sentence-transformers repeats
them over the columns) or `[B, C, T]`, one per column. When the teacher's width T differs from the
student's D, `init_aux` makes the train-only projection D -> T that EmbedDistillLoss's
`projection_dim` makes, initialised as `torch.nn.Linear` is: kernel `[D, T]` and bias `[T]` both
uniform in [-1/sqrt(D), 1/sqrt(D)]. The projection is applied to the student, never the teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from berta_jax.errors import ConfigError
from berta_jax.train.base import (Embeddings, check_choice, check_columns, cos_sim,
                                  cosine_similarity, require_labels)

DISTANCES = ("mse", "l2", "cosine")
TEACHER_VECTORS = "the teacher's vectors, [B, teacher_dim] or [B, columns, teacher_dim]"


def init_projection(key: Array, student_dim: int, teacher_dim: int | None) -> dict | None:
    """`{"projection": {"kernel": [D, T], "bias": [T]}}` when T differs from D, else None."""
    if teacher_dim is None or teacher_dim == student_dim:
        return None
    bound = 1.0 / math.sqrt(student_dim)
    k_kernel, k_bias = jax.random.split(key)
    kernel = jax.random.uniform(k_kernel, (student_dim, teacher_dim), jnp.float32, -bound, bound)
    bias = jax.random.uniform(k_bias, (teacher_dim,), jnp.float32, -bound, bound)
    return {"projection": {"kernel": kernel, "bias": bias}}


def _teacher_columns(name: str, labels: Array, columns: int, batch: int):
    if labels.ndim in (2, 3) and labels.shape[0] != batch:
        raise ConfigError(f"loss {name!r}: labels of shape {labels.shape} hold {labels.shape[0]} "
                          f"rows for a batch of {batch}")
    if labels.ndim == 2:
        return [labels] * columns
    if labels.ndim == 3 and labels.shape[1] == columns:
        return [labels[:, i] for i in range(columns)]
    raise ConfigError(f"loss {name!r}: labels of shape {labels.shape} are not {TEACHER_VECTORS} "
                      f"with {columns} columns")


def _project(name: str, student: Float[Array, "B D"], teacher_dim: int, aux: dict | None):
    """The student at the teacher's width: as is if they match, else through the projection."""
    if aux is None or "projection" not in aux:
        if student.shape[-1] == teacher_dim:
            return student
        raise ConfigError(f"loss {name!r}: the student has {student.shape[-1]} dimensions and the "
                          f"teacher {teacher_dim}; create the projection with "
                          f"init_aux(key, {student.shape[-1]}, {teacher_dim}) and pass it as aux")
    kernel = jnp.asarray(aux["projection"]["kernel"], student.dtype)
    bias = jnp.asarray(aux["projection"]["bias"], student.dtype)
    if kernel.shape != (student.shape[-1], teacher_dim) or bias.shape != (teacher_dim,):
        raise ConfigError(f"loss {name!r}: aux projection kernel {kernel.shape} and bias "
                          f"{bias.shape} do not map the student's {student.shape[-1]} dimensions "
                          f"to the teacher's {teacher_dim}")
    return student @ kernel + bias


def _distance(metric: str, student: Float[Array, "B T"], teacher: Float[Array, "B T"]):
    if metric == "mse":
        return jnp.mean((student - teacher) ** 2)
    if metric == "l2":
        diff = student - teacher  # torch.norm's gradient at a zero difference is 0; so is this one
        squares = jnp.sum(diff * diff, axis=-1)
        nonzero = squares > 0
        return jnp.mean(jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0))
    return jnp.mean(1.0 - cosine_similarity(student, teacher))


def distill(name: str, metric: str, embeddings: Embeddings, labels: Array | None,
            aux: dict | None) -> Float[Array, ""]:
    """EmbedDistillLoss: the mean over columns of each column's distance to its teacher vectors."""
    columns = check_columns(name, embeddings, 1)
    teachers = _teacher_columns(name, require_labels(name, labels, TEACHER_VECTORS), len(columns),
                                columns[0].shape[0])
    losses = [_distance(metric, _project(name, student, teacher.shape[-1], aux), teacher)
              for student, teacher in zip(columns, teachers)]
    return jnp.mean(jnp.stack(losses))


@dataclass(frozen=True)
class MSELoss:
    """Mean squared error to a teacher's vectors (sentence-transformers' MSELoss): pick it to
    distil a teacher into the student, or to make a multilingual student copy an English teacher."""

    name: ClassVar[str] = "mse"
    needs_labels: ClassVar[bool] = True
    truncates_labels: ClassVar[bool] = True

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> dict | None:
        return init_projection(key, student_dim, teacher_dim)

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        return distill(self.name, "mse", embeddings, labels, aux)


@dataclass(frozen=True)
class EmbedDistillLoss:
    """Distance to a teacher's vectors, cosine by default (sentence-transformers' EmbedDistillLoss):
    pick it to distil a teacher of another width through a trained projection."""

    distance_metric: str = "cosine"
    name: ClassVar[str] = "embed_distill"
    needs_labels: ClassVar[bool] = True
    truncates_labels: ClassVar[bool] = True

    def __post_init__(self):
        check_choice(f"loss.{self.name}.distance_metric", self.distance_metric, DISTANCES)

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> dict | None:
        return init_projection(key, student_dim, teacher_dim)

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        return distill(self.name, self.distance_metric, embeddings, labels, aux)


@dataclass(frozen=True)
class RelationalLoss:
    """The student's in-batch cosine matrix against the teacher's, mean squared error: pick it to
    distil the geometry of a teacher of any width (1536 into 768) with nothing extra to train.

    sentence-transformers has no counterpart. Only the first column is used; its labels are the
    teacher's vectors of that column, `[B, T]`."""

    name: ClassVar[str] = "relational"
    needs_labels: ClassVar[bool] = True
    truncates_labels: ClassVar[bool] = False

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> None:
        return None

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]:
        student = check_columns(self.name, embeddings, 1)[0]
        teacher = require_labels(self.name, labels, "the teacher's vectors of the first column, "
                                                    "[B, teacher_dim]")
        if teacher.ndim != 2 or teacher.shape[0] != student.shape[0]:
            raise ConfigError(f"loss {self.name!r}: labels of shape {teacher.shape} are not the "
                              f"teacher's vectors [{student.shape[0]}, teacher_dim]")
        return jnp.mean((cos_sim(student, student) - cos_sim(teacher, teacher)) ** 2)
