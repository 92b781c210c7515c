"""sentence-transformers' retrieval metrics (`InformationRetrievalEvaluator.compute_metrics`) on
ranked hit lists, under its names: `cosine_accuracy@k`, `cosine_precision@k`, `cosine_recall@k`,
`cosine_ndcg@k`, `cosine_mrr@k`, `cosine_map@k`, for its default k lists.

Relevance is binary (a document is relevant or not), nDCG's ideal ranking puts every relevant
document first, and MAP@k divides by min(k, relevant documents): all as sentence-transformers
computes them. With a corpus smaller than k the hit lists are shorter and precision@k still
divides by k, as there.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ACCURACY_AT_K = (1, 3, 5, 10)
PRECISION_RECALL_AT_K = (1, 3, 5, 10)
MRR_AT_K = (10,)
NDCG_AT_K = (10,)
MAP_AT_K = (100,)
MAX_K = max(ACCURACY_AT_K + PRECISION_RECALL_AT_K + MRR_AT_K + NDCG_AT_K + MAP_AT_K)
# every name `retrieval_metrics` returns, in its order (sentence-transformers')
METRIC_NAMES = tuple(
    f"cosine_{name}@{k}"
    for name, ks in (
        ("accuracy", ACCURACY_AT_K),
        ("precision", PRECISION_RECALL_AT_K),
        ("recall", PRECISION_RECALL_AT_K),
        ("ndcg", NDCG_AT_K),
        ("mrr", MRR_AT_K),
        ("map", MAP_AT_K),
    )
    for k in ks
)


def _dcg(relevances: Sequence[int], k: int) -> float:
    return sum(relevances[i] / np.log2(i + 2) for i in range(min(len(relevances), k)))


def _per_query(ranked: Sequence[str], relevant: set[str]) -> dict[str, dict[int, float]]:
    """One query's figures: ranked ids, best first (at most MAX_K)."""
    hit = [cid in relevant for cid in ranked]
    out: dict[str, dict[int, float]] = {
        "accuracy@k": {k: float(any(hit[:k])) for k in ACCURACY_AT_K},
        "precision@k": {k: sum(hit[:k]) / k for k in PRECISION_RECALL_AT_K},
        "recall@k": {k: sum(hit[:k]) / len(relevant) for k in PRECISION_RECALL_AT_K},
        "ndcg@k": {},
        "mrr@k": {k: next((1.0 / (r + 1) for r, h in enumerate(hit[:k]) if h), 0.0)
                  for k in MRR_AT_K},
        "map@k": {},
    }
    for k in NDCG_AT_K:
        out["ndcg@k"][k] = _dcg([int(h) for h in hit[:k]], k) / _dcg([1] * len(relevant), k)
    for k in MAP_AT_K:
        correct, total = 0, 0.0
        for rank, h in enumerate(hit[:k]):
            if h:
                correct += 1
                total += correct / (rank + 1)
        out["map@k"][k] = total / min(k, len(relevant))
    return out


def retrieval_metrics(
    rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]]
) -> dict[str, float]:
    """The metrics averaged over queries: `rankings[i]` the ids query i retrieved, best first,
    `relevant[i]` its relevant ids (at least one). Names as sentence-transformers' with the
    cosine score function, in its order."""
    if not rankings or len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    each = [_per_query(r, rel) for r, rel in zip(rankings, relevant)]
    metrics: dict[str, float] = {}
    for name in ("accuracy@k", "precision@k", "recall@k", "ndcg@k", "mrr@k", "map@k"):
        for k in each[0][name]:
            values = [q[name][k] for q in each]
            # accuracy and MRR are sums over the count there, the others np.mean
            value = (
                math.fsum(values) / len(values)
                if name in ("accuracy@k", "mrr@k")
                else float(np.mean(values))
            )
            metrics[f"cosine_{name.replace('@k', f'@{k}')}"] = value
    return metrics
