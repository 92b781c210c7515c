"""A planned batch -> the padded arrays one training step takes, on the host.

Every text column of a batch is padded to one length from a short ladder of buckets (32, 64, ...,
the context), so a run compiles at most one step program per bucket (and per column count); the
length is taken over the whole global batch, so every process pads alike. The prompt of a column
is prepended as sentence-transformers' `prompts` training argument does; with the pooling's
`include_prompt: false` the prompt's tokens are left out of the pooled positions.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from berta_jax.errors import ConfigError
from berta_jax.text.tokenize import TextTokenizer

LADDER = (32, 64, 128, 256, 512)


def bucket_ladder(max_seq_length: int, given: Sequence[int] | None = None) -> tuple[int, ...]:
    """The padded lengths a run uses: `given` or the default ladder, capped at the context."""
    if given:
        too_long = [b for b in given if b > max_seq_length]
        if too_long:
            raise ConfigError(
                f"data.buckets {list(given)}: {too_long[0]} is above the context "
                f"({max_seq_length} tokens)"
            )
        ladder = sorted(set(given))
    else:
        ladder = [b for b in LADDER if b < max_seq_length]
    if not ladder or ladder[-1] < max_seq_length:
        ladder.append(max_seq_length)
    return tuple(ladder)


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """One global batch's arrays; C text columns of B rows padded to L tokens."""

    input_ids: np.ndarray  # [C, B, L] int32
    token_type_ids: np.ndarray  # [C, B, L] int32
    attention_mask: np.ndarray  # [C, B, L] int32
    pool_mask: np.ndarray  # [C, B, L] bool
    labels: np.ndarray  # [B] or [B, D] float32; [B] zeros when the loss takes none
    real_tokens: int  # tokens that are not padding, over the batch

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids,
            "token_type_ids": self.token_type_ids,
            "attention_mask": self.attention_mask,
            "pool_mask": self.pool_mask,
            "labels": self.labels,
        }


class Batcher:
    """Tokenizes a batch's rows, column by column, with each column's prompt."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        ladder: Sequence[int],
        pad_token_id: int,
        exclude_prompt: bool,
    ):
        self.tokenizer, self.ladder = tokenizer, tuple(ladder)
        self.pad_token_id, self.exclude_prompt = pad_token_id, exclude_prompt

    def __call__(
        self, texts: Sequence[Sequence[str]], prompts: Sequence[str], labels: np.ndarray | None
    ) -> HostBatch:
        """`texts[c][b]`: column c of row b; `prompts[c]`: column c's prompt ("" for none)."""
        tokens = [self.tokenizer(list(column), prompt=p) for column, p in zip(texts, prompts)]
        longest = max(int(t.lengths.max()) for t in tokens)
        length = next(b for b in self.ladder if b >= longest)
        shape = (len(texts), len(texts[0]), length)
        ids = np.full(shape, self.pad_token_id, np.int32)
        types, mask = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        pool = np.zeros(shape, bool)
        for c, column in enumerate(tokens):
            skip = column.prompt_length if self.exclude_prompt else 0
            for b, (row, row_types) in enumerate(zip(column.input_ids, column.token_type_ids)):
                n = len(row)
                ids[c, b, :n], types[c, b, :n], mask[c, b, :n] = row, row_types, 1
                pool[c, b, skip:n] = True
        if labels is None:
            labels = np.zeros(shape[1], np.float32)
        return HostBatch(ids, types, mask, pool, labels.astype(np.float32), int(mask.sum()))
