"""Group tokenized texts into padded batches of a few fixed shapes.

Texts are sorted by length (longest first), cut into batches of at most
`batch_size` rows, and each batch is padded to a bucketed (rows, length) shape,
so a whole run compiles only a handful of programs. Each batch remembers which
input rows it holds, so outputs go back in input order.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from berta_jax.tokenize import TokenizedTexts

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 384, 512)


def length_buckets(max_seq_length: int) -> tuple[int, ...]:
    """The padded lengths used for a context of `max_seq_length` (the context itself is always one)."""
    return tuple(b for b in LENGTH_BUCKETS if b < max_seq_length) + (max_seq_length,)


def bucket(value: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= value."""
    for b in buckets:
        if b >= value:
            return b
    raise ValueError(f"{value} exceeds the largest bucket {buckets[-1]}")


def row_buckets(batch_size: int) -> tuple[int, ...]:
    """Powers of two below batch_size, then batch_size: a short tail batch is not padded to full size."""
    sizes, n = [], 1
    while n < batch_size:
        sizes.append(n)
        n *= 2
    return (*sizes, batch_size)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One padded batch; `rows[i]` is the input index of row i (padding rows come after `len(rows)`)."""

    rows: np.ndarray  # [n_real] int64
    input_ids: np.ndarray  # [B, L] int32
    token_type_ids: np.ndarray  # [B, L] int32
    attention_mask: np.ndarray  # [B, L] int32
    pool_mask: np.ndarray  # [B, L] bool


def make_batches(
    tokens: TokenizedTexts,
    *,
    batch_size: int,
    max_seq_length: int,
    pad_token_id: int,
    exclude_prompt: bool = False,
) -> Iterator[Batch]:
    """Padded batches covering every text once, longest texts first."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = tokens.lengths
    order = np.argsort(-lengths, kind="stable")
    lengths_buckets, rows_buckets = length_buckets(max_seq_length), row_buckets(batch_size)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        n_rows = bucket(len(rows), rows_buckets)
        seq = bucket(int(lengths[rows].max()), lengths_buckets)
        ids = np.full((n_rows, seq), pad_token_id, dtype=np.int32)
        types = np.zeros((n_rows, seq), dtype=np.int32)
        mask = np.zeros((n_rows, seq), dtype=np.int32)
        for r, i in enumerate(rows):
            n = lengths[i]
            ids[r, :n] = tokens.input_ids[i]
            types[r, :n] = tokens.token_type_ids[i]
            mask[r, :n] = 1
        pool_mask = mask.astype(bool)
        if exclude_prompt and tokens.prompt_length:
            pool_mask[:, : tokens.prompt_length] = False
        yield Batch(rows, ids, types, mask, pool_mask)
