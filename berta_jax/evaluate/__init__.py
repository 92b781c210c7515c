"""Measuring an encoder: retrieval, STS, classification and clustering, each equal to its
sentence-transformers (retrieval, STS) or MTEB (classification, clustering) counterpart on the same
embeddings; `build_evaluators` makes them from a config table, `run_evaluators` runs them."""

from berta_jax.evaluate.base import EvaluationError, Evaluator
from berta_jax.evaluate.beir import RetrievalSet, read_beir
from berta_jax.evaluate.builder import KEYS, build_evaluators, metric_names, run_evaluators
from berta_jax.evaluate.labelled import (
    ClassificationEvaluator,
    ClusteringEvaluator,
    classification_scores_from_embeddings,
    clustering_scores_from_embeddings,
    read_labelled,
)
from berta_jax.evaluate.retrieval import RetrievalEvaluator, retrieval_scores_from_embeddings
from berta_jax.evaluate.sts import STSEvaluator, read_sts, sts_scores_from_embeddings

__all__ = [
    "KEYS",
    "ClassificationEvaluator",
    "ClusteringEvaluator",
    "EvaluationError",
    "Evaluator",
    "RetrievalEvaluator",
    "RetrievalSet",
    "STSEvaluator",
    "build_evaluators",
    "classification_scores_from_embeddings",
    "clustering_scores_from_embeddings",
    "metric_names",
    "read_beir",
    "read_labelled",
    "read_sts",
    "retrieval_scores_from_embeddings",
    "run_evaluators",
    "sts_scores_from_embeddings",
]
