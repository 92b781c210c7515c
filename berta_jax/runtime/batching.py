"""Group tokenized texts into padded batches by a token budget, over a small fixed set of shapes.

Texts are sorted by length (longest first) and grouped by length bucket; a
batch of bucket L is padded to L tokens and holds `max_batch_tokens // L` rows
(rounded down to a multiple of the device count). Every batch of a bucket has
that one shape (a bucket too small to fill one batch gets a power-of-two row
count instead), so a run compiles exactly one program per length bucket its
texts reach: at most 8 for a 512-token context, and never more for 10,000
texts than for 100 of the same length range.
Each batch remembers which input rows it holds, so outputs go back in input order.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from berta_jax.text.tokenize import TokenizedTexts

LENGTH_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512)


def length_buckets(max_seq_length: int) -> tuple[int, ...]:
    """The padded lengths for a context of `max_seq_length` (the context itself is always one)."""
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
class BatchPlan:
    """One batch of a plan: which texts go in which row, and the batch's shape. Both planners make
    these."""

    rows: list[list[int]]  # input indices of the texts in each real row, in segment order
    n_rows: int  # rows of the batch shape (real rows, then empty ones)
    length: int
    segments: int = 1  # segments (texts) per row of the batch shape

    @property
    def texts(self) -> list[int]:
        """Input indices in slot order."""
        return [i for row in self.rows for i in row]


@dataclasses.dataclass(frozen=True)
class BatchPlanner:
    """Batch shapes: a token budget per batch, a row cap, and a device count rows must divide by.

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
                f"max_batch_tokens={self.max_batch_tokens} is smaller than "
                f"max_seq_length={self.max_seq_length}: a full-length text would not fit in a "
                f"batch; use at least {self.max_seq_length}"
            )

    @property
    def buckets(self) -> tuple[int, ...]:
        return length_buckets(self.max_seq_length)

    def full_rows(self, length: int) -> int:
        """Rows of a full batch padded to `length`."""
        rows = self.max_batch_tokens // length
        if self.batch_size is not None:
            rows = min(rows, self.batch_size)
        return self.device_rows(rows)

    def device_rows(self, rows: int) -> int:
        """`rows` rounded down to a multiple of the device count (at least one row per device)."""
        return max(self.num_devices, rows - rows % self.num_devices)

    def tail_rows(self, n: int) -> int:
        """Rows for a short batch of n texts: a power of two, a multiple of the device count."""
        rows = 1 << max(0, (n - 1).bit_length())
        return -(-rows // self.num_devices) * self.num_devices

    def plan(self, lengths: np.ndarray) -> list[BatchPlan]:
        """Batches of one text per row covering every text once, longest texts first.

        Texts are grouped by length bucket; each bucket is cut into full batches
        of `full_rows` rows. Its last, short batch keeps the full shape when the
        bucket had a full batch (no new program), else is padded to a power of
        two rows. So exactly one shape is compiled per bucket present.
        """
        lengths = np.asarray(lengths)
        order = np.argsort(-lengths, kind="stable")
        buckets = np.array([bucket(int(n), self.buckets) for n in lengths[order]], dtype=np.int64)
        plan = []
        for length in sorted(set(buckets.tolist()), reverse=True):
            members = order[buckets == length]
            rows = self.full_rows(length)
            for start in range(0, len(members), rows):
                take = members[start : start + rows]
                # the bucket never fills a batch: a small shape of its own
                short = len(members) < rows
                n_rows = min(rows, self.tail_rows(len(take))) if short else rows
                plan.append(BatchPlan([[int(i)] for i in take], n_rows, length))
        return plan


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of token rows and where each of its texts' vectors comes out.

    A row holds one text, or several packed texts (`segment_ids` 1, 2, ... per text, 0 for padding,
    positions restarting at 0 for each). The forward gives one vector per (row, segment) slot,
    `[rows * segments, D]`; `texts[j]` (an input index) is read from slot `slots[j]`.
    """

    texts: np.ndarray  # [n] int64 input indices
    slots: np.ndarray  # [n] int64 flat slot (row * num_segments + segment - 1) of each text
    input_ids: np.ndarray  # [R, L] int32
    token_type_ids: np.ndarray  # [R, L] int32
    segment_ids: np.ndarray  # [R, L] int32
    positions: np.ndarray  # [R, L] int32
    pool_mask: np.ndarray  # [R, L] bool
    num_segments: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, length, segments per row): what a compiled program is specialised to."""
        return (*self.input_ids.shape, self.num_segments)


def make_batches(
    tokens: TokenizedTexts,
    planner: BatchPlanner,
    *,
    pad_token_id: int,
    exclude_prompt: bool = False,
) -> Iterator[Batch]:
    """The planner's batches laid out, in its order: each row's texts side by side
    (segment ids 1, 2, ..., positions restarting at 0 for each); `exclude_prompt` drops each text's
    [CLS] + prompt from pooling (sentence-transformers' include_prompt=false)."""
    skip = tokens.prompt_length if exclude_prompt else 0
    for step in planner.plan(tokens.lengths):
        shape = (step.n_rows, step.length)
        ids, types = np.full(shape, pad_token_id, np.int32), np.zeros(shape, np.int32)
        segments, positions, pool = (
            np.zeros(shape, np.int32),
            np.zeros(shape, np.int32),
            np.zeros(shape, bool),
        )
        slots = []
        for r, row in enumerate(step.rows):
            start = 0
            for s, i in enumerate(row):
                n = len(tokens.input_ids[i])
                span = slice(start, start + n)
                ids[r, span], types[r, span] = tokens.input_ids[i], tokens.token_type_ids[i]
                segments[r, span], positions[r, span] = s + 1, np.arange(n)
                pool[r, start + skip : start + n] = True
                slots.append(r * step.segments + s)
                start += n
        yield Batch(
            np.asarray(step.texts, np.int64),
            np.asarray(slots, np.int64),
            ids,
            types,
            segments,
            positions,
            pool,
            num_segments=step.segments,
        )
