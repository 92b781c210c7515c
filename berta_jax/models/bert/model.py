"""The BERT encoder in Flax NNX, read top-down like the paper.

embeddings -> N x (self-attention -> residual LayerNorm -> GELU feed-forward -> residual LayerNorm)
-> last hidden state. The N layers are one `EncoderLayer` whose parameters carry a leading layer
axis (created with `nnx.vmap`, applied with `nnx.scan`), so a 12-layer model compiles one layer body
instead of twelve. Parameter names are the ones the converter's table
(`berta_jax/models/bert/names.py`) maps to and from Hugging Face names, with the layer index in the
path (`layers.3.ffn_in.kernel`); `params.py` stacks and unstacks. q, k, v, the attention output and
the feed-forward are `nnx.Linear` modules called as modules, so a quantised or LoRA Linear with the
same call can take their place.

Numerics, in one place (`numerics.Numerics`): parameters are stored in `param_dtype`; matmuls run in
`dtype` (float32 or bfloat16); LayerNorm, softmax and everything after the last layer run in
float32. In float32 mode matmuls ask for `Precision.HIGHEST`, so TPUs and GPUs do not silently drop
to bf16/TF32 passes. Dropout (the config's rates, `nnx.Dropout`) runs only in training mode;
inference is deterministic.

Packed rows: `segment_ids` (0 = padding, 1, 2, ... = the texts sharing a row) restrict attention to
each text's own tokens, and `positions` restart at 0 for each text, so a packed text embeds as if
alone.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from berta_jax.models.attention import EXPLICIT, AttentionKernel, Mask, kernel_named
from berta_jax.models.bert.config import ACTIVATIONS, BertConfig
from berta_jax.models.bert.numerics import Numerics


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The `jax.nn` function config.json's `hidden_act` names (`config.ACTIVATIONS`)."""
    function, kwargs = ACTIVATIONS[name]
    return functools.partial(getattr(jax.nn, function), **kwargs)


@dataclasses.dataclass(frozen=True)
class BertOutput:
    """What `BertModel.forward` returns; the optional parts only when asked for."""

    last_hidden_state: Float[Array, "B L D"]  # float32
    # the embeddings output and each layer's: N + 1 x [B, L, D]
    hidden_states: tuple[Float[Array, "B L D"], ...] | None = None
    # each layer's attention probabilities: N x [B, H, L, L]
    attentions: tuple[Float[Array, "B H L L"], ...] | None = None

    @classmethod
    def of_layers(
        cls,
        embedded: Float[Array, "B L D"],
        last: Float[Array, "B L D"],
        hidden: Float[Array, "N B L D"] | None,
        probs: Float[Array, "N B H L L"] | None,
    ) -> BertOutput:
        """The float32 output of the embeddings and the layer scan (`BertModel._run_layers`)."""
        return cls(
            last_hidden_state=last.astype(jnp.float32),
            hidden_states=None
            if hidden is None
            else (embedded, *(h.astype(jnp.float32) for h in hidden)),
            attentions=None if probs is None else tuple(probs),
        )


