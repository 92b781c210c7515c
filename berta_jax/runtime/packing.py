"""Pack several texts into each row, so batches carry almost no padding, over a few fixed shapes.

Texts are packed best-fit-decreasing into rows of 128, 256 or 512 tokens (and the context itself),
at most `length // 4` texts per row: a text opens a row of the shortest length that holds it, and
shorter texts fill the space longer ones leave. Each text keeps its own segment id (attention stays
inside it), positions restarting at 0, and its own pooled vector. Rows are cut into batches of
`max_batch_tokens // length` rows; as with one text per row, each row length has one batch shape,
and the last batch of a row length takes half as many rows when it fits in them (a call too small to
fill one batch gets a power-of-two row count instead), so a run compiles at most two programs per
row length it reaches: at most 6 for a 512-token context.

Why these row lengths: attention over a packed row costs in proportion to the row's length for every
token in it. For BERT-base a token's attention is 2.8% of its layer's matmul work in a 128-token
row, 5.6% at 256 and 11% at 512; padding wastes the whole cost of a token. Short texts share short
rows, so packing removes the padding without paying long-row attention for them.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

from berta_jax.runtime.batching import BatchPlan, Batch, BatchPlanner

PACKED_ROW_LENGTHS = (128, 256, 512)
# A row of length L holds at most L // 4 texts: a bound on the pooled slots per row. At 8, 100,000
# texts of 1-3 words padded 1.24x (MiniLM) and empty texts 4x; at 4, 1.03x and 2x. A smaller bound
# would grow every batch's pooled output ([rows x L // bound, hidden]) for the few corpora of
# near-empty texts.
TOKENS_PER_SEGMENT = 4


@dataclasses.dataclass(frozen=True)
class PackingPlanner(BatchPlanner):
    """Like `BatchPlanner`, with several texts per row. `batch_size` caps the texts of a batch."""

    def row_lengths(self) -> tuple[int, ...]:
        return tuple(r for r in PACKED_ROW_LENGTHS if r < self.max_seq_length) + (
            self.max_seq_length,
        )

    def segments(self, length: int) -> int:
        return max(1, min(length // TOKENS_PER_SEGMENT, self.batch_size or length))

    def rows_per_batch(self, length: int) -> int:
        return self.device_rows(self.max_batch_tokens // length)

    def plan(self, lengths: np.ndarray) -> list[BatchPlan]:
        """Batches covering every text once, longest row lengths first."""
        rows = pack(np.asarray(lengths), self.row_lengths(), self.segments)
        plan: list[BatchPlan] = []
        for length in sorted({length for length, _ in rows}, reverse=True):
            plan += self._batches(
                [texts for row_length, texts in rows if row_length == length], length
            )
        return plan

    def _batches(self, rows: list[list[int]], length: int) -> list[BatchPlan]:
        per_batch, cap = self.rows_per_batch(length), self.batch_size or 1 << 62
        groups: list[list[list[int]]] = [[]]
        for row in rows:
            group = groups[-1]
            if group and (len(group) == per_batch or sum(map(len, group)) + len(row) > cap):
                groups.append(group := [])
            group.append(row)
        if len(groups) == 1:  # a small call: the smallest power-of-two shape that holds it
            return [
                BatchPlan(
                    groups[0],
                    min(per_batch, self.tail_rows(len(groups[0]))),
                    length,
                    self.segments(length),
                )
            ]
        half = self.half_rows(length)
        return [
            BatchPlan(
                g,
                half if g is groups[-1] and len(g) <= half else per_batch,
                length,
                self.segments(length),
            )
            for g in groups
        ]

    def half_rows(self, length: int) -> int:
        """Rows of a row length's one smaller shape: a longer run's last batch, when it fits."""
        return self.device_rows(self.rows_per_batch(length) // 2)


def pack(
    lengths: np.ndarray, row_lengths: tuple[int, ...], segments
) -> list[tuple[int, list[int]]]:
    """Best-fit decreasing over all texts: each text (longest first) goes to the open row, of any
    length, whose free space fits it most tightly; only when none fits does it open a row, of the
    shortest length that holds it. So short texts fill what long texts leave, and padding is what no
    text could fill. Returns (row length, input indices) per row."""
    rows: list[tuple[int, list[int]]] = []
    # (free tokens, row index) of rows that can take another text, sorted
    free: list[tuple[int, int]] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, r = free.pop(at)
        else:
            length = row_lengths[bisect.bisect_left(row_lengths, n)]
            space, r = length, len(rows)
            rows.append((length, []))
        rows[r][1].append(int(i))
        if space - n > 0 and len(rows[r][1]) < segments(rows[r][0]):
            bisect.insort(free, (space - n, r))
    return rows


def unpack_batch(batch: Batch) -> Batch:
    """The texts of a packed batch one per row (same row length): how a non-finite packed batch is
    re-run, since a text whose activations overflow would otherwise spread NaN to its row's other
    texts (0 x NaN is NaN)."""
    n_rows, length = len(batch.texts), batch.input_ids.shape[1]
    shape = (n_rows, length)
    ids, types = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    segments, pool = np.zeros(shape, np.int32), np.zeros(shape, bool)
    for j, slot in enumerate(batch.slots):
        row, segment = divmod(int(slot), batch.num_segments)
        where = batch.segment_ids[row] == segment + 1
        n = int(where.sum())
        ids[j, :n], types[j, :n] = batch.input_ids[row, where], batch.token_type_ids[row, where]
        segments[j, :n], pool[j, :n] = 1, batch.pool_mask[row, where]
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), shape)
    return Batch(
        batch.texts, np.arange(n_rows, dtype=np.int64), ids, types, segments, positions, pool
    )
