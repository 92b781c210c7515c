"""What an `Encoder` is made of, wired together, and the three steps of one encode call.

The parts: the Flax model, the tokenizer step, the sentence config (pooling, normalisation,
context, prompts, output dimension), the batch budget and the one compiled `Runtime` every public
call runs through. The steps, which the batch job also runs one by one: `prepare` (tokenize and
plan the batches), `run_batches` (the device) and `finish` (sentence-transformers' truncation).
`encoder.Encoder` adds the constructors and the calls users make.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from berta_jax.loading.sentence_config import SentenceConfig
from berta_jax.models.attention import select_kernel
from berta_jax.models.bert.config import BertConfig
from berta_jax.models.bert.model import BertModel
from berta_jax.models.vectors import check_truncate_dim, embedding_dim, truncate
from berta_jax.runtime.batching import Batch, BatchPlanner, make_batches
from berta_jax.runtime.budget import default_batch_tokens
from berta_jax.runtime.compiled import CompileStats, Runtime, RunStats
from berta_jax.runtime.packing import PackingPlanner, unpack_batch
from berta_jax.text.tokenize import TextTokenizer, TokenizedTexts


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Texts tokenized and planned into batches: the deterministic work list of one call."""

    tokens: TokenizedTexts
    batches: list[Batch]


class EncoderBase:
    """An encoder's parts and the steps of one encode call; `Encoder` documents the attributes."""

    def __init__(
        self,
        model: BertModel,
        tokenizer: TextTokenizer,
        sentence: SentenceConfig,
        *,
        name: str = "",
        folder: Path | None = None,
        devices: Sequence[jax.Device] | None = None,
        max_batch_tokens: int | None = None,
        packing: bool = True,
        attention: str = "auto",
    ):
        self.model = model
        self.config: BertConfig = model.cfg
        self.tokenizer = tokenizer
        self.sentence = sentence
        self.name = name
        self.folder = folder  # the model folder it was loaded from (a hub snapshot for hub ids)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        if max_batch_tokens is None:
            max_batch_tokens = default_batch_tokens(
                self.devices, sentence.max_seq_length, self.config
            )
        # validates now
        BatchPlanner(sentence.max_seq_length, max_batch_tokens, num_devices=len(self.devices))
        self.max_batch_tokens = max_batch_tokens
        # several texts per row (see packing.py); False: one text per padded row
        self.packing = packing
        # what the model computes in; `from_folder` adds what chose it
        self.compile_stats = CompileStats(dtype=np.dtype(model.layers.attention.dtype).name)
        kernel = select_kernel(attention, self.devices[0].platform, model.layers.attention.dtype)
        self.runtime = Runtime(
            model,
            devices=self.devices,
            chunk_tokens=max_batch_tokens,
            stats=self.compile_stats,
            attention=kernel,
            fallback=attention == "auto",
            compute_dtype=model.layers.attention.dtype,
        )

    @property
    def graphdef(self) -> nnx.GraphDef:
        return nnx.graphdef(self.model)

    @property
    def params(self) -> nnx.State:
        return nnx.state(self.model)

    @property
    def run_stats(self) -> RunStats:
        return self.runtime.run_stats

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def embedding_dim(self) -> int:
        """Dimensions of `encode`'s vectors (the folder's truncate_dim, else the hidden size)."""
        return embedding_dim(self.hidden_size, self.sentence.truncate_dim)

    def prepare(
        self,
        texts: Sequence[str],
        *,
        prompt: str = "",
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> Prepared:
        """Tokenize `texts` (with `prompt` prepended) and plan their batches."""
        tokens = self.tokenizer(texts, prompt=prompt)
        planner = (PackingPlanner if self.packing else BatchPlanner)(
            max_seq_length=self.sentence.max_seq_length,
            max_batch_tokens=self.max_batch_tokens
            if max_batch_tokens is None
            else max_batch_tokens,
            batch_size=batch_size,
            num_devices=self.runtime.num_devices,
        )
        batches = make_batches(
            tokens,
            planner,
            pad_token_id=self.config.pad_token_id,
            exclude_prompt=not self.sentence.include_prompt,
        )
        return Prepared(tokens, list(batches))

    def run_batches(
        self, batches: Sequence[Batch], *, normalize: bool | None = None
    ) -> Iterator[tuple[Batch, np.ndarray]]:
        """(batch, raw sentence vectors of its texts), in order; see `finish` for truncation."""
        normalize = bool(self.sentence.normalize if normalize is None else normalize)
        pooling = self.sentence.pooling
        for batch, vectors in self.runtime.run(batches, pooling=pooling, normalize=normalize):
            if batch.num_segments > 1 and not np.isfinite(vectors).all():
                # a packed row with a non-finite text: run its texts alone, to name only those
                unpacked = [unpack_batch(batch)]
                _, vectors = next(self.runtime.run(unpacked, pooling=pooling, normalize=normalize))
            yield batch, vectors

    def finish(
        self, vectors: np.ndarray, *, normalize: bool | None = None, truncate_dim: int | None = None
    ) -> np.ndarray:
        """sentence-transformers' last steps: keep the first `truncate_dim` dimensions (default: the
        folder's), then L2-normalise again when `normalize=True` was asked for explicitly."""
        dim = (
            self.sentence.truncate_dim
            if truncate_dim is None
            else check_truncate_dim(truncate_dim, self.hidden_size)
        )
        return truncate(vectors, dim, renormalize=normalize is True)
