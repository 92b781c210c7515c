"""What the data engines' adapters (Beam, Ray) share: how a worker builds its `Encoder` and embeds
one batch.

An engine pickles the adapter on the machine that builds the pipeline and unpickles it on workers,
so `EncoderSpec` is plain data, checked where it is made, and imports JAX only in `load` (on the
worker): the launcher or driver never initialises JAX, never touches an accelerator, never compiles.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from berta_jax.runtime.dtypes import NAMES
from berta_jax.errors import InputError
from berta_jax.models.vectors import embedding_dim
from berta_jax.text.texts import text_problem

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

DTYPES = (*NAMES, "auto")
ON_ERROR = ("raise", "skip")
_log = logging.getLogger("berta_jax")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """An `Encoder` to load on a worker, and the `Encoder.encode` arguments of every batch.

    `model` is a local folder, a storage URL or a hub id as `Encoder.from_pretrained` takes it;
    `dtype` a name (float32 is the PyTorch-parity mode); `compilation_cache` JAX's persistent cache
    on the worker's local disk (True: `$BERTA_JAX_CACHE_DIR` or ~/.cache/berta_jax/xla);
    `on_error="skip"` embeds a bad element as a zero vector and gives its reason instead of failing
    the batch.
    """

    model: str
    prompt_name: str | None = None
    prompt: str | None = None
    dtype: str = "float32"
    truncate_dim: int | None = None
    normalize: bool | None = None
    max_batch_tokens: int | None = None
    pooling: str | None = None
    max_seq_length: int | None = None
    attention: str = "auto"
    compilation_cache: str | bool | None = True
    on_error: str = "raise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", os.fspath(self.model))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r}: choose one of {', '.join(ON_ERROR)}")
        if self.prompt_name is not None and self.prompt is not None:
            raise ValueError("give prompt_name or prompt, not both")
        for name in ("truncate_dim", "max_batch_tokens", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}={value!r} must be a positive integer or None")

    def load(self) -> Encoder:
        """The Encoder, with JAX imported here: call it on the worker, once per process."""
        from berta_jax.runtime.encoder import Encoder

        return Encoder.from_pretrained(
            self.model,
            dtype=self.dtype,
            pooling=self.pooling,
            max_seq_length=self.max_seq_length,
            max_batch_tokens=self.max_batch_tokens,
            attention=self.attention,
            compilation_cache=self.compilation_cache,
        )

    def dim(self, encoder: Encoder) -> int:
        return embedding_dim(encoder.hidden_size, encoder.sentence.truncate_dim, self.truncate_dim)

    def embed(self, encoder: Encoder, values: Sequence) -> tuple[np.ndarray, list[str | None]]:
        """float32 `[n, dim]` for a whole batch in one `Encoder.encode` call, and each element's
        problem.

        A bad element (not a string, a lone surrogate) raises an InputError naming its place and
        value, or with `on_error="skip"` gets a zero vector and its reason (every other vector is
        what it would be without it: the batch is packed from the good texts only).
        """
        problems = [text_problem(value) for value in values]
        bad = [i for i, problem in enumerate(problems) if problem]
        if bad and self.on_error == "raise":
            i = bad[0]
            raise InputError(
                f"element {i} of this batch ({_shown(values[i])}) {problems[i]}; pass "
                "on_error='skip' to embed bad elements as zero vectors"
            )
        good = [i for i, problem in enumerate(problems) if problem is None]
        out = np.zeros((len(values), self.dim(encoder)), np.float32)
        if good:
            out[good] = encoder.encode(
                [values[i] for i in good],
                prompt_name=self.prompt_name,
                prompt=self.prompt,
                normalize=self.normalize,
                truncate_dim=self.truncate_dim,
            )
        for i in bad:
            _log.warning(
                "skipped element %d of a batch (%s): %s", i, _shown(values[i]), problems[i]
            )
        return out, [f"element {problem}" if problem else None for problem in problems]


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
