"""What every evaluator is (`Evaluator`: a name, a primary metric, `__call__(encoder) -> dict`), and
how it embeds one side's texts with that side's prompt.

A prompt is given as text or as the name of one of the model's prompts: a value that names one of
the model's prompts is that prompt (`search_query` -> BERTA's "search_query: "), any other value is
the literal prefix ("" for none). No prompt given: queries and documents take the model's own query
and document prompts (`Encoder.encode_query` / `encode_document`, as sentence-transformers'
retrieval evaluator does), every other text the model's default prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from berta_jax.errors import BertaJaxError, ConfigError

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder


class EvaluationError(BertaJaxError, ValueError):
    """A metric is undefined on what the model produced (every pair the same cosine, say)."""


class Evaluator(Protocol):
    name: str  # the prefix `run_evaluators` puts before its metrics ("retrieval", "sts", ...)
    primary_metric: str  # the metric a trainer watches (e.g. "cosine_ndcg@10")
    metric_names: tuple[str, ...]  # every metric `__call__` returns, in its order

    def __call__(self, encoder: Encoder) -> dict[str, float]: ...


def embed(
    encoder: Encoder,
    texts: Sequence[str],
    prompt: str | None,
    *,
    role: str | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """`[n, dim]` float32 embeddings of `texts` with `prompt` (see the module docstring); `role`
    ("query" or "document") picks the model's own prompt when `prompt` is None."""
    if prompt is None:
        _check_role_prompt(encoder, role)
        if role == "query":
            return encoder.encode_query(list(texts), batch_size=batch_size)
        if role == "document":
            return encoder.encode_document(list(texts), batch_size=batch_size)
        return encoder.encode(list(texts), batch_size=batch_size)
    if prompt in encoder.sentence.prompts:
        return encoder.encode(list(texts), prompt_name=prompt, batch_size=batch_size)
    return encoder.encode(list(texts), prompt=prompt, batch_size=batch_size)


def _check_role_prompt(encoder: Encoder, role: str | None) -> None:
    """A model with prompts but none for this role: a ConfigError naming the option to give."""
    if role is None:
        return
    try:
        encoder.sentence.retrieval_prompt_name(role)
    except ValueError as e:
        option = "query_prompt" if role == "query" else "corpus_prompt"
        raise ConfigError(f"{e} (evaluation: give {option}, a prompt name or text)") from None


def finite(metrics: dict[str, float], what: str) -> dict[str, float]:
    """The metrics, each a finite Python float; an EvaluationError naming the first that is not."""
    out = {}
    for name, value in metrics.items():
        value = float(value)
        if not np.isfinite(value):
            raise EvaluationError(f"{what}: {name} is {value}; the metric is undefined here")
        out[name] = value
    return out
