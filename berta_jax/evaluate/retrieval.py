"""Retrieval, as sentence-transformers' `InformationRetrievalEvaluator` measures it (cosine
similarity, its default k lists and metric names), with the corpus embedded a chunk at a time by the
project's `Encoder` and ranked on the devices (`topk.running_top_k`).

Differences from sentence-transformers: the corpus is embedded and ranked in ascending id order (its
tie rule, (-score, id), becomes lower index first: see `topk`); a relevant document missing from
the corpus is an error when read from a BEIR folder (`beir.read_beir`) instead of a document no
query can find.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from berta_jax.evaluate.base import embed, finite
from berta_jax.evaluate.beir import RetrievalSet
from berta_jax.evaluate.ir_metrics import MAX_K, METRIC_NAMES, retrieval_metrics
from berta_jax.evaluate.topk import running_top_k

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

CORPUS_CHUNK_SIZE = 50_000  # sentence-transformers' default corpus_chunk_size


def retrieval_scores_from_embeddings(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    corpus_ids: Sequence[str],
    relevant: Sequence[set[str]],
    *,
    chunk_size: int = CORPUS_CHUNK_SIZE,
) -> dict[str, float]:
    """The metrics of embeddings already made: `query_embeddings[i]` is the query whose relevant
    ids are `relevant[i]`, `corpus_embeddings[j]` the document `corpus_ids[j]` (any order)."""
    if len(set(corpus_ids)) != len(corpus_ids):
        raise ValueError("corpus_ids must be unique: a ranking by id needs one document an id")
    order = sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)
    sorted_ids = [corpus_ids[j] for j in order]
    corpus = np.asarray(corpus_embeddings)[order]
    chunks = (corpus[s : s + chunk_size] for s in range(0, len(order), chunk_size))
    return _rank(query_embeddings, chunks, sorted_ids, relevant)


def _rank(
    query_embeddings: np.ndarray,
    chunks,
    sorted_ids: Sequence[str],
    relevant: Sequence[set[str]],
) -> dict[str, float]:
    _, index = running_top_k(query_embeddings, chunks, len(sorted_ids), MAX_K)
    rankings = [[sorted_ids[j] for j in row] for row in index.tolist()]
    return finite(retrieval_metrics(rankings, relevant), "retrieval")


class RetrievalEvaluator:
    """Queries against a corpus. `__call__(encoder)` -> `cosine_ndcg@10`, `cosine_mrr@10`,
    `cosine_map@100`, `cosine_accuracy@{1,3,5,10}`, `cosine_precision@{1,3,5,10}`,
    `cosine_recall@{1,3,5,10}`.

    Args:
      data: the queries (only those with a relevant document), corpus and relevance judgements.
      query_prompt, corpus_prompt: each side's prompt (text or a model's prompt name; None: the
        model's query / document prompt).
      batch_size: at most this many texts per encoder batch (None: the encoder's token budget).
      corpus_chunk_size: documents embedded and ranked at a time.
    """

    primary_metric = "cosine_ndcg@10"
    metric_names = METRIC_NAMES

    def __init__(
        self,
        data: RetrievalSet,
        *,
        query_prompt: str | None = None,
        corpus_prompt: str | None = None,
        batch_size: int | None = None,
        corpus_chunk_size: int = CORPUS_CHUNK_SIZE,
        name: str = "retrieval",
    ):
        if corpus_chunk_size < 1:
            raise ValueError(f"corpus_chunk_size must be at least 1, got {corpus_chunk_size}")
        self.data, self.name = data, name
        self.query_prompt, self.corpus_prompt = query_prompt, corpus_prompt
        self.batch_size, self.corpus_chunk_size = batch_size, corpus_chunk_size
        self.query_ids = list(data.queries)
        self.corpus_ids = sorted(data.corpus)

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        queries = embed(
            encoder,
            [self.data.queries[q] for q in self.query_ids],
            self.query_prompt,
            role="query",
            batch_size=self.batch_size,
        )
        relevant = [self.data.relevant[q] for q in self.query_ids]
        return _rank(queries, self._corpus_chunks(encoder), self.corpus_ids, relevant)

    def _corpus_chunks(self, encoder: Encoder) -> Iterator[np.ndarray]:
        for start in range(0, len(self.corpus_ids), self.corpus_chunk_size):
            ids = self.corpus_ids[start : start + self.corpus_chunk_size]
            yield embed(
                encoder,
                [self.data.corpus[c] for c in ids],
                self.corpus_prompt,
                role="document",
                batch_size=self.batch_size,
            )

    def counts(self) -> dict[str, int]:
        """What was evaluated: queries, documents, queries left out for want of a judgement."""
        return {
            "queries": len(self.query_ids),
            "corpus": len(self.corpus_ids),
            "queries_without_qrels": self.data.unjudged_queries,
        }
