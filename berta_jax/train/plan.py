"""Which rows make each batch: a pure function of the seed, the epoch and the data.

Every process computes the same plan, so a batch is the same global batch on every host and after
every resume: the data position of a run is its micro-step count. Batches never hold the same text
twice when the loss uses in-batch negatives (a duplicate would be a false negative:
sentence-transformers' `NoDuplicatesBatchSampler`), and the last incomplete batch of an epoch is
dropped (static shapes). Several datasets are sampled as sentence-transformers' multi-dataset
samplers do: each batch comes from one dataset; `proportional` uses every batch of every dataset in
a seeded order, `round_robin` takes one batch of each in turn until the smallest runs out.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Sequence

import numpy as np

from berta_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    dataset: int  # index into the run's datasets
    rows: np.ndarray  # [batch_size] row indices into that dataset


def dataset_batches(
    texts: Sequence[Sequence[str]],
    batch_size: int,
    rng: np.random.Generator | None,
    no_duplicates: bool,
) -> list[np.ndarray]:
    """One epoch of one dataset: row indices in batches of `batch_size` (the rest dropped)."""
    n = len(texts[0])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if not no_duplicates:
        return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    pending = collections.deque(int(i) for i in order)
    batches: list[np.ndarray] = []
    while len(pending) >= batch_size:
        seen: set[str] = set()
        picked: list[int] = []
        skipped: list[int] = []
        while pending and len(picked) < batch_size:
            row = pending.popleft()
            row_texts = {column[row] for column in texts}
            if row_texts & seen:
                skipped.append(row)
            else:
                picked.append(row)
                seen |= row_texts
        pending.extendleft(reversed(skipped))
        if len(picked) < batch_size:
            break  # what is left cannot fill a batch without a duplicate
        batches.append(np.asarray(picked, dtype=np.int64))
    return batches


def epoch_plan(
    datasets: Sequence[Sequence[Sequence[str]]],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool,
    no_duplicates: bool,
    sampler: str,
) -> list[PlannedBatch]:
    """Every batch of epoch `epoch`, in order."""
    per_set = []
    for index, texts in enumerate(datasets):
        rng = np.random.default_rng([seed, epoch, index]) if shuffle else None
        per_set.append(dataset_batches(texts, batch_size, rng, no_duplicates))
    if sampler == "round_robin":
        rounds = min(len(b) for b in per_set)
        return [PlannedBatch(d, per_set[d][r]) for r in range(rounds) for d in range(len(per_set))]
    order = [(d, b) for d, batches in enumerate(per_set) for b in range(len(batches))]
    if shuffle and len(per_set) > 1:
        rng = np.random.default_rng([seed, epoch, len(per_set)])
        order = [order[i] for i in rng.permutation(len(order))]
    return [PlannedBatch(d, per_set[d][b]) for d, b in order]


class BatchPlan:
    """Micro-step k -> its batch, walking epochs as needed (each epoch planned once, on demand)."""

    def __init__(self, datasets, names: Sequence[str], batch_size: int, seed: int, **options):
        self.datasets, self.batch_size, self.seed, self.options = (
            datasets,
            batch_size,
            seed,
            options,
        )
        self._epochs: dict[int, list[PlannedBatch]] = {}
        self._starts = [0]  # micro-step at which each planned epoch starts
        self._lock = threading.Lock()  # the data pipeline's threads ask at once
        first = self._epoch(0)
        if not first:
            sizes = ", ".join(f"{n}: {len(t[0])} rows" for n, t in zip(names, datasets))
            raise ConfigError(
                f"data.batch_size={batch_size} leaves no full batch ({sizes}"
                f"{', texts repeat across rows' if options.get('no_duplicates') else ''}); "
                "lower data.batch_size or add rows"
            )

    def _epoch(self, epoch: int) -> list[PlannedBatch]:
        if epoch not in self._epochs:
            self._epochs[epoch] = epoch_plan(
                self.datasets, self.batch_size, self.seed, epoch, **self.options
            )
            for old in [e for e in self._epochs if e < epoch - 1]:
                del self._epochs[old]  # keep memory flat on long runs
        return self._epochs[epoch]

    def __getitem__(self, k: int) -> tuple[int, PlannedBatch]:
        """(epoch, batch) of micro-step `k`."""
        with self._lock:
            return self._find(k)

    def _find(self, k: int) -> tuple[int, PlannedBatch]:
        epoch = 0
        while True:
            if epoch + 1 >= len(self._starts):
                self._starts.append(self._starts[epoch] + len(self._epoch(epoch)))
            if k < self._starts[epoch + 1]:
                return epoch, self._epoch(epoch)[k - self._starts[epoch]]
            epoch += 1
