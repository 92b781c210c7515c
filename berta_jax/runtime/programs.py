"""What `Runtime` compiles: the sentence-embedding function of one batch shape, the arrays it takes
from a `Batch`, and the parameters as the compiled forwards take them (matmul kernels cast once).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from berta_jax.models.attention import AttentionKernel
from berta_jax.models.pooling import embed_rows
from berta_jax.runtime.batching import Batch


def batch_embed_fn(
    graphdef: nnx.GraphDef,
    pooling: str,
    normalize: bool,
    num_segments: int,
    kernel: AttentionKernel,
) -> Callable:
    """A pure `fn(params, *batch_args(batch))` -> the batch's sentence vectors, one per slot,
    `[rows * segments, hidden]`."""

    def fn(params, input_ids, token_type_ids, segment_ids, positions, pool_mask):
        out = embed_rows(
            nnx.merge(graphdef, params),
            input_ids,
            token_type_ids,
            segment_ids,
            positions,
            pool_mask,
            num_segments=num_segments,
            pooling=pooling,
            normalize=normalize,
            attention_kernel=kernel,
        )
        return out.reshape(-1, out.shape[-1])  # [B * S, D]: a batch's slots index this

    return fn


def batch_args(batch: Batch) -> tuple[np.ndarray, ...]:
    """The arrays a compiled embedding program takes, in its order."""
    return (
        batch.input_ids,
        batch.token_type_ids,
        batch.segment_ids,
        batch.positions,
        batch.pool_mask,
    )


def matmul_copy(params: nnx.State, dtype) -> nnx.State:
    """The parameters as the compiled forwards take them: with 16-bit compute, every matmul kernel
    cast to the compute dtype here, once, instead of in every call of every layer (on a bf16 CPU a
    12-layer forward spent about a seventh of its time converting kernels). The result is
    bit-identical: the forward casts a kernel to the same dtype itself. Embeddings, biases and
    LayerNorm parameters stay as stored."""
    if jnp.dtype(dtype) == jnp.float32:
        return params

    def cast(path, leaf):
        is_kernel = any(getattr(key, "key", None) == "kernel" for key in path)
        return (
            leaf.astype(dtype) if is_kernel and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
        )

    return jax.tree_util.tree_map_with_path(cast, params)
