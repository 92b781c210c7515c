"""The dtype policy of the BERT encoder, in one place: which dtype each layer kind computes and
stores in.

Parameters are stored in `param_dtype`; matmuls run in `dtype` (float32 or bfloat16); LayerNorm, the
embeddings and everything after the last layer run in float32. In float32 mode matmuls ask for
`Precision.HIGHEST`, so TPUs and GPUs do not silently drop to bf16/TF32 passes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from berta_jax.models.bert.config import BertConfig


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The dtype policy: compute dtype of the matmuls, storage dtype of the parameters, matmul
    precision."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @property
    def precision(self) -> jax.lax.Precision:
        """HIGHEST for float32 compute (PyTorch parity on TPU/GPU), DEFAULT for bfloat16."""
        return (
            jax.lax.Precision.HIGHEST
            if jnp.dtype(self.dtype) == jnp.float32
            else jax.lax.Precision.DEFAULT
        )

    @property
    def accumulate(self) -> jnp.dtype | None:
        """What a 16-bit matmul returns: float32. Its products accumulate in float32 (what TPUs,
        GPUs and the CPU's bf16 matrix units do natively; XLA:CPU reaches AMX only for such dots),
        and bias, GELU and the residual sum see float32. None in float32 mode: the dots there stay
        exactly as they were."""
        return None if jnp.dtype(self.dtype) == jnp.float32 else jnp.dtype(jnp.float32)

    def linear(self, n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(
            n_in,
            n_out,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            preferred_element_type=self.accumulate,
            rngs=rngs,
        )

    def layer_norm(self, cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
        # BERT's eps (from the config; nnx defaults to 1e-6) and the two-pass variance torch uses;
        # statistics and output in float32.
        return nnx.LayerNorm(
            cfg.hidden_size,
            epsilon=cfg.layer_norm_eps,
            use_fast_variance=False,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            rngs=rngs,
        )

    def embed(self, n: int, cfg: BertConfig, rngs: nnx.Rngs) -> nnx.Embed:
        return nnx.Embed(
            n, cfg.hidden_size, dtype=jnp.float32, param_dtype=self.param_dtype, rngs=rngs
        )
