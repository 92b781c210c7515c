"""The BERT encoder in Flax NNX, read top-down like the paper.

embeddings -> N x (self-attention -> residual LayerNorm -> GELU feed-forward ->
residual LayerNorm) -> last hidden state. Parameter names are the ones the
converter's table (`convert/mapping.py`) maps to and from Hugging Face names.

Numerics: parameters are stored in `param_dtype`; matmuls run in `dtype`
(float32 or bfloat16); LayerNorm, softmax and everything after the last layer
run in float32. In float32 mode matmuls ask for `Precision.HIGHEST`, so TPUs and
GPUs do not silently drop to bf16/TF32 passes. Dropout (the config's rates)
runs only in training mode (`forward(..., deterministic=False, dropout_key=...)`);
inference is deterministic.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from berta_jax.config import BertConfig

# Added to the attention logits of padding keys. Finite, so a row whose keys
# are all padding (a filler row) gives a uniform softmax instead of NaN.
MASKED_LOGIT = -1e30

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def dropout(x: jax.Array, rate: float, key: jax.Array | None, site: int) -> jax.Array:
    """Inverted dropout with the key folded by call site; identity at inference (key None) or rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, site), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class BertOutput:
    """What `BertModel.forward` returns; the optional parts only when asked for."""

    last_hidden_state: jax.Array  # [B, L, D] float32
    hidden_states: tuple[jax.Array, ...] | None = None  # embeddings output + each layer's, N + 1 x [B, L, D]
    attentions: tuple[jax.Array, ...] | None = None  # each layer's probabilities, N x [B, H, L, L]


