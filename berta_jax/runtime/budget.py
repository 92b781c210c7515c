"""How many padded tokens a batch holds by default: what fits a CPU's caches, or a share of an
accelerator's memory at the model's activation size per token.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from berta_jax.models.bert.config import BertConfig


def default_batch_tokens(
    devices: Sequence[jax.Device], max_seq_length: int, cfg: BertConfig | None = None
) -> int:
    """Padded tokens per batch: 2048 per CPU device (cache-sized batches run fastest there); on
    accelerators, what an eighth of the device's memory holds of one layer's activations at the
    longest rows (see `activation_bytes_per_token`), as a power of two from 8192 to 262144 per
    device (16384 when the device does not report its memory)."""
    per_device = 2048
    if devices[0].platform != "cpu":
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
        if not limit or cfg is None:
            per_device = 16384
        else:
            fits = limit / 8 / activation_bytes_per_token(cfg, max_seq_length)
            per_device = int(min(max(2 ** int(np.log2(max(fits, 1))), 8192), 262144))
    return max(per_device * len(devices), max_seq_length)


def activation_bytes_per_token(cfg: BertConfig, length: int) -> int:
    """Bytes one token of a `length`-token row keeps live in a layer's forward: float32 attention
    logits and probabilities over the row (2 x heads x length), the hidden-size tensors (about 8 of
    them) and the two feed-forward intermediates."""
    return 4 * (
        2 * cfg.num_attention_heads * length + 8 * cfg.hidden_size + 2 * cfg.intermediate_size
    )
