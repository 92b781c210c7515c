"""Token states -> one sentence vector: pooling and L2 normalisation, as pure functions.

`make_embed_fn` gives the whole forward (encoder + pooling + normalisation) as a
pure function of the parameters, for `jax.jit`, `jax.vmap` and `jax.grad`.
All pooling arithmetic is float32.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from berta_jax.model import BertModel


def pool(
    hidden: Float[Array, "B L D"], mask: Bool[Array, "B L"], mode: str
) -> Float[Array, "B D"]:
    """Pool token states over the positions where `mask` is true.

    Modes follow sentence-transformers: "mean", "mean_sqrt_len_tokens", "max",
    and "cls" (the first pooled position, which is [CLS] unless prompt tokens
    are excluded). A row with no pooled position gives zeros, never NaN.
    """
    hidden = hidden.astype(jnp.float32)
    weights = mask.astype(jnp.float32)[..., None]  # [B, L, 1]
    count = jnp.maximum(weights.sum(axis=1), 1.0)  # [B, 1]
    if mode == "mean":
        return (hidden * weights).sum(axis=1) / count
    if mode == "mean_sqrt_len_tokens":
        return (hidden * weights).sum(axis=1) / jnp.sqrt(count)
    if mode == "cls":
        first = jnp.argmax(mask, axis=1)  # [B]
        return jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0, :]
    if mode == "max":
        masked = jnp.where(weights > 0, hidden, -jnp.inf).max(axis=1)
        return jnp.where(mask.any(axis=1, keepdims=True), masked, 0.0)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(x: Float[Array, "B D"], eps: float = 1e-12) -> Float[Array, "B D"]:
    """x / max(||x||, eps), as torch.nn.functional.normalize (a zero row stays zero)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def embed(
    model: BertModel,
    input_ids: Int[Array, "B L"],
    attention_mask: Int[Array, "B L"],
    token_type_ids: Int[Array, "B L"] | None = None,
    pool_mask: Bool[Array, "B L"] | None = None,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    dropout_key=None,
) -> Float[Array, "B D"]:
    """Sentence embeddings from token ids: encoder, pooling over `pool_mask` (default: attention mask), L2 norm.

    A `dropout_key` switches the encoder to training mode (dropout at the config's rates).
    """
    hidden = model.forward(
        input_ids, attention_mask, token_type_ids, deterministic=dropout_key is None, dropout_key=dropout_key
    ).last_hidden_state
    pooled = pool(hidden, (attention_mask if pool_mask is None else pool_mask).astype(bool), pooling)
    return l2_normalize(pooled) if normalize else pooled


def make_embed_fn(graphdef: nnx.GraphDef, *, pooling: str = "mean", normalize: bool = True) -> Callable:
    """A pure `fn(params, input_ids, attention_mask, token_type_ids=None, pool_mask=None, dropout_key=None)
    -> [B, D]`.

    `params` is the `nnx.State` from `nnx.split(model)`; pass it as an argument
    (not a closure) so jit does not bake the weights into the program and grad
    can differentiate with respect to it.
    """

    def embed_fn(params, input_ids, attention_mask, token_type_ids=None, pool_mask=None, dropout_key=None):
        model = nnx.merge(graphdef, params)
        return embed(
            model, input_ids, attention_mask, token_type_ids, pool_mask,
            pooling=pooling, normalize=normalize, dropout_key=dropout_key,
        )

    return embed_fn


def make_hidden_fn(graphdef: nnx.GraphDef, *, chunk_tokens: int | None = None) -> Callable:
    """A pure `fn(params, input_ids, attention_mask, token_type_ids=None) -> [B, L, D]` (last hidden state).

    With `chunk_tokens`, a batch of more than that many tokens runs as a
    sequence of row chunks of about that size (`lax.map`): the same numbers,
    with cache-sized intermediates, which is markedly faster on CPUs.
    """

    def hidden_fn(params, input_ids, attention_mask, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        forward = lambda ids, mask, types: nnx.merge(graphdef, params)(ids, mask, types)  # noqa: E731
        batch, length = input_ids.shape
        rows = _chunk_rows(batch, length, chunk_tokens)
        if rows == batch:
            return forward(input_ids, attention_mask, token_type_ids)
        chunks = [x.reshape(batch // rows, rows, length) for x in (input_ids, attention_mask, token_type_ids)]
        out = jax.lax.map(lambda xs: forward(*xs), tuple(chunks))  # [chunks, rows, L, D]
        return out.reshape(batch, length, -1)

    return hidden_fn


def _chunk_rows(batch: int, length: int, chunk_tokens: int | None) -> int:
    """The largest divisor of `batch` whose rows hold at most `chunk_tokens` tokens (at least 1 row)."""
    if not chunk_tokens or batch * length <= chunk_tokens:
        return batch
    target = max(1, chunk_tokens // length)
    return max(d for d in range(1, target + 1) if batch % d == 0)
