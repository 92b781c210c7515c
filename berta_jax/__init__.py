"""berta-jax: BERT sentence encoders (sergeyzh/BERTA first of all) in pure JAX/Flax, PyTorch-exact.

The names below are loaded on first use (PEP 562) for import time only: `berta-jax encode` plans, checks and
refuses without importing JAX, flax or transformers (measured: see ARCHITECTURE.md). Imports inside the
package point one way and need no such help.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from berta_jax.version import __version__  # noqa: F401

_EXPORTS = {
    "BertConfig": "berta_jax.config",
    "BertModel": "berta_jax.model",
    "BertOutput": "berta_jax.model",
    "BertaJaxError": "berta_jax.errors",
    "CheckpointError": "berta_jax.errors",
    "ConfigError": "berta_jax.errors",
    "ModelNotFoundError": "berta_jax.errors",
    "NonFiniteError": "berta_jax.errors",
    "TruncationWarning": "berta_jax.errors",
    "EncodeResult": "berta_jax.encoder",
    "Encoder": "berta_jax.encoder",
    "SentenceConfig": "berta_jax.st_config",
    "TextTokenizer": "berta_jax.tokenize",
    "TokenizedTexts": "berta_jax.tokenize",
    "embed": "berta_jax.pooling",
    "l2_normalize": "berta_jax.pooling",
    "make_embed_fn": "berta_jax.pooling",
    "make_hidden_fn": "berta_jax.pooling",
    "pool": "berta_jax.pooling",
    "build_model": "berta_jax.weights",
    "flat_params": "berta_jax.params",
    "load_model": "berta_jax.weights",
    "param_shapes": "berta_jax.params",
    "ModelFolder": "berta_jax.folder",
    "StorageError": "berta_jax.errors",
    "InputError": "berta_jax.errors",
    "JobError": "berta_jax.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'berta_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the real names
    from berta_jax.config import BertConfig  # noqa: F401
    from berta_jax.encoder import EncodeResult, Encoder  # noqa: F401
    from berta_jax.errors import (  # noqa: F401
        BertaJaxError, CheckpointError, ConfigError, InputError, JobError, ModelNotFoundError, NonFiniteError,
        StorageError, TruncationWarning,
    )
    from berta_jax.folder import ModelFolder  # noqa: F401
    from berta_jax.model import BertModel, BertOutput  # noqa: F401
    from berta_jax.pooling import embed, l2_normalize, make_embed_fn, make_hidden_fn, pool  # noqa: F401
    from berta_jax.st_config import SentenceConfig  # noqa: F401
    from berta_jax.tokenize import TextTokenizer, TokenizedTexts  # noqa: F401
    from berta_jax.params import flat_params, param_shapes  # noqa: F401
    from berta_jax.weights import build_model, load_model  # noqa: F401