class Embeddings(nnx.Module):
    """Token ids -> word + token-type + absolute position embeddings, LayerNorm."""

    def __init__(self, cfg: BertConfig, numerics: Numerics, *, rngs: nnx.Rngs):
        self.word = numerics.embed(cfg.vocab_size, cfg, rngs)
        self.position = numerics.embed(cfg.max_position_embeddings, cfg, rngs)
        self.token_type = numerics.embed(cfg.type_vocab_size, cfg, rngs)
        self.norm = numerics.layer_norm(cfg, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self,
        input_ids: Int[Array, "B L"],
        token_type_ids: Int[Array, "B L"],
        positions: Int[Array, "B L"],
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "B L D"]:
        x = self.word(input_ids) + self.token_type(token_type_ids)  # same summation order as HF
        x = x + self.position(positions)
        return self.dropout(self.norm(x), deterministic=rngs is None, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention over the keys each query may see."""

    def __init__(self, cfg: BertConfig, numerics: Numerics, *, rngs: nnx.Rngs):
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.dtype, self.precision = numerics.dtype, numerics.precision
        self.query = numerics.linear(cfg.hidden_size, cfg.hidden_size, rngs)
        self.key = numerics.linear(cfg.hidden_size, cfg.hidden_size, rngs)
        self.value = numerics.linear(cfg.hidden_size, cfg.hidden_size, rngs)
        self.out = numerics.linear(cfg.hidden_size, cfg.hidden_size, rngs)
        self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)

    def _heads(self, projection: nnx.Linear, x: Float[Array, "B L D"]) -> Float[Array, "B L H K"]:
        batch, length, _ = x.shape
        heads = projection(x).astype(self.dtype)
        return heads.reshape(batch, length, self.num_heads, self.head_dim)

    def __call__(
        self,
        x: Float[Array, "B L D"],
        mask: Mask,
        rngs: nnx.Rngs | None = None,
        *,
        with_probs: bool = False,
        kernel: AttentionKernel = EXPLICIT,
    ) -> tuple[Float[Array, "B L D"], Float[Array, "B H L L"] | None]:
        """The attention output and, when asked, the attention probabilities (before dropout)."""
        q, k, v = (self._heads(projection, x) for projection in (self.query, self.key, self.value))
        dropout = (
            None if rngs is None else (lambda p: self.dropout(p, deterministic=False, rngs=rngs))
        )
        context, probs = kernel(
            q, k, v, mask, precision=self.precision, dropout=dropout, with_probs=with_probs
        )
        batch, length = x.shape[:2]
        return self.out(context.reshape(batch, length, -1)), probs


class EncoderLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, numerics: Numerics, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, numerics, rngs=rngs)
        self.ln_attn = numerics.layer_norm(cfg, rngs)
        self.ffn_in = numerics.linear(cfg.hidden_size, cfg.intermediate_size, rngs)
        self.ffn_out = numerics.linear(cfg.intermediate_size, cfg.hidden_size, rngs)
        self.ln_ffn = numerics.layer_norm(cfg, rngs)
        self.activation = activation(cfg.hidden_act)
        self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

    def __call__(
        self,
        x: Float[Array, "B L D"],
        mask: Mask,
        rngs: nnx.Rngs | None = None,
        *,
        with_probs: bool = False,
        kernel: AttentionKernel = EXPLICIT,
    ) -> tuple[Float[Array, "B L D"], Float[Array, "B H L L"] | None]:
        """The layer output and (when asked) its attention probabilities."""
        drop = lambda h: self.dropout(h, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        attended, probs = self.attention(x, mask, rngs, with_probs=with_probs, kernel=kernel)
        x = self.ln_attn(x + drop(attended))
        h = self.ffn_out(self.activation(self.ffn_in(x)))  # [B, L, I] -> [B, L, D]
        return self.ln_ffn(x + drop(h)), probs


class BertModel(nnx.Module):
    """The BERT encoder: token ids -> last hidden state `[batch, seq, hidden]`.

    Args:
      cfg: architecture, read from the checkpoint.
      dtype: compute dtype of the matmuls (float32 or bfloat16).
      param_dtype: storage dtype of the parameters.
      remat: rematerialise each layer in the backward pass (less memory for long sequences).
    """

    def __init__(
        self,
        cfg: BertConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.cfg, self.remat = cfg, remat
        numerics = Numerics(dtype, param_dtype)
        self.embeddings = Embeddings(cfg, numerics, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stacked(layer_rngs: nnx.Rngs) -> EncoderLayer:
            return EncoderLayer(cfg, numerics, rngs=layer_rngs)

        # one EncoderLayer, every parameter with a leading [num_hidden_layers] axis
        self.layers = stacked(rngs)

    def forward(
        self,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
        *,
        segment_ids: Int[Array, "B L"] | None = None,
        positions: Int[Array, "B L"] | None = None,
        deterministic: bool = True,
        dropout_key: PRNGKeyArray | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        attention_kernel: str | AttentionKernel = EXPLICIT,
    ) -> BertOutput:
        """The encoder, with packed rows, training dropout and introspection when asked.

        Args:
          segment_ids: for packed rows, which text each token belongs to (0 for padding); attention
            stays within a text. Default: one text per row (`attention_mask`).
          positions: position ids (restarting at 0 for each packed text); default 0, 1, 2, ... per
            row.
          deterministic: True (inference) ignores dropout; False applies the config's dropout rates
            and needs `dropout_key`, from which every layer and call site derives its own key.
          output_hidden_states: also return the embeddings output and every layer's output.
          output_attentions: also return every layer's attention probabilities `[B, H, L, L]`.
          attention_kernel: an `AttentionKernel` or its name: "xla" (explicit, every backend),
            "cudnn" (fused, NVIDIA GPUs, 16-bit compute) or "splash" (fused, TPUs, 16-bit compute;
            the Pallas interpreter elsewhere); see `attention.select_kernel`. Dropout and
            `output_attentions` always run the explicit kernel.
        """
        if not deterministic and dropout_key is None:
            raise ValueError(
                "deterministic=False (training) needs a dropout_key, e.g. jax.random.key(0)"
            )
        key = None if deterministic else dropout_key
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:  # right padding, one text per row: position = index
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        explicit = key is not None or output_attentions  # only it has dropout and probabilities
        kernel = EXPLICIT if explicit else kernel_named(attention_kernel)
        mask = kernel.mask(attention_mask.astype(bool), segment_ids)
        rngs = None if key is None else nnx.Rngs(dropout=jax.random.fold_in(key, 0))
        embedded = self.embeddings(input_ids, token_type_ids, positions, rngs)
        last, hidden, probs = self._run_layers(
            embedded, mask, key, output_hidden_states, output_attentions, kernel
        )
        return BertOutput.of_layers(embedded, last, hidden, probs)

    def _run_layers(
        self,
        x: Float[Array, "B L D"],
        mask: Mask,
        key: PRNGKeyArray | None,
        keep_hidden: bool,
        keep_probs: bool,
        kernel: AttentionKernel,
    ) -> tuple[
        Float[Array, "B L D"], Float[Array, "N B L D"] | None, Float[Array, "N B H L L"] | None
    ]:
        """Scan the stacked layer over the layer axis: (last state, [N, B, L, D] states,
        [N, B, H, L, L] probs)."""
        keys = (
            None
            if key is None
            else jax.random.split(jax.random.fold_in(key, 1), self.cfg.num_hidden_layers)
        )

        def body(x: Float[Array, "B L D"], layer: EncoderLayer, layer_key: PRNGKeyArray | None):
            rngs = None if layer_key is None else nnx.Rngs(dropout=layer_key)
            y, probs = layer(x, mask, rngs, with_probs=keep_probs, kernel=kernel)
            return y, (y if keep_hidden else None, probs)

        if self.remat:
            body = nnx.remat(body)
        scan = nnx.scan(
            body, in_axes=(nnx.Carry, 0, None if keys is None else 0), out_axes=(nnx.Carry, 0)
        )
        x, (hidden, probs) = scan(x, self.layers, keys)
        return x, hidden, probs

    def __call__(
        self,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
    ) -> Float[Array, "B L D"]:
        """Inference: token ids -> last hidden state `[B, L, D]` (float32)."""
        return self.forward(input_ids, attention_mask, token_type_ids).last_hidden_state


def abstract_model(
    cfg: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False
) -> BertModel:
    """The model with shapes only (`nnx.eval_shape`): nothing is allocated or initialised."""
    return nnx.eval_shape(
        lambda: BertModel(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=nnx.Rngs(0))
    )
