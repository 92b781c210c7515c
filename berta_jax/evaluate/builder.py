"""Evaluators from a TOML-like table (a trainer's `[eval]`, the `evaluate` command's options), and
one call that runs them all.

Keys (every one optional; at least one data key):
  retrieval          a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<qrels_split>.tsv)
  qrels_split        the qrels file's name in qrels/ (default "test")
  sts                a jsonl / csv / Parquet file of sentence1, sentence2, score
  classification     a jsonl / csv / Parquet file of text, label, split (train / test)
  clustering         a jsonl / csv / Parquet file of text, label
  query_prompt       retrieval's queries' prompt (default: the model's query prompt)
  corpus_prompt      retrieval's documents' prompt (default: the model's document prompt)
  prompt             the prompt of STS, classification and clustering texts (default: the model's
                     default prompt)
  batch_size         at most this many texts per encoder batch (default: the token budget alone)
  corpus_chunk_size  retrieval's documents embedded and ranked at a time (default 50000)

A prompt is text or one of the model's prompt names (`base.embed`). Relative paths are read from
`base_dir` (the config file's folder). `run_evaluators` names each metric `<evaluator>/<metric>`:
`retrieval/cosine_ndcg@10`, `sts/spearman_cosine`, `classification/accuracy`,
`clustering/v_measure`.
"""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING, Any, Sequence

from berta_jax.errors import ConfigError
from berta_jax.evaluate.base import Evaluator
from berta_jax.evaluate.beir import read_beir
from berta_jax.evaluate.labelled import (
    ClassificationEvaluator,
    ClusteringEvaluator,
    read_labelled,
    require_sklearn,
)
from berta_jax.evaluate.retrieval import CORPUS_CHUNK_SIZE, RetrievalEvaluator
from berta_jax.evaluate.sts import STSEvaluator, read_sts
from berta_jax.storage.stores import is_url

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

DATA_KEYS = ("retrieval", "sts", "classification", "clustering")
TEXT_KEYS = ("qrels_split", "query_prompt", "corpus_prompt", "prompt")
INT_KEYS = ("batch_size", "corpus_chunk_size")
KEYS = DATA_KEYS + TEXT_KEYS + INT_KEYS


def check_spec(spec: dict[str, Any]) -> None:
    """Every key known, every value of its type: a ConfigError naming the key (and the closest
    known one) otherwise."""
    for key, value in spec.items():
        if key not in KEYS:
            like = difflib.get_close_matches(str(key), KEYS, 1)
            hint = f"; did you mean {like[0]!r}?" if like else f"; known keys: {', '.join(KEYS)}"
            raise ConfigError(f"evaluation: unknown key {key!r}{hint}")
        if key in INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"evaluation: {key} must be a positive integer, got {value!r}")
        elif not isinstance(value, str) or (key in DATA_KEYS + ("qrels_split",) and not value):
            raise ConfigError(f"evaluation: {key} must be a string, got {value!r}")
    if not any(key in spec for key in DATA_KEYS):
        raise ConfigError(
            f"evaluation: no data to evaluate on; give at least one of {', '.join(DATA_KEYS)}"
        )
    for key in ("classification", "clustering"):
        if key in spec:
            require_sklearn(key)


def _path(base_dir: str | os.PathLike | None, value: str) -> str:
    if is_url(value) or os.path.isabs(value) or base_dir is None:
        return value
    return os.path.join(os.fspath(base_dir), value)


def build_evaluators(
    spec: dict[str, Any], base_dir: str | os.PathLike | None = None
) -> list[Evaluator]:
    """The evaluators `spec` asks for (keys: the module docstring), their data read and checked
    now, in the order retrieval, sts, classification, clustering."""
    check_spec(spec)
    batch_size, prompt = spec.get("batch_size"), spec.get("prompt")
    evaluators: list[Evaluator] = []
    if "retrieval" in spec:
        data = read_beir(_path(base_dir, spec["retrieval"]), spec.get("qrels_split", "test"))
        evaluators.append(
            RetrievalEvaluator(
                data,
                query_prompt=spec.get("query_prompt"),
                corpus_prompt=spec.get("corpus_prompt"),
                batch_size=batch_size,
                corpus_chunk_size=spec.get("corpus_chunk_size", CORPUS_CHUNK_SIZE),
            )
        )
    if "sts" in spec:
        first, second, scores = read_sts(_path(base_dir, spec["sts"]))
        evaluators.append(STSEvaluator(first, second, scores, prompt=prompt, batch_size=batch_size))
    if "classification" in spec:
        splits = read_labelled(_path(base_dir, spec["classification"]), with_split=True)
        evaluators.append(ClassificationEvaluator(splits, prompt=prompt, batch_size=batch_size))
    if "clustering" in spec:
        texts, labels = read_labelled(_path(base_dir, spec["clustering"]), with_split=False)["all"]
        evaluators.append(ClusteringEvaluator(texts, labels, prompt=prompt, batch_size=batch_size))
    return evaluators


def metric_names(evaluators: Sequence[Evaluator]) -> list[str]:
    """The names `run_evaluators` will return, known before any run (a trainer checks its
    `eval.metric` against them at start-up)."""
    return [f"{e.name}/{name}" for e in evaluators for name in e.metric_names]


def run_evaluators(evaluators: Sequence[Evaluator], encoder: Encoder) -> dict[str, float]:
    """Every evaluator's metrics, each named `<evaluator name>/<metric>`, in order."""
    metrics: dict[str, float] = {}
    for evaluator in evaluators:
        for name, value in evaluator(encoder).items():
            metrics[f"{evaluator.name}/{name}"] = value
    return metrics
