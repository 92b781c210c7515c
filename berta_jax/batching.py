"""Group tokenized texts into padded batches by a token budget, over a small fixed set of shapes.

Texts are sorted by length (longest first) and taken greedily: a batch is
padded to the length bucket of its longest text and holds
`max_batch_tokens // bucket` rows (rounded down to a multiple of the device
count), filled with the next texts in order, so every batch but the last of a
bucket is full and padding stays small. A batch shape is compiled once per
bucket; the only other shape is a short final batch whose bucket never had a
full batch, padded to a power of two rows. So a run compiles at most one shape
per length bucket (8 for a 512-token context), however many texts it has.
Each batch remembers which input rows it holds, so outputs go back in input order.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from berta_jax.tokenize import TokenizedTexts

LENGTH_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512)


def length_buckets(max_seq_length: int) -> tuple[int, ...]:
    """The padded lengths used for a context of `max_seq_length` (the context itself is always one)."""
    return tuple(b for b in LENGTH_BUCKETS if b < max_seq_length) + (max_seq_length,)


def bucket(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= value."""
    for b in buckets:
        if b >= value:
            return b
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class BatchPlanner:
    """Decides batch shapes: a token budget per batch, a row cap, and a device count rows must divide by.

    Args:
      max_seq_length: the context; the largest length bucket.
      max_batch_tokens: padded tokens per batch (rows x length); at least max_seq_length.
      batch_size: optional cap on rows per batch.
      num_devices: rows are a multiple of this, so a batch splits evenly over the devices.
    """

    max_seq_length: int
    max_batch_tokens: int
    batch_size: int | None = None
    num_devices: int = 1

    def __post_init__(self) -> None:
        _positive_int("max_seq_length", self.max_seq_length)
        _positive_int("max_batch_tokens", self.max_batch_tokens)
        _positive_int("num_devices", self.num_devices)
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size)
        if self.max_batch_tokens < self.max_seq_length:
            raise ValueError(
                f"max_batch_tokens={self.max_batch_tokens} is smaller than max_seq_length={self.max_seq_length}: "
                f"a full-length text would not fit in a batch; use at least {self.max_seq_length}"
            )

    @property
    def buckets(self) -> tuple[int, ...]:
        return length_buckets(self.max_seq_length)

    def full_rows(self, length: int) -> int:
        """Rows of a full batch padded to `length`."""
        rows = self.max_batch_tokens // length
        if self.batch_size is not None:
            rows = min(rows, self.batch_size)
        return max(self.num_devices, rows - rows % self.num_devices)

    def tail_rows(self, n: int) -> int:
        """Rows for a short batch of n texts: a power of two, a multiple of the device count."""
        rows = 1 << max(0, (n - 1).bit_length())
        return -(-rows // self.num_devices) * self.num_devices

    def plan(self, lengths: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """[(input indices, rows, padded length)] covering every text once, longest texts first."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        plan, full_shapes, start = [], set(), 0
        while start < len(order):
            length = bucket(int(lengths[order[start]]), self.buckets)
            rows = self.full_rows(length)
            take = order[start : start + rows]
            if len(take) < rows and (rows, length) not in full_shapes:
                rows = min(rows, self.tail_rows(len(take)))
            full_shapes.add((rows, length))
            plan.append((take, rows, length))
            start += len(take)
        return plan


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch; `rows[i]` is the input index of row i (padding rows come after `len(rows)`)."""

    rows: np.ndarray  # [n_real] int64
    input_ids: np.ndarray  # [B, L] int32
    token_type_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32
    pool_mask: np.ndarray  # [B, L] bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.input_ids.shape


def make_batches(
    tokens: TokenizedTexts, planner: BatchPlanner, *, pad_token_id: int, exclude_prompt: bool = False
) -> Iterator[Batch]:
    """Padded batches in the planner's order; `exclude_prompt` drops [CLS] + prompt tokens from pooling."""
    lengths = tokens.lengths
    for take, n_rows, seq in planner.plan(lengths):
        ids = np.full((n_rows, seq), pad_token_id, dtype=np.int32)
        types = np.zeros((n_rows, seq), dtype=np.int32)
        mask = np.zeros((n_rows, seq), dtype=np.int32)
        for r, i in enumerate(take):
            n = lengths[i]
            ids[r, :n] = tokens.input_ids[i]
            types[r, :n] = tokens.token_type_ids[i]
            mask[r, :n] = 1
        pool_mask = mask.astype(bool)
        if exclude_prompt and tokens.prompt_length:
            pool_mask[:, : tokens.prompt_length] = False
        yield Batch(take, ids, types, mask, pool_mask)
