"""`Encoder`: a sentence-transformers-style embedder around the Flax BERT.

Loading (`ModelFolder`: folder or hub id -> config, sentence config; then tokenizer and weights), the
tokenizer step, batching and the compiled runtime are separate pieces; this class wires them together the
way a sentence-transformers user expects. Every public call runs through the one `Runtime`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from berta_jax.models.attention import select_kernel
from berta_jax.runtime.batching import Batch, BatchPlanner, make_batches
from berta_jax.runtime.compile_cache import enable_compilation_cache
from berta_jax.models.bert.config import BertConfig
from berta_jax.runtime.dtypes import choose_dtype
from berta_jax.errors import TruncationWarning
from berta_jax.loading.folder import ModelFolder
from berta_jax.models.bert.model import BertModel
from berta_jax.runtime.packing import PackingPlanner, unpack_batch
from berta_jax.runtime.compiled import CompileStats, Runtime, RunStats
from berta_jax.loading.sentence_config import RETRIEVAL_PROMPT_NAMES, SentenceConfig
from berta_jax.text.texts import surrogate_problem
from berta_jax.text.tokenize import TextTokenizer, TokenizedTexts
from berta_jax.models.vectors import check_finite, check_truncate_dim, embedding_dim, truncate
from berta_jax.loading.weights import load_model


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """Embeddings plus what happened to each text on the way."""

    embeddings: np.ndarray  # [n, dim] float32, input order
    truncated: np.ndarray  # [n] bool: cut to max_seq_length tokens
    num_tokens: np.ndarray  # [n] tokens fed to the model (prompt and special tokens included)
    padded_tokens: int  # rows x length summed over the batches run (real + padding)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Texts tokenized and planned into batches: the deterministic work list of one call."""

    tokens: TokenizedTexts
    batches: list[Batch]


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, or a TypeError / ValueError naming the first element that is not a text."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        if problem := surrogate_problem(t):
            raise ValueError(f"texts[{i}] {problem}")
    return list(texts)


