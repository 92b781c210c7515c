"""Scaled dot-product attention and the masks that say which keys each query may see.

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


def attention_bias(key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None) -> Float[Array, "B 1 Q L"]:
    """The additive attention bias.

    Without segments, key t of row b is visible to every query of the row iff key_mask[b, t]:
        [B, L] -> [B, 1, 1, L]
    With segments (packed rows; 0 = padding), query i sees key j iff both belong to the same text:
        segment_ids  1 1 1 2 2 0          q\\k  1 1 1 2 2 0
                                           1   0 0 0 - - -
                                           2   - - - 0 0 -     ("-" = MASKED_LOGIT)
                                           0   - - - - - -
    """
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
) -> tuple[Float[Array, "B L H K"], Float[Array, "B H L L"] | None]:
    """softmax(q k^T / sqrt(K) + bias) v, logits and softmax in float32; probabilities returned when asked.

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
