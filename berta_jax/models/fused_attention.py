"""The fused (flash) attention calls, in berta-jax's layout: `[B, L, H, K]` queries, keys and
values, scale 1/sqrt(K).

- `fused_attention`: `jax.nn.dot_product_attention` (with `implementation="cudnn"`, cuDNN's fused
  attention on NVIDIA GPUs), the mask as a full `[B, 1, L, L]` additive bias.
- `splash_attention`: Pallas splash attention, the TPU's blocked flash kernel, the mask as the rows'
  segment ids (which it supports natively).

`attention.py` wraps each in an `AttentionKernel` (the mask form it takes, when it may run); these
are the bare calls, which the tests check against the explicit kernel.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jaxtyping import Array, Float, Int

SPLASH_TILE = 128  # splash's query/key block sizes are multiples of this; rows are padded up to one


def fused_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    bias: Float[Array, "B 1 L L"],
    *,
    implementation: str,
) -> Float[Array, "B L H K"]:
    """`jax.nn.dot_product_attention` in berta-jax's layout: the same [B, L, H, K] tensors, scale
    1/sqrt(K), and the mask as a full [B, 1, L, L] bias (cuDNN takes no bias broadcast over queries;
    see `attention.attention_bias`)."""
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias.astype(q.dtype), implementation=implementation
    )


def splash_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    segment_ids: Int[Array, "B L"],
    *,
    interpret: bool = False,
) -> Float[Array, "B L H K"]:
    """Splash attention over the texts of each row, in berta-jax's layout and scale.

    Rows are padded to a multiple of `SPLASH_TILE` with segment 0 and cut back; the kernel runs per
    row (vmap). Under a mesh (`jax.set_mesh`, as `Runtime` sets for this kernel) it runs inside
    `jax.shard_map` over the rows, since XLA cannot partition a Pallas TPU kernel itself.
    `interpret=True` runs the Pallas interpreter (any backend; for tests), which
    `attention.SplashKernel` uses off TPU.
    """
    batch, length, heads, dim = q.shape
    padded = -(-length // SPLASH_TILE) * SPLASH_TILE
    scaled = q * jnp.asarray(1.0 / math.sqrt(dim), q.dtype)
    q, k, v = (
        jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
        for x in (scaled, k, v)
    )
    segments = jnp.pad(segment_ids, ((0, 0), (0, padded - length)))  # the padding is segment 0
    run = _over_rows(_splash_row_kernel(padded, heads, interpret=interpret))
    return run(q, k, v, segments)[:, :, :length].transpose(0, 2, 1, 3)


def _splash_row_kernel(length: int, heads: int, *, interpret: bool) -> Callable:
    """Splash over one row: `fn(q, k, v, segment_ids)` of `[H, L, K]` tensors and `[L]` segment ids,
    `length` (a multiple of `SPLASH_TILE`) tokens long, each query seeing the keys of its own
    segment, in the largest of the blocks 512, 256 and `SPLASH_TILE` that divides the row."""
    # imported on use: Pallas adds ~0.2 s to a start
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    block = next(b for b in (512, 256, SPLASH_TILE) if length % b == 0)
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([splash.FullMask((length, length))] * heads),
        head_shards=1,
        q_seq_shards=1,
        block_sizes=splash.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        ),
        interpret=interpret,
    )
    return lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s))


def _over_rows(row_kernel: Callable) -> Callable:
    """`row_kernel` over the rows of a batch (vmap); under a mesh of several devices, inside
    `jax.shard_map` over the rows, since XLA cannot partition a Pallas TPU kernel itself."""
    run = jax.vmap(row_kernel)  # [H, L, K] rows
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        # Pallas outputs carry no varying-axes type: rows are independent
        rows = PartitionSpec(mesh.axis_names)
        run = jax.shard_map(run, mesh=mesh, in_specs=(rows,) * 4, out_specs=rows, check_vma=False)
    return run
