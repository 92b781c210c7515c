"""What a sentence vector is, on the host: the pooling modes that make it, its dimensions, the
finiteness check and sentence-transformers' truncation.

Kept free of JAX so that reading a folder and the batch job's planning import quickly; `pooling` (on
the device) and `loading.sentence_config` take the pooling modes from here.
"""

from __future__ import annotations

import numpy as np

from berta_jax.errors import NonFiniteError

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")  # sentence-transformers' names


def check_finite(vectors: np.ndarray, total: int) -> None:
    """Raise NonFiniteError naming the rows of `vectors` that hold NaN or Inf."""
    if np.isfinite(vectors).all():
        return
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1)).tolist()
    raise NonFiniteError(
        f"non-finite embeddings for {len(bad)} of {total} texts (indices {bad[:20]}"
        f"{', ...' if len(bad) > 20 else ''}); the weights overflow float32 on them: "
        "check the checkpoint",
        bad,
    )


def embedding_dim(
    hidden_size: int, folder_truncate_dim: int | None, requested: int | None = None
) -> int:
    """Dimensions of the vectors a call returns: the `truncate_dim` asked for, else the folder's,
    else the model's hidden size."""
    return requested or folder_truncate_dim or hidden_size


def check_truncate_dim(value, hidden_size: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= hidden_size):
        raise ValueError(
            f"truncate_dim={value!r} must be an integer in [1, {hidden_size}] "
            "(the model's dimensions)"
        )
    return value


def truncate(vectors: np.ndarray, dim: int | None, *, renormalize: bool) -> np.ndarray:
    """Keep the first `dim` dimensions (Matryoshka), then L2-normalise again only when asked:
    sentence-transformers' order (its Normalize module runs before truncation,
    `normalize_embeddings=True` after)."""
    if dim is not None and dim < vectors.shape[1]:
        vectors = vectors[:, :dim]
        if renormalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)
