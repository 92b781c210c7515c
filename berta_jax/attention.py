"""Scaled dot-product attention and the masks that say which keys each query may see.

Two kernels compute the same softmax(q k^T / sqrt(K) + bias) v:
- "xla": explicit batched matmuls with float32 logits and softmax, on every backend. It is the reference, and
  the only kernel that returns attention probabilities or applies dropout to them (training, introspection).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused (flash) attention on NVIDIA
  GPUs for bfloat16/float16 compute; padding goes in as key lengths, packed rows as a [B, 1, L, L] bias.
`select_kernel` picks "cudnn" for 16-bit compute on a GPU and "xla" everywhere else: CPUs (XLA fuses the
explicit form well), TPUs (no segment-aware fused kernel is selected), and float32 on GPUs (cuDNN's fused
attention has no float32 mode, and float32 is the PyTorch-parity mode).

A mask is carried as an additive float32 bias: 0 where a query may attend to a key, a large finite
negative value elsewhere (finite, so a filler row whose keys are all padding gets a uniform softmax, never
NaN). Without packing the bias is `[B, 1, 1, L]` (padding keys); with packed rows it is `[B, 1, L, L]`
(same text only).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

MASKED_LOGIT = -1e30
KERNELS = ("xla", "cudnn")


def select_kernel(requested: str, platform: str, dtype) -> str:
    """The kernel for `requested` ("auto", "xla" or "cudnn") on `platform` ("cpu", "gpu", "tpu") with compute `dtype`;
    a kernel the backend cannot run is a ValueError saying what to use instead."""
    if requested not in ("auto", *KERNELS):
        raise ValueError(f"attention={requested!r} is not a kernel; choose 'auto', {', '.join(map(repr, KERNELS))}")
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if requested == "auto":
        return "cudnn" if platform == "gpu" and sixteen_bit else "xla"
    if requested == "cudnn" and not (platform == "gpu" and sixteen_bit):
        raise ValueError(f"attention='cudnn' needs an NVIDIA GPU and bfloat16/float16 compute (here: {platform}, "
                         f"{jnp.dtype(dtype).name}); use attention='auto' or 'xla'")
    return requested


def attention_bias(key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None, *,
                   full: bool = False) -> Float[Array, "B 1 Q L"]:
    """The additive attention bias (`full`: always [B, 1, L, L], the form fused kernels take).

    Without segments, key t of row b is visible to every query of the row iff key_mask[b, t]:
        [B, L] -> [B, 1, 1, L]
    With segments (packed rows; 0 = padding), query i sees key j iff both belong to the same text:
        segment_ids  1 1 1 2 2 0          q\\k  1 1 1 2 2 0
                                           1   0 0 0 - - -
                                           2   - - - 0 0 -     ("-" = MASKED_LOGIT)
                                           0   - - - - - -
    """
    if segment_ids is None and full:
        segment_ids = key_mask.astype(jnp.int32)  # one text per row: any padding pattern, queries included
    if segment_ids is None:
        return jnp.where(key_mask, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return jnp.where(same, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, :, :]


def attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    bias: Float[Array, "B 1 Q L"],
    *,
    precision: jax.lax.Precision,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
    with_probs: bool = False,
    kernel: str = "xla",
) -> tuple[Float[Array, "B L H K"], Float[Array, "B H L L"] | None]:
    """softmax(q k^T / sqrt(K) + bias) v, and the probabilities when asked (which, like dropout, needs "xla":
    `BertModel.forward` picks "xla" whenever either is in play)."""
    if kernel == "xla":
        return explicit_attention(q, k, v, bias, precision=precision, dropout=dropout, with_probs=with_probs)
    if dropout is not None or with_probs:
        raise ValueError(f"the {kernel} attention kernel returns no probabilities and applies no dropout; use 'xla'")
    return fused_attention(q, k, v, bias, implementation=kernel), None


def fused_attention(q: Float[Array, "B L H K"], k: Float[Array, "B L H K"], v: Float[Array, "B L H K"],
                    bias: Float[Array, "B 1 L L"], *, implementation: str) -> Float[Array, "B L H K"]:
    """`jax.nn.dot_product_attention` in berta-jax's layout: the same [B, L, H, K] tensors, scale 1/sqrt(K), and
    the mask as a full [B, 1, L, L] bias (cuDNN takes no bias broadcast over queries; see `attention_bias`)."""
    return jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), implementation=implementation)


def explicit_attention(q, k, v, bias, *, precision: jax.lax.Precision, dropout=None, with_probs: bool = False):
    """The "xla" kernel: logits and softmax in float32; probabilities returned when asked.

    Queries are pre-scaled (exact for power-of-two head sizes), and heads move next to the batch
    ([B, H, L, K]) so both products are batched GEMMs.
    """
    dtype = q.dtype
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), dtype)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, L, K]
    logits = jnp.matmul(q, k.transpose(0, 1, 3, 2), precision=precision, preferred_element_type=jnp.float32) + bias
    probs = jax.nn.softmax(logits, axis=-1)  # [B, H, Lq, Lk], float32
    weights = probs if dropout is None else dropout(probs)
    context = jnp.matmul(weights.astype(dtype), v, precision=precision)  # [B, H, L, K]
    return context.transpose(0, 2, 1, 3), probs if with_probs else None
