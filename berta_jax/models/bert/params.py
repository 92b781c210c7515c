"""The model's parameters, one flat entry per layer: the form checkpoints and the name table use.

Inside the model the N layers share one stacked parameter per kind (`layers.ffn_in.kernel`, shape
`[N, D, I]`). Files, the HF <-> Flax name table and error messages speak of each layer's own tensor
(`layers.3.ffn_in.kernel`, shape `[D, I]`). `flat_params` and `param_shapes` give that per-layer
view; `stacked_tree` turns it back into the nested, stacked dict `nnx.replace_by_pure_dict` takes.
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from berta_jax.models.bert.config import BertConfig
from berta_jax.models.bert.model import BertModel, abstract_model

FlatParams = dict[str, np.ndarray]
LAYERS = "layers"
_LAYER_PATH = re.compile(rf"{LAYERS}\.(\d+)\.(.+)\Z")


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _per_layer(state: nnx.State, value) -> dict:
    """{per-layer dotted path: value(leaf, layer index or None)} for each parameter of a state."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        name = _dotted(path)
        if path[0] == LAYERS:
            rest = _dotted(path[1:])
            out.update({f"{LAYERS}.{i}.{rest}": value(var, i) for i in range(var.shape[0])})
        else:
            out[name] = value(var, None)
    return out


def state_shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    """Per-layer path -> shape of every parameter in a (possibly abstract) model state."""
    return _per_layer(state, lambda var, i: tuple(var.shape if i is None else var.shape[1:]))


def param_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer path -> shape of every parameter a config implies (no memory allocated)."""
    return state_shapes(nnx.state(abstract_model(cfg), nnx.Param))


def flat_params(model_or_state: BertModel | nnx.State) -> FlatParams:
    """Parameters (of a model, or an `nnx.State` such as trained params or gradients) as a flat
    per-layer dict of numpy arrays."""
    state = (
        model_or_state
        if isinstance(model_or_state, nnx.State)
        else nnx.state(model_or_state, nnx.Param)
    )
    return _per_layer(state, lambda var, i: np.asarray(var[...] if i is None else var[...][i]))


def stacked_tree(params: FlatParams, num_layers: int) -> dict:
    """Per-layer flat params -> the model state's nested dict, layer tensors stacked on axis 0.

    `params` must be complete (checked against `param_shapes` first)."""
    tree: dict = {}
    per_kind: dict[str, list] = {}
    for name, value in params.items():
        match = _LAYER_PATH.match(name)
        if match:
            per_kind.setdefault(match.group(2), [None] * num_layers)[int(match.group(1))] = value
        else:
            _insert(tree, name.split("."), value)
    for kind, layers in per_kind.items():
        _insert(tree, [LAYERS, *kind.split(".")], np.stack(layers))
    return tree


def _insert(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value
