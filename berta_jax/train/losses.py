"""The training losses, by name: pure JAX functions of one `[B, D]` embedding array per input column
(anchor, positive, negatives...), equal in value and gradient to sentence-transformers 6's.

    loss = make_loss("mnrl", scale=20.0)
    value = loss(embeddings, labels, aux)   # aux = loss.init_aux(key, student_dim, teacher_dim)

Every loss casts to float32, is jit-able and differentiable, and never returns NaN for a zero
vector.
"""

from __future__ import annotations

import dataclasses

from berta_jax.errors import ConfigError
from berta_jax.train.base import Embeddings, Loss, unknown
from berta_jax.train.distill import EmbedDistillLoss, MSELoss, RelationalLoss
from berta_jax.train.matryoshka import MatryoshkaLoss, matryoshka
from berta_jax.train.ranking import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
from berta_jax.train.scored import CoSENTLoss, MarginMSELoss

LOSSES = {
    "mnrl": MultipleNegativesRankingLoss,
    "cached_mnrl": CachedMultipleNegativesRankingLoss,
    "mse": MSELoss,
    "embed_distill": EmbedDistillLoss,
    "relational": RelationalLoss,
    "margin_mse": MarginMSELoss,
    "cosent": CoSENTLoss,
}
LOSS_NAMES = tuple(LOSSES)

__all__ = ["LOSS_NAMES", "Embeddings", "Loss", "MatryoshkaLoss", "make_loss", "matryoshka",
           "options"]


def options(name: str) -> dict[str, object]:
    """The options of loss `name` and their defaults."""
    if name not in LOSSES:
        raise unknown("loss.name", "loss", str(name), LOSS_NAMES)
    return {f.name: f.default for f in dataclasses.fields(LOSSES[name])}


def make_loss(name: str, **given: object) -> Loss:
    """The loss `name` (one of LOSS_NAMES) with `given` options; unknown names and options, and bad
    values, are a ConfigError that names them."""
    valid = options(name)
    for option in given:
        if option not in valid:
            if not valid:
                raise ConfigError(f"loss.{name}: unknown option {option!r}; this loss has none")
            raise unknown(f"loss.{name}", "option", option, tuple(valid))
    return LOSSES[name](**given)
