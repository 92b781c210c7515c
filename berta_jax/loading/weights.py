"""Put checkpoint weights into a `BertModel` without a random initialisation.

`abstract_model` builds the model with shapes only (`nnx.eval_shape`), `nnx.split` gives its state,
the checkpoint is checked against that state (NNX itself checks neither missing keys nor shapes),
then `nnx.replace_by_pure_dict` fills it (layers stacked) and `nnx.merge` gives the module.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from berta_jax.models.bert.config import BertConfig
from berta_jax.storage.model_files import ModelFiles
from berta_jax.models.bert.model import BertModel
from berta_jax.models.registry import family_for
from berta_jax.models.bert.params import FlatParams, state_shapes, stacked_tree
from berta_jax.convert.checkpoint import check_params, read_params


def build_model(
    cfg: BertConfig,
    params: FlatParams,
    source: str,
    *,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat: bool = False,
) -> BertModel:
    """A `BertModel` holding `params` (per-layer flat dict, checked against `cfg` first), cast to
    `param_dtype`.

    `remat=True` rematerialises each layer in the backward pass (less memory for long sequences).
    """
    abstract = family_for(cfg).module("model").abstract_model
    graphdef, state = nnx.split(abstract(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat))
    check_params(params, state_shapes(state), source, cfg)
    arrays = {k: np.asarray(v, dtype=np.dtype(param_dtype)) for k, v in params.items()}
    tree = jax_tree(stacked_tree(arrays, cfg.num_hidden_layers))
    nnx.replace_by_pure_dict(state, tree)
    return nnx.merge(graphdef, state)


def jax_tree(tree: dict) -> dict:
    """Nested dict of numpy arrays -> the same of device arrays."""
    return {k: jax_tree(v) if isinstance(v, dict) else jnp.asarray(v) for k, v in tree.items()}


def load_model(
    files: ModelFiles, cfg: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32
) -> BertModel:
    """Load the encoder of a model folder (HF layout or converted by berta-jax)."""
    params, source = read_params(files)
    return build_model(cfg, params, source, dtype=dtype, param_dtype=param_dtype)
