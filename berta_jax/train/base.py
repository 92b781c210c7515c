"""What every loss shares: the `Loss` protocol, float32 similarities computed as
sentence-transformers computes them, and the checks that turn a bad option, column or label into a
named `ConfigError`.

The similarities follow sentence-transformers' `util`: `cos_sim` normalises each row with torch's
`F.normalize` (norm clamped below at 1e-12, so a zero row is a zero vector, never NaN) and then
multiplies; `F.cosine_similarity` (EmbedDistillLoss) clamps each norm at 1e-8 without letting the
clamp into the gradient. Both are reproduced here, gradients included.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from berta_jax.errors import ConfigError

Embeddings = Sequence[Float[Array, "B D"]]
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize, behind sentence-transformers' cos_sim
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity


class Loss(Protocol):
    """A training loss: a pure, jit-able function of one embedding array per input column."""

    name: str
    needs_labels: bool

    def __call__(self, embeddings: Embeddings, labels: Array | None,
                 aux: dict | None = None) -> Float[Array, ""]: ...

    def init_aux(self, key: Array, student_dim: int, teacher_dim: int | None) -> dict | None: ...


def unknown(what: str, kind: str, given: str, valid: Sequence[str]) -> ConfigError:
    """`what: unknown KIND 'given'; did you mean 'x'? (one of a, b, c)`, suggested by difflib."""
    close = difflib.get_close_matches(given, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return ConfigError(f"{what}: unknown {kind} {given!r}{hint} (one of {', '.join(valid)})")


def check_choice(field: str, value: object, valid: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise unknown(field, "value", str(value), valid)


def check_positive(field: str, value: object, zero_ok: bool = False) -> None:
    """A finite real number > 0 (>= 0 with `zero_ok`); bools are refused."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if zero_ok else value > 0))
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{field}: must be a finite number {bound}, got {value!r}")


def as_float(x: Array) -> Float[Array, "..."]:
    """`x` in float32 (16-bit floats and integers are upcast; float64 stays only where JAX's x64
    mode is on, as in the tests that check the definitions at double precision)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                    else jnp.float32)


def check_columns(name: str, embeddings: Embeddings, least: int) -> list[Float[Array, "B D"]]:
    """The columns as float32 2-D arrays of one batch size, at least `least` of them."""
    columns = [as_float(e) for e in embeddings]
    if len(columns) < least:
        raise ConfigError(f"loss {name!r}: needs at least {least} embedding columns (anchor, "
                          f"positive, negatives...), got {len(columns)}")
    for i, column in enumerate(columns):
        if column.ndim != 2 or column.shape[0] != columns[0].shape[0]:
            raise ConfigError(f"loss {name!r}: embedding column {i} has shape {column.shape}; "
                              f"every column must be [B, D] with B = {columns[0].shape[0]}")
    return columns


def require_labels(name: str, labels: Array | None, what: str) -> Float[Array, "..."]:
    """The label column as float32 and out of the gradient (sentence-transformers detaches it)."""
    if labels is None:
        raise ConfigError(f"loss {name!r}: needs a label column ({what}); the batch has none")
    return jax.lax.stop_gradient(as_float(labels))


def _safe_norm(x: Float[Array, "... D"]) -> Float[Array, "... 1"]:
    """The L2 norm of each row whose gradient at a zero row is 0 (as torch's), never NaN."""
    squares = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = squares > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0)


def normalize(x: Float[Array, "B D"]) -> Float[Array, "B D"]:
    """torch's `F.normalize(x, p=2, dim=-1)`: `x / max(||x||, 1e-12)`."""
    return x / jnp.maximum(_safe_norm(x), NORMALIZE_EPS)


def cos_sim(a: Float[Array, "N D"], b: Float[Array, "M D"]) -> Float[Array, "N M"]:
    return normalize(a) @ normalize(b).T


def dot_score(a: Float[Array, "N D"], b: Float[Array, "M D"]) -> Float[Array, "N M"]:
    return a @ b.T


def pairwise_cos_sim(a: Float[Array, "B D"], b: Float[Array, "B D"]) -> Float[Array, " B"]:
    return jnp.sum(normalize(a) * normalize(b), axis=-1)


def pairwise_dot_score(a: Float[Array, "B D"], b: Float[Array, "B D"]) -> Float[Array, " B"]:
    return jnp.sum(a * b, axis=-1)


def cosine_similarity(a: Float[Array, "B D"], b: Float[Array, "B D"]) -> Float[Array, " B"]:
    """torch's `F.cosine_similarity(a, b, dim=-1)`: norms clamped at 1e-8 outside the gradient."""
    def clamped(x):
        norm = _safe_norm(x)
        return norm + jax.lax.stop_gradient(jnp.maximum(norm, COSINE_EPS) - norm)
    return jnp.sum((a / clamped(a)) * (b / clamped(b)), axis=-1)


SIMILARITIES: dict[str, Callable] = {"cos": cos_sim, "dot": dot_score}
PAIRWISE: dict[str, Callable] = {"cos": pairwise_cos_sim, "dot": pairwise_dot_score}
