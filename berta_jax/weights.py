"""Put checkpoint weights into a `BertModel` without a random initialisation.

nnx.eval_shape builds the model abstractly (shapes only), nnx.split gives its
state, the checkpoint is checked against that state (NNX itself checks neither
missing keys nor shapes), then nnx.replace_by_pure_dict fills it and nnx.merge
gives the module.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from berta_jax.config import BertConfig
from berta_jax.model import BertModel
from convert.checkpoint import FlatParams, check_params, read_params


def _abstract(cfg: BertConfig, dtype, param_dtype, precision, remat: bool = False) -> BertModel:
    return nnx.eval_shape(
        lambda: BertModel(
            cfg, dtype=dtype, param_dtype=param_dtype, precision=precision, remat=remat, rngs=nnx.Rngs(0)
        )
    )


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def param_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Dotted Flax path -> shape of every parameter a config implies (no memory allocated)."""
    _, state = nnx.split(_abstract(cfg, jnp.float32, jnp.float32, None))
    return {_dotted(path): tuple(var.shape) for path, var in nnx.to_flat_state(state)}


def _nest(flat: dict[str, jax.Array]) -> dict:
    """{'layers.0.ffn_in.kernel': x} -> {'layers': {0: {'ffn_in': {'kernel': x}}}} (list indices as ints)."""
    tree: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = (int(p) if p.isdigit() else p for p in dotted.split("."))
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def build_model(
    cfg: BertConfig,
    params: FlatParams,
    source: str,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    precision: jax.lax.Precision | None = None,
    remat: bool = False,
) -> BertModel:
    """A `BertModel` holding `params` (checked against `cfg` first), cast to `param_dtype`.

    `remat=True` rematerialises each layer in the backward pass (less memory for long sequences).
    """
    graphdef, state = nnx.split(_abstract(cfg, dtype, param_dtype, precision, remat))
    check_params(params, {_dotted(path): tuple(var.shape) for path, var in nnx.to_flat_state(state)}, source)
    arrays = {k: jnp.asarray(np.asarray(v), dtype=param_dtype) for k, v in params.items()}
    nnx.replace_by_pure_dict(state, _nest(arrays))
    return nnx.merge(graphdef, state)


def load_model(
    folder: str | Path,
    cfg: BertConfig,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    precision: jax.lax.Precision | None = None,
) -> BertModel:
    """Load the encoder of a model folder (HF layout or converted by berta-jax)."""
    params, source = read_params(Path(folder))
    return build_model(cfg, params, source, dtype=dtype, param_dtype=param_dtype, precision=precision)


def flat_params(model_or_state: BertModel | nnx.State) -> FlatParams:
    """Parameters (of a model, or an `nnx.State` such as trained params) as a flat dict of numpy arrays."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.split(model_or_state, nnx.Param)[1]
    return {_dotted(path): np.asarray(var[...]) for path, var in nnx.to_flat_state(state)}