def default_precision(dtype: jnp.dtype) -> jax.lax.Precision:
    """HIGHEST for float32 compute (PyTorch parity on TPU/GPU), DEFAULT for bf16."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


class _Layers:
    """Constructors shared by the modules below: one place for dtype handling."""

    def __init__(self, cfg: BertConfig, dtype, param_dtype, precision, rngs: nnx.Rngs):
        self.cfg, self.dtype, self.param_dtype, self.precision, self.rngs = cfg, dtype, param_dtype, precision, rngs

    def linear(self, n_in: int, n_out: int) -> nnx.Linear:
        return nnx.Linear(
            n_in, n_out, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision, rngs=self.rngs
        )

    def layer_norm(self) -> nnx.LayerNorm:
        # BERT's eps (1e-12, from the config; nnx defaults to 1e-6) and the
        # two-pass variance torch uses; statistics and output in float32.
        return nnx.LayerNorm(
            self.cfg.hidden_size,
            epsilon=self.cfg.layer_norm_eps,
            use_fast_variance=False,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            rngs=self.rngs,
        )

    def embed(self, n: int) -> nnx.Embed:
        return nnx.Embed(n, self.cfg.hidden_size, dtype=jnp.float32, param_dtype=self.param_dtype, rngs=self.rngs)


class Embeddings(nnx.Module):
    """Token ids -> word + token-type + absolute position embeddings, LayerNorm."""

    def __init__(self, make: _Layers):
        cfg = make.cfg
        self.word = make.embed(cfg.vocab_size)
        self.position = make.embed(cfg.max_position_embeddings)
        self.token_type = make.embed(cfg.type_vocab_size)
        self.norm = make.layer_norm()
        self.dropout_rate = cfg.hidden_dropout_prob

    def __call__(
        self, input_ids: Int[Array, "B L"], token_type_ids: Int[Array, "B L"], dropout_key: jax.Array | None = None
    ) -> Float[Array, "B L D"]:
        positions = jnp.arange(input_ids.shape[1])[None, :]  # [1, L]; right padding, so position = index
        x = self.word(input_ids) + self.token_type(token_type_ids)  # same summation order as HF
        x = x + self.position(positions)
        return dropout(self.norm(x), self.dropout_rate, dropout_key, site=0)


class SelfAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention over the non-padding keys."""

    def __init__(self, make: _Layers):
        cfg = make.cfg
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.dtype, self.precision = make.dtype, make.precision
        self.query = make.linear(cfg.hidden_size, cfg.hidden_size)
        self.key = make.linear(cfg.hidden_size, cfg.hidden_size)
        self.value = make.linear(cfg.hidden_size, cfg.hidden_size)
        self.out = make.linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_rate = cfg.attention_probs_dropout_prob

    def _projections(self, x: Float[Array, "B L D"]) -> tuple[Float[Array, "B H L K"], ...]:
        """q, k, v from one [D, 3D] matmul (a larger GEMM runs closer to peak), split into heads."""
        kernel = jnp.concatenate([self.query.kernel[...], self.key.kernel[...], self.value.kernel[...]], axis=1)
        bias = jnp.concatenate([self.query.bias[...], self.key.bias[...], self.value.bias[...]])
        qkv = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), precision=self.precision) + bias.astype(self.dtype)
        batch, length, _ = x.shape
        heads = qkv.reshape(batch, length, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        return heads[0], heads[1], heads[2]  # each [B, H, L, K]

    def __call__(
        self, x: Float[Array, "B L D"], key_mask: Bool[Array, "B L"], dropout_key: jax.Array | None = None
    ) -> tuple[Float[Array, "B L D"], Float[Array, "B H L L"]]:
        """The attention output and the attention probabilities (before dropout)."""
        q, k, v = self._projections(x)  # [B, H, L, K]
        q = q * jnp.asarray(1.0 / math.sqrt(self.head_dim), q.dtype)  # exact for power-of-two head sizes
        # key_mask[b, t] says whether key t of row b is a real token; padding keys get a large
        # negative bias: [B, L] -> [B, 1, 1, L], broadcast over heads and queries.
        bias = jnp.where(key_mask, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
        logits = jnp.matmul(
            q, k.transpose(0, 1, 3, 2), precision=self.precision, preferred_element_type=jnp.float32
        ) + bias  # [B, H, Lq, Lk]
        probs = jax.nn.softmax(logits, axis=-1)  # float32 softmax
        dropped = dropout(probs, self.dropout_rate, dropout_key, site=1).astype(self.dtype)
        context = jnp.matmul(dropped, v, precision=self.precision)  # [B, H, L, K]
        batch, _, length, _ = context.shape
        return self.out(context.transpose(0, 2, 1, 3).reshape(batch, length, -1)), probs


class EncoderLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, make: _Layers):
        cfg = make.cfg
        self.attention = SelfAttention(make)
        self.ln_attn = make.layer_norm()
        self.ffn_in = make.linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = make.linear(cfg.intermediate_size, cfg.hidden_size)
        self.ln_ffn = make.layer_norm()
        self.activation = _ACTIVATIONS[cfg.hidden_act]
        self.dropout_rate = cfg.hidden_dropout_prob

    def __call__(
        self, x: Float[Array, "B L D"], key_mask: Bool[Array, "B L"], dropout_key: jax.Array | None = None
    ) -> tuple[Float[Array, "B L D"], Float[Array, "B H L L"]]:
        """The layer output and its attention probabilities."""
        attended, probs = self.attention(x, key_mask, dropout_key)
        x = self.ln_attn(x + dropout(attended, self.dropout_rate, dropout_key, site=2))
        h = self.ffn_out(self.activation(self.ffn_in(x)))  # [B, L, I] -> [B, L, D]
        return self.ln_ffn(x + dropout(h, self.dropout_rate, dropout_key, site=3)), probs


class BertModel(nnx.Module):
    """The BERT encoder: token ids -> last hidden state `[batch, seq, hidden]`.

    Args:
      cfg: architecture, read from the checkpoint.
      dtype: compute dtype of the matmuls (float32 or bfloat16).
      param_dtype: storage dtype of the parameters.
      precision: matmul precision; by default HIGHEST for float32 compute.
    """

    def __init__(
        self,
        cfg: BertConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        precision: jax.lax.Precision | None = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.remat = remat
        make = _Layers(cfg, dtype, param_dtype, precision or default_precision(dtype), rngs)
        self.embeddings = Embeddings(make)
        self.layers = nnx.List([EncoderLayer(make) for _ in range(cfg.num_hidden_layers)])

    def forward(
        self,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
        *,
        deterministic: bool = True,
        dropout_key: jax.Array | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BertOutput:
        """The encoder, with training dropout and introspection when asked.

        Args:
          deterministic: True (inference) ignores dropout; False applies the config's dropout rates and
            needs `dropout_key`, from which every layer and call site derives its own key.
          output_hidden_states: also return the embeddings output and every layer's output.
          output_attentions: also return every layer's attention probabilities `[B, H, L, L]`.
        """
        if not deterministic and dropout_key is None:
            raise ValueError("deterministic=False (training) needs a dropout_key, e.g. jax.random.key(0)")
        key = None if deterministic else dropout_key
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        key_mask = attention_mask.astype(bool)
        layer_key = (lambda i: None) if key is None else (lambda i: jax.random.fold_in(key, i + 1))  # noqa: E731
        run_layer = nnx.remat(EncoderLayer.__call__) if self.remat else EncoderLayer.__call__
        x = self.embeddings(input_ids, token_type_ids, None if key is None else jax.random.fold_in(key, 0))
        hidden, attentions = [x], []
        for i, layer in enumerate(self.layers):
            x, probs = run_layer(layer, x, key_mask, layer_key(i))
            hidden.append(x)
            attentions.append(probs)
        return BertOutput(
            last_hidden_state=x.astype(jnp.float32),
            hidden_states=tuple(h.astype(jnp.float32) for h in hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def __call__(
        self,
        input_ids: Int[Array, "B L"],
        attention_mask: Int[Array, "B L"] | Bool[Array, "B L"],
        token_type_ids: Int[Array, "B L"] | None = None,
    ) -> Float[Array, "B L D"]:
        """Inference: token ids -> last hidden state `[B, L, D]` (float32)."""
        return self.forward(input_ids, attention_mask, token_type_ids).last_hidden_state
