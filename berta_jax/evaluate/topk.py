"""The k best documents of every query, found on the devices a corpus chunk at a time: per chunk the
cosine scores `[queries, chunk]`, `jax.lax.top_k` of them, merged with the running top k; the host
never holds a `[queries, corpus]` matrix.

Ties: sentence-transformers ranks by (-score, corpus id), ids compared as strings. The caller hands
the corpus sorted by id, and `jax.lax.top_k` puts the lower index first among equal values; the
running top k sits before the chunk's candidates in the merge, so among equal scores the lower id
wins in every chunk and in every merge, and the result is the same for any chunk size. Equal means
bitwise-equal float32 dot products: XLA's and PyTorch's matmuls may round a near-tie differently
(by an ulp), and there the two orders can differ.
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-12  # torch.nn.functional.normalize's, which sentence-transformers' cos_sim uses


def normalize(x: jax.Array) -> jax.Array:
    """Rows over max(L2 norm, 1e-12), as `torch.nn.functional.normalize`. `[n, d]` float32."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, EPS)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_chunk(queries, chunk, offset, best_scores, best_index, *, k: int):
    """The running top k `[q, k]` merged with a chunk's: queries normalised `[q, d]`, chunk
    `[c, d]` (raw), `offset` the chunk's first corpus index."""
    scores = jnp.matmul(queries, normalize(chunk).T, precision=jax.lax.Precision.HIGHEST)  # [q, c]
    chunk_scores, chunk_index = jax.lax.top_k(scores, min(k, chunk.shape[0]))
    merged_scores = jnp.concatenate([best_scores, chunk_scores], axis=1)  # running first: ties
    merged_index = jnp.concatenate([best_index, chunk_index + offset], axis=1)
    top_scores, where = jax.lax.top_k(merged_scores, k)
    return top_scores, jnp.take_along_axis(merged_index, where, axis=1)


def running_top_k(
    query_embeddings: np.ndarray, chunks: Iterable[np.ndarray], corpus_size: int, max_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and corpus indices `[q, k]` of every query's k best documents, best first,
    k = min(max_k, corpus_size) (sentence-transformers caps k at the corpus the same way).

    `chunks` yields the corpus embeddings `[c, d]` in corpus order (sorted by id: see the module
    docstring), each placed on the devices and scored there.
    """
    k = min(max_k, corpus_size)
    queries = normalize(jnp.asarray(query_embeddings, dtype=jnp.float32))
    best_scores = jnp.full((queries.shape[0], k), -jnp.inf, dtype=jnp.float32)
    best_index = jnp.full((queries.shape[0], k), -1, dtype=jnp.int32)
    offset = 0
    for chunk in chunks:
        chunk = jnp.asarray(chunk, dtype=jnp.float32)
        best_scores, best_index = _merge_chunk(
            queries, chunk, jnp.int32(offset), best_scores, best_index, k=k
        )
        offset += chunk.shape[0]
    if offset != corpus_size:
        raise ValueError(f"the chunks held {offset} documents, not the corpus's {corpus_size}")
    return np.asarray(best_scores), np.asarray(best_index)
