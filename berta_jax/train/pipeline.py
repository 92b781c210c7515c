"""The host side of training: datasets, prompts and labels -> one step's arrays, prepared ahead.

Element k of the pipeline is optimizer step k's `accumulate` micro-batches, tokenized and padded
(`batches.Batcher`), this process's rows only. grain runs it: its threads prepare the next steps
while the devices compute, and its iterator state (the next step) is saved with each checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from berta_jax.train.batches import Batcher, HostBatch
from berta_jax.train.data import TrainSet
from berta_jax.train.plan import BatchPlan


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's slice of each global batch."""

    index: int
    count: int

    def rows(self, batch: int) -> slice:
        size = batch // self.count
        return slice(self.index * size, (self.index + 1) * size)


class StepSource:
    """grain's random-access source: step k -> its stacked micro-batches (a dict of arrays)."""

    def __init__(
        self,
        datasets: Sequence[TrainSet],
        prompts: Sequence[Sequence[str]],
        plan: BatchPlan,
        batcher: Batcher,
        accumulate: int,
        steps: int,
        shard: Shard,
    ):
        self.datasets, self.prompts, self.plan, self.batcher = datasets, prompts, plan, batcher
        self.accumulate, self.steps, self.shard = accumulate, steps, shard

    def __len__(self) -> int:
        return self.steps

    def micro_batch(self, k: int) -> HostBatch:
        """Micro-step k's whole global batch (every process pads to the same length)."""
        _, planned = self.plan[k]
        data = self.datasets[planned.dataset]
        texts = [[column[i] for i in planned.rows] for column in data.texts]
        labels = None if data.labels is None else data.labels[planned.rows]
        return self.batcher(texts, self.prompts[planned.dataset], labels)

    def __getitem__(self, step: int) -> dict:
        parts = [self.micro_batch(step * self.accumulate + a) for a in range(self.accumulate)]
        length = max(p.input_ids.shape[-1] for p in parts)
        rows = self.shard.rows(parts[0].input_ids.shape[1])
        arrays = {name: [] for name in parts[0].arrays()}
        for part in parts:
            for name, value in part.arrays().items():
                if name != "labels":  # pad every micro-batch of the step to one length
                    pad = [(0, 0)] * (value.ndim - 1) + [(0, length - value.shape[-1])]
                    value = np.pad(
                        value,
                        pad,
                        constant_values=self.batcher.pad_token_id if name == "input_ids" else 0,
                    )
                    value = value[:, rows]
                else:
                    value = value[rows]
                arrays[name].append(value)
        out = {name: np.stack(values) for name, values in arrays.items()}
        out["real_tokens"] = np.int64(sum(p.real_tokens for p in parts))
        return out


def step_iterator(source: StepSource, start: int, threads: int = 2):
    """grain's iterator over steps `start`..: `threads` threads prepare the next steps ahead."""
    dataset = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
    )
    iterator = iter(dataset)
    iterator.set_state({"next_index": start})
    return iterator
