"""Token states -> one sentence vector: pooling and L2 normalisation, as pure functions.

`make_embed_fn` gives the whole forward (encoder + pooling + normalisation) as a pure function of
the parameters, for `jax.jit`, `jax.vmap` and `jax.grad`. All pooling arithmetic is float32. Pooling
works per row (one text per row) or per segment of packed rows (several texts per row,
`pool_segments`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from berta_jax.models.attention import EXPLICIT, AttentionKernel
from berta_jax.models.bert.model import BertModel
from berta_jax.models.vectors import POOLING_MODES


def pool(hidden: Float[Array, "B L D"], mask: Bool[Array, "B L"], mode: str) -> Float[Array, "B D"]:
    """Pool token states over the positions where `mask` is true.

    Modes follow sentence-transformers: "mean", "mean_sqrt_len_tokens", "max", and "cls" (the first
    pooled position, which is [CLS] unless prompt tokens are excluded). A row with no pooled
    position gives zeros, never NaN.
    """
    return pool_segments(hidden, mask.astype(jnp.int32), mask, 1, mode)[:, 0]


def pool_segments(
    hidden: Float[Array, "B L D"],
    segment_ids: Int[Array, "B L"],
    pool_mask: Bool[Array, "B L"],
    num_segments: int,
    mode: str,
) -> Float[Array, "B S D"]:
    """Pool each segment s = 1..S of each row over its `pool_mask` positions -> `[B, S, D]`.

    One text per row (S = 1) sums elementwise, as sentence-transformers does; packed rows sum
    through a float32 one-hot product at HIGHEST precision. Both are deterministic on every backend.
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}")
    hidden = hidden.astype(jnp.float32)
    # [B, L, S]: whether token l is pooled into segment s + 1
    member = (segment_ids[..., None] == jnp.arange(1, num_segments + 1)) & pool_mask[..., None]
    weights = member.astype(jnp.float32)
    count = jnp.maximum(weights.sum(axis=1), 1.0)[..., None]  # [B, S, 1]
    present = member.any(axis=1)[..., None]  # [B, S, 1]
    if mode in ("mean", "mean_sqrt_len_tokens"):
        if num_segments == 1:
            total = (hidden * weights).sum(axis=1)[:, None, :]  # [B, L, D] * [B, L, 1] -> [B, 1, D]
        else:
            total = jnp.einsum("bls,bld->bsd", weights, hidden, precision=jax.lax.Precision.HIGHEST)
        return total / (count if mode == "mean" else jnp.sqrt(count))
    if mode == "cls":
        first = jnp.argmax(member, axis=1)  # [B, S]: the first pooled position of each segment
        return jnp.where(present, jnp.take_along_axis(hidden, first[..., None], axis=1), 0.0)

    # one segment at a time (bounded memory)
    def segment_max(s: Int[Array, ""]) -> Float[Array, "B D"]:
        return jnp.where(member[:, :, s, None], hidden, -jnp.inf).max(axis=1)

    return jnp.where(
        present, jax.lax.map(segment_max, jnp.arange(num_segments)).transpose(1, 0, 2), 0.0
    )


