"""berta-jax: BERT sentence encoders (sergeyzh/BERTA first of all) in pure JAX/Flax, PyTorch-exact.

The names below are loaded on first use (PEP 562) for import time only: `berta-jax encode` plans,
checks and refuses without importing JAX, flax or transformers (measured: see ARCHITECTURE.md).
Imports inside the package point one way and need no such help.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from berta_jax.version import __version__  # noqa: F401

_EXPORTS = {
    "BertConfig": "berta_jax.models.bert.config",
    "BertModel": "berta_jax.models.bert.model",
    "BertOutput": "berta_jax.models.bert.model",
    "BertaJaxError": "berta_jax.errors",
    "CheckpointError": "berta_jax.errors",
    "ConfigError": "berta_jax.errors",
    "ModelNotFoundError": "berta_jax.errors",
    "NonFiniteError": "berta_jax.errors",
    "TruncationWarning": "berta_jax.errors",
    "EncodeResult": "berta_jax.runtime.encoder",
    "Encoder": "berta_jax.runtime.encoder",
    "SentenceConfig": "berta_jax.loading.sentence_config",
    "TextTokenizer": "berta_jax.text.tokenize",
    "TokenizedTexts": "berta_jax.text.tokenize",
    "embed": "berta_jax.models.pooling",
    "l2_normalize": "berta_jax.models.pooling",
    "make_embed_fn": "berta_jax.models.pooling",
    "make_hidden_fn": "berta_jax.models.pooling",
    "pool": "berta_jax.models.pooling",
    "build_model": "berta_jax.loading.weights",
    "flat_params": "berta_jax.models.bert.params",
    "load_model": "berta_jax.loading.weights",
    "param_shapes": "berta_jax.models.bert.params",
    "ModelFolder": "berta_jax.loading.folder",
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
    from berta_jax.models.bert.config import BertConfig  # noqa: F401
    from berta_jax.runtime.encoder import EncodeResult, Encoder  # noqa: F401
    from berta_jax.errors import (  # noqa: F401
        BertaJaxError,
        CheckpointError,
        ConfigError,
        InputError,
        JobError,
        ModelNotFoundError,
        NonFiniteError,
        StorageError,
        TruncationWarning,
    )
    from berta_jax.loading.folder import ModelFolder  # noqa: F401
    from berta_jax.models.bert.model import BertModel, BertOutput  # noqa: F401
    from berta_jax.models.pooling import (  # noqa: F401
        embed,
        l2_normalize,
        make_embed_fn,
        make_hidden_fn,
        pool,
    )
    from berta_jax.loading.sentence_config import SentenceConfig  # noqa: F401
    from berta_jax.text.tokenize import TextTokenizer, TokenizedTexts  # noqa: F401
    from berta_jax.models.bert.params import flat_params, param_shapes  # noqa: F401
    from berta_jax.loading.weights import build_model, load_model  # noqa: F401
