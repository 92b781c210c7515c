"""`Encoder`: a sentence-transformers-style embedder around the Flax BERT.

Loading (folder or hub id -> config, weights, tokenizer, sentence config), the
tokenizer step, batching and the jitted pure forward are separate pieces; this
class only wires them together the way a sentence-transformers user expects.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from berta_jax.batching import BatchPlanner, make_batches
from berta_jax.compile_cache import enable_compilation_cache
from berta_jax.config import BertConfig
from berta_jax.errors import NonFiniteError, TruncationWarning
from berta_jax.hub import resolve_model_dir
from berta_jax.model import BertModel
from berta_jax.pooling import make_hidden_fn
from berta_jax.runtime import CompileStats, ShardedForward
from berta_jax.st_config import POOLING_MODES, SentenceConfig
from berta_jax.tokenize import TextTokenizer
from berta_jax.weights import load_model


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """Embeddings plus what happened to each text on the way."""

    embeddings: np.ndarray  # [n, hidden] float32, input order
    truncated: np.ndarray  # [n] bool: cut to max_seq_length tokens
    num_tokens: np.ndarray  # [n] tokens fed to the model (prompt and special tokens included)
    padded_tokens: int  # rows x length summed over the batches run (real + padding)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    return list(texts)


class Encoder:
    """Embeds texts with a BERT sentence encoder (sergeyzh/BERTA first of all).

    Attributes:
      model: the Flax `BertModel`.
      config: its `BertConfig`.
      sentence: pooling, normalisation, context and prompts (`SentenceConfig`).
      tokenizer: the tokenizer step (`TextTokenizer`).
      graphdef, params: `nnx.split(model)`, for the pure functions.
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
    ):
        self.model = model
        self.config: BertConfig = model.cfg
        self.tokenizer = tokenizer
        self.sentence = sentence
        self.name = name
        self.folder = folder  # the model folder it was loaded from (a hub snapshot for hub ids)
        self.graphdef, self.params = nnx.split(model)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        if max_batch_tokens is None:
            max_batch_tokens = default_batch_tokens(self.devices, sentence.max_seq_length)
        BatchPlanner(sentence.max_seq_length, max_batch_tokens, num_devices=len(self.devices))  # validates now
        self.max_batch_tokens = max_batch_tokens
        self.compile_stats = CompileStats()
        self._forwards: dict[tuple[str, bool], ShardedForward] = {}
        # caller-made batches larger than a planner batch run in row chunks of the same size
        self._hidden_fn = jax.jit(make_hidden_fn(self.graphdef, chunk_tokens=self.max_batch_tokens))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        devices: Sequence[jax.Device] | None = None,
        max_batch_tokens: int | None = None,
        compilation_cache: str | os.PathLike | bool | None = None,
    ) -> Encoder:
        """Load a model folder (HF / sentence-transformers layout, or converted) or a hub id.

        Args:
          dtype: compute dtype (float32 for PyTorch parity, bfloat16 for speed).
          param_dtype: storage dtype of the parameters.
          pooling: override the folder's pooling ("mean", "cls", ...), e.g. "cls" for FRIDA-style use.
          max_seq_length: override the folder's context length (at most max_position_embeddings).
          devices: devices to shard each batch over (default: every local device).
          max_batch_tokens: padded tokens per batch (default: 2048 per device on CPU, 16384 on accelerators).
          compilation_cache: JAX persistent compilation cache directory; None uses $BERTA_JAX_CACHE_DIR or
            ~/.cache/berta_jax/xla (unless JAX already has one), False leaves JAX's setting alone.
        """
        if compilation_cache is not False:
            enable_compilation_cache(None if compilation_cache in (None, True) else compilation_cache)
        folder = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir)
        cfg = BertConfig.from_json(folder / "config.json")
        sentence = SentenceConfig.from_folder(folder, cfg)
        overrides = {}
        if pooling is not None:
            if pooling not in POOLING_MODES:
                raise ValueError(f"pooling={pooling!r} is not supported; choose one of {', '.join(POOLING_MODES)}")
            overrides["pooling"] = pooling
        if max_seq_length is not None:
            if not (isinstance(max_seq_length, int) and 2 <= max_seq_length <= cfg.max_position_embeddings):
                raise ValueError(
                    f"max_seq_length={max_seq_length!r} must be an integer in [2, {cfg.max_position_embeddings}]"
                )
            overrides["max_seq_length"] = max_seq_length
        sentence = dataclasses.replace(sentence, **overrides)
        tokenizer = TextTokenizer.from_folder(folder, sentence.max_seq_length, cfg.vocab_size, sentence.lowercase)
        model = load_model(folder, cfg, dtype=dtype, param_dtype=param_dtype)
        return cls(
            model, tokenizer, sentence, name=str(name_or_path), folder=folder, devices=devices,
            max_batch_tokens=max_batch_tokens,
        )

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, *, pooling: str | None = None, normalize: bool | None = None) -> ShardedForward:
        """The compiled, sharded sentence forward for a pooling mode and normalisation."""
        key = (pooling or self.sentence.pooling, self.sentence.normalize if normalize is None else normalize)
        if key not in self._forwards:
            # every forward shares the first one's replicated parameters (placing them again is a no-op)
            # instead of holding its own copy on each device
            params = next(iter(self._forwards.values())).params if self._forwards else self.params
            self._forwards[key] = ShardedForward(
                self.graphdef, params, pooling=key[0], normalize=key[1], devices=self.devices,
                stats=self.compile_stats,
            )
        return self._forwards[key]

    def encode_detailed(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        normalize: bool | None = None,
    ) -> EncodeResult:
        """Like `encode`, plus per-text truncation flags and token counts."""
        texts = _check_texts(texts)
        prefix = self.sentence.resolve_prompt(prompt_name, prompt)
        tokens = self.tokenizer(texts, prompt=prefix)
        forward = self.forward(normalize=normalize)
        planner = BatchPlanner(
            max_seq_length=self.sentence.max_seq_length,
            max_batch_tokens=self.max_batch_tokens if max_batch_tokens is None else max_batch_tokens,
            batch_size=batch_size,
            num_devices=forward.num_devices,
        )
        batches = make_batches(
            tokens, planner, pad_token_id=self.config.pad_token_id, exclude_prompt=not self.sentence.include_prompt
        )
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        padded = 0
        for batch, vectors in forward.run(batches):
            out[batch.rows] = vectors
            padded += batch.input_ids.size
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist()
            raise NonFiniteError(
                f"non-finite embeddings for {len(bad)} of {len(texts)} texts (indices {bad[:20]}"
                f"{', ...' if len(bad) > 20 else ''}); the weights overflow float32 on them: check the checkpoint",
                bad,
            )
        n_cut = int(tokens.truncated.sum())
        if n_cut:
            warnings.warn(
                f"{n_cut} of {len(texts)} texts were longer than max_seq_length={self.sentence.max_seq_length} "
                "tokens and were truncated; encode_detailed(...).truncated flags them",
                TruncationWarning,
                stacklevel=3,
            )
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
    ) -> np.ndarray:
        """Embed texts -> float32 `[n, hidden]` in input order (`[hidden]` for a single string).

        The model's default prompt applies unless `prompt_name` or `prompt`
        overrides it (`prompt=""` means no prompt). `normalize=None` follows the
        folder (L2-normalised when a Normalize module is configured). Batches
        hold up to `max_batch_tokens` padded tokens (default: the encoder's),
        and at most `batch_size` texts when given.
        """
        single = isinstance(texts, str)
        result = self.encode_detailed(
            [texts] if single else texts,
            prompt_name=prompt_name,
            prompt=prompt,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            normalize=normalize,
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
            name = self.sentence.retrieval_prompt_name(role)  # None: the model has no prompts at all
            kwargs["prompt_name" if name else "prompt"] = name or ""
        return self.encode(texts, **kwargs)

    def token_embeddings(self, input_ids, attention_mask, token_type_ids=None) -> jax.Array:
        """Last hidden state `[b, L, hidden]` (float32) for caller-made token ids."""
        input_ids = np.asarray(input_ids)
        attention_mask = np.asarray(attention_mask)
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must be the same [batch, seq]"
            )
        _check_ids("input_ids", input_ids, self.config.vocab_size)
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is not None:
            token_type_ids = np.asarray(token_type_ids)
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(f"token_type_ids {token_type_ids.shape} must match input_ids {input_ids.shape}")
            _check_ids("token_type_ids", token_type_ids, self.config.type_vocab_size)
            token_type_ids = token_type_ids.astype(np.int32)
        return self._hidden_fn(self.params, input_ids.astype(np.int32), attention_mask.astype(np.int32), token_type_ids)

    def __repr__(self) -> str:
        c, s = self.config, self.sentence
        return (
            f"Encoder({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, pooling={s.pooling}, "
            f"normalize={s.normalize}, max_seq_length={s.max_seq_length}, default_prompt={s.default_prompt_name!r})"
        )


def _check_ids(name: str, ids: np.ndarray, limit: int) -> None:
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got {ids.dtype}")
    bad = np.argwhere((ids < 0) | (ids >= limit))
    if len(bad):
        b, t = bad[0]
        raise ValueError(
            f"{name}[{b}, {t}] = {ids[b, t]} is outside [0, {limit}); JAX would silently read a wrong row"
        )


def default_batch_tokens(devices: Sequence[jax.Device], max_seq_length: int) -> int:
    """Padded tokens per batch: small on CPU (cache-sized batches run fastest there), large on accelerators."""
    per_device = 2048 if devices[0].platform == "cpu" else 16384
    return max(per_device * len(devices), max_seq_length)
