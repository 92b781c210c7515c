"""Semantic textual similarity, as sentence-transformers' `EmbeddingSimilarityEvaluator` measures
it: Pearson and Spearman correlation (scipy's) of the gold scores with the pairs' cosines,
`pearson_cosine` and `spearman_cosine`.

Input: jsonl, csv or Parquet rows with `sentence1`, `sentence2` and a finite `score`. Gold scores
that are all equal leave both correlations undefined: an error naming the file and the field at
reading; a model that gives every pair the same cosine is an `EvaluationError` (never NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from berta_jax.errors import InputError
from berta_jax.evaluate.base import EvaluationError, embed, finite
from berta_jax.evaluate.records import number_field, read_records, text_field

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

FIELDS = ("sentence1", "sentence2", "score")


def read_sts(path: str) -> tuple[list[str], list[str], list[float]]:
    """The pairs and their gold scores."""
    first, second, scores = [], [], []
    for line, record in read_records(path, FIELDS):
        first.append(text_field(path, line, record, "sentence1"))
        second.append(text_field(path, line, record, "sentence2"))
        scores.append(number_field(path, line, record, "score"))
    if len(scores) < 2:
        raise InputError(f"{path}: {len(scores)} pairs; a correlation needs at least 2")
    if len(set(scores)) == 1:
        raise InputError(
            f"{path}: every 'score' is {scores[0]:g}; a correlation with constant gold scores is "
            "undefined: give pairs of different similarity"
        )
    return first, second, scores


def pairwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a[i], b[i]) in float32, each row over max(norm, 1e-12) as sentence-transformers'
    `pairwise_cos_sim` normalises."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.float32(1e-12))
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), np.float32(1e-12))
    return np.sum(a * b, axis=1)


def sts_scores_from_embeddings(
    embeddings1: np.ndarray, embeddings2: np.ndarray, gold: Sequence[float]
) -> dict[str, float]:
    """`pearson_cosine` and `spearman_cosine` of pairs' embeddings `[n, d]` against gold `[n]`."""
    from scipy.stats import pearsonr, spearmanr  # scipy comes with JAX

    cosines = pairwise_cosine(embeddings1, embeddings2)
    if np.all(cosines == cosines[0]):
        raise EvaluationError(
            f"sts: the model gives all {len(cosines)} pairs the same cosine ({cosines[0]:.6g}); "
            "the correlation is undefined"
        )
    metrics = {
        "pearson_cosine": pearsonr(gold, cosines)[0],
        "spearman_cosine": spearmanr(gold, cosines)[0],
    }
    return finite(metrics, "sts")


class STSEvaluator:
    """Pairs with a gold score. `__call__(encoder)` -> `pearson_cosine`, `spearman_cosine`.

    Args:
      sentences1, sentences2, scores: the pairs and their gold scores (`read_sts`).
      prompt: both sides' prompt (text or a model's prompt name; None: the model's default).
      batch_size: at most this many texts per encoder batch.
    """

    primary_metric = "spearman_cosine"
    metric_names = ("pearson_cosine", "spearman_cosine")

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        scores: Sequence[float],
        *,
        prompt: str | None = None,
        batch_size: int | None = None,
        name: str = "sts",
    ):
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError("sentences1, sentences2 and scores must have the same length")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = [float(s) for s in scores]
        self.prompt, self.batch_size, self.name = prompt, batch_size, name

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        first = embed(encoder, self.sentences1, self.prompt, batch_size=self.batch_size)
        second = embed(encoder, self.sentences2, self.prompt, batch_size=self.batch_size)
        return sts_scores_from_embeddings(first, second, self.scores)

    def counts(self) -> dict[str, int]:
        return {"pairs": len(self.scores)}
