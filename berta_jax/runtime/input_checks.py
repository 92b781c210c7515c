"""The checks of what a caller hands the encoder, before anything reaches the device: texts that
are lists of valid strings, and token ids that are integers inside the model's tables (JAX would
silently read a wrong row for an id out of range).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from berta_jax.models.bert.config import BertConfig
from berta_jax.text.texts import surrogate_problem


def check_texts(texts: Sequence[str] | np.ndarray) -> list[str]:
    """`texts` (a sequence, or a 1-D numpy array of str as sentence-transformers accepts) as a list
    of str, or a TypeError or ValueError naming the first element that is no text."""
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise TypeError(f"texts must be a 1-D array of strings, got shape {texts.shape}")
    elif isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        if problem := surrogate_problem(t):
            raise ValueError(f"texts[{i}] {problem}")
    return [str(t) for t in texts]  # numpy's str_ elements as plain str


def check_ids(name: str, ids: np.ndarray, limit: int) -> None:
    """A TypeError unless `ids` are integers; a ValueError naming the first outside [0, limit)."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got {ids.dtype}")
    bad = np.argwhere((ids < 0) | (ids >= limit))
    if len(bad):
        b, t = bad[0]
        raise ValueError(
            f"{name}[{b}, {t}] = {ids[b, t]} is outside [0, {limit}); "
            "JAX would silently read a wrong row"
        )


def check_token_ids(
    cfg: BertConfig, input_ids, attention_mask, token_type_ids=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caller-made `[batch, seq]` token ids as numpy arrays (token types default to 0), or a
    TypeError / ValueError saying which array is wrong for the model `cfg` describes."""
    input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be the "
            "same [batch, seq]"
        )
    check_ids("input_ids", input_ids, cfg.vocab_size)
    if input_ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
            f"{cfg.max_position_embeddings}"
        )
    if token_type_ids is None:
        token_type_ids = np.zeros_like(input_ids)
    token_type_ids = np.asarray(token_type_ids)
    if token_type_ids.shape != input_ids.shape:
        raise ValueError(
            f"token_type_ids {token_type_ids.shape} must match input_ids {input_ids.shape}"
        )
    check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size)
    return input_ids, attention_mask, token_type_ids