class Encoder:
    """Embeds texts with a BERT sentence encoder (sergeyzh/BERTA first of all).

    Attributes:
      model: the Flax `BertModel`.
      config: its `BertConfig`.
      sentence: pooling, normalisation, context, prompts and output dimension (`SentenceConfig`).
      tokenizer: the tokenizer step (`TextTokenizer`).
      graphdef, params: `nnx.split(model)`, for the pure functions (read from `model` on each access).
      runtime: the compiled, sharded forwards (of `model`'s current weights: an edit to them is run); `compile_stats` says what was compiled, `run_stats` how busy the
        device was while batches ran.
    """

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
        BatchPlanner(
            sentence.max_seq_length, max_batch_tokens, num_devices=len(self.devices)
        )  # validates now
        self.max_batch_tokens = max_batch_tokens
        self.packing = (
            packing  # several texts per row (see packing.py); False: one text per padded row
        )
        self.compile_stats = CompileStats()
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

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        truncate_dim: int | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        max_batch_tokens: int | None = None,
        packing: bool = True,
        attention: str = "auto",
        compilation_cache: str | os.PathLike | bool | None = None,
    ) -> Encoder:
        """Load a model folder (HF / sentence-transformers layout, or converted), a storage URL or a hub id.

        Args:
          dtype: compute dtype: float32 (PyTorch parity, the default), bfloat16 (the fast mode on accelerators and
            on CPUs with AMX or AVX512-BF16), or "auto" (bfloat16 where the hardware multiplies it natively, else
            float32; `compile_stats.dtype` says what was chosen and why).
          param_dtype: storage dtype of the parameters.
          pooling: override the folder's pooling ("mean", "cls", ...), e.g. "cls" for FRIDA-style use.
          max_seq_length: override the folder's context length (at most max_position_embeddings).
          truncate_dim: keep the first N dimensions of every embedding (Matryoshka), as sentence-transformers.
          devices: devices to shard each batch over (default: every local device).
          max_batch_tokens: padded tokens per batch (default: 2048 per CPU device; on accelerators sized to the
            device's memory, see `default_batch_tokens`).
          packing: pack several texts into each row (almost no padding); False gives one text per padded row.
          attention: the attention kernel: "auto" (in bfloat16/float16, cuDNN's fused attention on NVIDIA GPUs and
            Pallas splash attention on TPUs; the explicit XLA form elsewhere and in float32;
            `compile_stats.attention` names the one used), "xla", "cudnn" or "splash".
          compilation_cache: a directory for JAX's persistent compilation cache, or True for the default one
            ($BERTA_JAX_CACHE_DIR or ~/.cache/berta_jax/xla). None leaves JAX's settings alone.
        """
        if compilation_cache is not None and compilation_cache is not False:
            enable_compilation_cache(None if compilation_cache is True else compilation_cache)
        folder = ModelFolder.open(
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            pooling=pooling,
            max_seq_length=max_seq_length,
            truncate_dim=truncate_dim,
        )
        return cls.from_folder(
            folder,
            dtype=dtype,
            param_dtype=param_dtype,
            devices=devices,
            max_batch_tokens=max_batch_tokens,
            packing=packing,
            attention=attention,
        )

    @classmethod
    def from_folder(
        cls,
        folder: ModelFolder,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        devices: Sequence[jax.Device] | None = None,
        max_batch_tokens: int | None = None,
        packing: bool = True,
        attention: str = "auto",
    ) -> Encoder:
        """Load the tokenizer and the weights of an opened `ModelFolder`."""
        sentence = folder.sentence
        tokenizer = TextTokenizer.from_files(
            folder.files, sentence.max_seq_length, folder.config.vocab_size, sentence.lowercase
        )
        platform = (devices[0] if devices else jax.local_devices()[0]).platform
        choice = choose_dtype(dtype if isinstance(dtype, str) else jnp.dtype(dtype).name, platform)
        model = load_model(
            folder.files, folder.config, dtype=jnp.dtype(choice.name), param_dtype=param_dtype
        )
        encoder = cls(
            model,
            tokenizer,
            sentence,
            name=folder.name,
            folder=folder.folder,
            devices=devices,
            max_batch_tokens=max_batch_tokens,
            packing=packing,
            attention=attention,
        )
        encoder.compile_stats.dtype = str(choice)
        return encoder

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
        """Dimensions of the vectors `encode` returns (the folder's truncate_dim, else the hidden size)."""
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
        for batch, vectors in self.runtime.run(
            batches, pooling=self.sentence.pooling, normalize=normalize
        ):
            if (
                batch.num_segments > 1 and not np.isfinite(vectors).all()
            ):  # name only the texts at fault
                _, vectors = next(
                    self.runtime.run(
                        [unpack_batch(batch)], pooling=self.sentence.pooling, normalize=normalize
                    )
                )
            yield batch, vectors

    def finish(
        self, vectors: np.ndarray, *, normalize: bool | None = None, truncate_dim: int | None = None
    ) -> np.ndarray:
        """sentence-transformers' last steps: keep the first `truncate_dim` dimensions (default: the folder's),
        then L2-normalise again when `normalize=True` was asked for explicitly."""
        dim = (
            self.sentence.truncate_dim
            if truncate_dim is None
            else check_truncate_dim(truncate_dim, self.hidden_size)
        )
        return truncate(vectors, dim, renormalize=normalize is True)

    def encode_detailed(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
    ) -> EncodeResult:
        """Like `encode`, plus per-text truncation flags and token counts."""
        texts = check_texts(texts)
        prepared = self.prepare(
            texts,
            prompt=self.sentence.resolve_prompt(prompt_name, prompt),
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        padded = 0
        for batch, vectors in self.run_batches(prepared.batches, normalize=normalize):
            out[batch.texts] = vectors
            padded += batch.input_ids.size
        check_finite(out, len(texts))
        tokens = prepared.tokens
        if n_cut := int(tokens.truncated.sum()):
            warnings.warn(
                f"{n_cut} of {len(texts)} texts were longer than max_seq_length={self.sentence.max_seq_length} "
                "tokens and were truncated; encode_detailed(...).truncated flags them",
                TruncationWarning,
                stacklevel=3,
            )
        out = self.finish(out, normalize=normalize, truncate_dim=truncate_dim)
        return EncodeResult(out, tokens.truncated, tokens.lengths, padded)

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
    ) -> np.ndarray:
        """Embed texts -> float32 `[n, dim]` in input order (`[dim]` for a single string).

        The model's default prompt applies unless `prompt_name` or `prompt` overrides it (`prompt=""` means no
        prompt). `normalize=None` follows the folder (L2-normalised when a Normalize module is configured);
        `truncate_dim` keeps the first dimensions, as sentence-transformers does (normalised again only with
        `normalize=True`). Batches hold up to `max_batch_tokens` padded tokens (default: the encoder's), and
        at most `batch_size` texts when given.
        """
        single = isinstance(texts, str)
        result = self.encode_detailed(
            [texts] if single else texts,
            prompt_name=prompt_name,
            prompt=prompt,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize=normalize,
            truncate_dim=truncate_dim,
        )
        return result.embeddings[0] if single else result.embeddings

    def encode_query(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """Embed search queries with the model's own query prompt (`search_query: ` for BERTA)."""
        return self._encode_role(texts, kwargs, "query")

    def encode_document(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """Embed documents with the model's own document prompt (`search_document: ` for BERTA)."""
        return self._encode_role(texts, kwargs, "document")

    def _encode_role(self, texts, kwargs, role: str) -> np.ndarray:
        if "prompt_name" not in kwargs and "prompt" not in kwargs:  # the caller's choice wins
            name = self.sentence.retrieval_prompt_name(
                role
            )  # None: the model has no prompts at all
            if name is None:
                _warn_once(
                    f"this model defines no prompts, so encode_{role} embeds without one (like encode(..., "
                    f"prompt='')); berta-jax looks for the prompt names "
                    f"{', '.join(RETRIEVAL_PROMPT_NAMES[role])}"
                )
            kwargs["prompt_name" if name else "prompt"] = name or ""
        return self.encode(texts, **kwargs)

    def token_embeddings(self, input_ids, attention_mask, token_type_ids=None) -> jax.Array:
        """Last hidden state `[b, L, hidden]` (float32) for caller-made token ids."""
        return self.runtime.hidden(*self._checked_ids(input_ids, attention_mask, token_type_ids))

    def hidden_states(
        self, input_ids, attention_mask, token_type_ids=None
    ) -> tuple[jax.Array, ...]:
        """The embeddings output and every layer's output, `N + 1 x [b, L, hidden]`, for caller-made token ids."""
        return self.runtime.hidden(
            *self._checked_ids(input_ids, attention_mask, token_type_ids), all_layers=True
        )

    def _checked_ids(self, input_ids, attention_mask, token_type_ids) -> tuple[np.ndarray, ...]:
        input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be the same [batch, seq]"
            )
        check_ids("input_ids", input_ids, self.config.vocab_size)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        token_type_ids = np.asarray(token_type_ids)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids {token_type_ids.shape} must match input_ids {input_ids.shape}"
            )
        check_ids("token_type_ids", token_type_ids, self.config.type_vocab_size)
        return input_ids, attention_mask, token_type_ids

    def __repr__(self) -> str:
        c, s = self.config, self.sentence
        return (
            f"Encoder({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, pooling={s.pooling}, "
            f"normalize={s.normalize}, max_seq_length={s.max_seq_length}, default_prompt={s.default_prompt_name!r})"
        )


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)


def check_ids(name: str, ids: np.ndarray, limit: int) -> None:
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got {ids.dtype}")
    bad = np.argwhere((ids < 0) | (ids >= limit))
    if len(bad):
        b, t = bad[0]
        raise ValueError(
            f"{name}[{b}, {t}] = {ids[b, t]} is outside [0, {limit}); JAX would silently read a wrong row"
        )


def default_batch_tokens(
    devices: Sequence[jax.Device], max_seq_length: int, cfg: BertConfig | None = None
) -> int:
    """Padded tokens per batch: 2048 per CPU device (cache-sized batches run fastest there); on accelerators, what
    an eighth of the device's memory holds of one layer's activations at the longest rows (see
    `activation_bytes_per_token`), as a power of two from 8192 to 262144 per device (16384 when the device does
    not report its memory)."""
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
    """Bytes one token of a `length`-token row keeps live in a layer's forward: float32 attention logits and
    probabilities over the row (2 x heads x length), the hidden-size tensors (about 8 of them) and the two
    feed-forward intermediates."""
    return 4 * (
        2 * cfg.num_attention_heads * length + 8 * cfg.hidden_size + 2 * cfg.intermediate_size
    )