def l2_normalize(x: Float[Array, "... D"], eps: float = 1e-12) -> Float[Array, "... D"]:
    """x / max(||x||, eps), as torch.nn.functional.normalize (a zero row stays zero)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def embed_rows(
    model: BertModel,
    input_ids: Int[Array, "B L"],
    token_type_ids: Int[Array, "B L"] | None,
    segment_ids: Int[Array, "B L"],
    positions: Int[Array, "B L"] | None,
    pool_mask: Bool[Array, "B L"],
    *,
    num_segments: int = 1,
    pooling: str = "mean",
    normalize: bool = True,
    attention_kernel: str | AttentionKernel = EXPLICIT,
    dropout_key: PRNGKeyArray | None = None,
) -> Float[Array, "B S D"]:
    """The one sentence-embedding path: encoder -> pool each of a row's `num_segments` texts over
    `pool_mask` -> L2 norm; one vector per (row, segment), zeros for empty segments.

    `segment_ids` say which text each token belongs to (0 = padding); with one text per row they are
    the attention mask. A `dropout_key` switches the encoder to training mode (dropout at the
    config's rates).
    """
    packed = num_segments > 1
    hidden = model.forward(
        input_ids,
        segment_ids > 0,
        token_type_ids,
        segment_ids=segment_ids if packed else None,
        positions=positions,
        attention_kernel=attention_kernel,
        deterministic=dropout_key is None,
        dropout_key=dropout_key,
    ).last_hidden_state
    pooled = pool_segments(hidden, segment_ids, pool_mask, num_segments, pooling)
    return l2_normalize(pooled) if normalize else pooled


def embed(
    model: BertModel,
    input_ids: Int[Array, "B L"],
    attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
    token_type_ids: Int[Array, "B L"] | None = None,
    pool_mask: Bool[Array, "B L"] | None = None,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    dropout_key: PRNGKeyArray | None = None,
) -> Float[Array, "B D"]:
    """Sentence embeddings of one text per row: `embed_rows` with the attention mask as the
    segments, pooling over `pool_mask` (positions within the attention mask; default: all of
    them)."""
    segments = attention_mask.astype(bool).astype(jnp.int32)
    pool_mask = (attention_mask if pool_mask is None else pool_mask).astype(bool)
    return embed_rows(
        model,
        input_ids,
        token_type_ids,
        segments,
        None,
        pool_mask,
        pooling=pooling,
        normalize=normalize,
        dropout_key=dropout_key,
    )[:, 0]


def make_embed_fn(
    graphdef: nnx.GraphDef, *, pooling: str = "mean", normalize: bool = True
) -> Callable:
    """A pure function of the parameters -> sentence embeddings `[B, D]`:
    `fn(params, input_ids, attention_mask, token_type_ids=None, pool_mask=None, dropout_key=None)`.

    `params` is the `nnx.State` from `nnx.split(model)`; pass it as an argument (not a closure) so
    jit does not bake the weights into the program and grad can differentiate with respect to it.
    """

    def embed_fn(
        params: nnx.State,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
        pool_mask: Bool[Array, "B L"] | None = None,
        dropout_key: PRNGKeyArray | None = None,
    ) -> Float[Array, "B D"]:
        return embed(
            nnx.merge(graphdef, params),
            input_ids,
            attention_mask,
            token_type_ids,
            pool_mask,
            pooling=pooling,
            normalize=normalize,
            dropout_key=dropout_key,
        )

    return embed_fn


def make_hidden_fn(
    graphdef: nnx.GraphDef, *, chunk_tokens: int | None = None, all_layers: bool = False
) -> Callable:
    """A pure `fn(params, input_ids, attention_mask, token_type_ids=None)` -> the last hidden state
    `[B, L, D]`, or with `all_layers` the embeddings output and every layer's (N + 1 x `[B, L, D]`).

    With `chunk_tokens`, a batch of more than that many tokens runs as a sequence of row chunks of
    about that size (`lax.scan`): the same numbers, with cache-sized intermediates, which is faster
    on CPUs.
    """

    def forward(
        params: nnx.State,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"],
    ) -> Float[Array, "B L D"] | tuple[Float[Array, "B L D"], ...]:
        out = nnx.merge(graphdef, params).forward(
            input_ids, attention_mask, token_type_ids, output_hidden_states=all_layers
        )
        return out.hidden_states if all_layers else out.last_hidden_state

    def hidden_fn(
        params: nnx.State,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
    ) -> Float[Array, "B L D"] | tuple[Float[Array, "B L D"], ...]:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        batch, length = input_ids.shape
        rows = batch if all_layers else chunk_rows(batch, length, chunk_tokens)
        if rows == batch:
            return forward(params, input_ids, attention_mask, token_type_ids)
        chunks = tuple(
            x.reshape(batch // rows, rows, length)
            for x in (input_ids, attention_mask, token_type_ids)
        )

        # the parameters travel as the carry: NNX merges them at the loop's trace level
        def step(carried: nnx.State, xs: tuple[Array, ...]) -> tuple[nnx.State, Array]:
            return carried, forward(carried, *xs)

        _, out = jax.lax.scan(step, params, chunks)  # [chunks, rows, L, D]
        return out.reshape(batch, length, -1)

    return hidden_fn


def chunk_rows(batch: int, length: int, chunk_tokens: int | None) -> int:
    """The largest divisor of `batch` whose rows hold at most `chunk_tokens` tokens (at least 1)."""
    if not chunk_tokens or batch * length <= chunk_tokens:
        return batch
    target = max(1, chunk_tokens // length)
    return max(d for d in range(1, target + 1) if batch % d == 0)
