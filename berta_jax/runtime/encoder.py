"""`Encoder`: a sentence-transformers-style embedder around the Flax BERT.

Loading (`ModelFolder`: folder or hub id -> config, sentence config; then tokenizer and weights),
the tokenizer step, batching and the compiled runtime are separate pieces; this class wires them
together the way a sentence-transformers user expects. Every public call runs through the one
`Runtime`. The wiring and the three steps of one call (`prepare`, `run_batches`, `finish`) are
`encoder_base.EncoderBase`; this module adds the constructors and the calls users make.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from berta_jax.errors import TruncationWarning
from berta_jax.loading.folder import ModelFolder
from berta_jax.loading.sentence_config import RETRIEVAL_PROMPT_NAMES
from berta_jax.loading.weights import load_model
from berta_jax.models.vectors import check_finite
from berta_jax.runtime.budget import activation_bytes_per_token  # noqa: F401 - re-exported
from berta_jax.runtime.budget import default_batch_tokens  # noqa: F401 - re-exported
from berta_jax.runtime.compile_cache import enable_compilation_cache
from berta_jax.runtime.dtypes import choose_dtype
from berta_jax.runtime.encoder_base import EncoderBase
from berta_jax.runtime.encoder_base import Prepared  # noqa: F401 - re-exported
from berta_jax.runtime.input_checks import check_texts, check_token_ids
from berta_jax.runtime.input_checks import check_ids  # noqa: F401 - re-exported
from berta_jax.text.tokenize import TextTokenizer


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """Embeddings plus what happened to each text on the way."""

    embeddings: np.ndarray  # [n, dim] float32, input order
    truncated: np.ndarray  # [n] bool: cut to max_seq_length tokens
    num_tokens: np.ndarray  # [n] tokens fed to the model (prompt and special tokens included)
    padded_tokens: int  # rows x length summed over the batches run (real + padding)

    def __repr__(self) -> str:  # shapes, not the arrays (thousands of vectors help nobody)
        return (
            f"EncodeResult(embeddings={self.embeddings.dtype}{list(self.embeddings.shape)}, "
            f"truncated={int(self.truncated.sum())} of {len(self.truncated)}, "
            f"num_tokens={int(self.num_tokens.sum())} in all, padded_tokens={self.padded_tokens})"
        )


class Encoder(EncoderBase):
    """Embeds texts with a BERT sentence encoder (sergeyzh/BERTA first of all).

    Attributes:
      model: the Flax `BertModel`.
      config: its `BertConfig`.
      sentence: pooling, normalisation, context, prompts and output dimension (`SentenceConfig`).
      tokenizer: the tokenizer step (`TextTokenizer`).
      graphdef, params: `nnx.split(model)`, for the pure functions (read from `model` on each
        access).
      runtime: the compiled, sharded forwards (of `model`'s current weights: an edit to them is
        run); `compile_stats` says what was compiled, `run_stats` how busy the device was while
        batches ran.
    """

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
        """Load a model folder (HF / sentence-transformers / converted), a storage URL or a hub id.

        Args:
          pooling: override the folder's pooling ("mean", "cls", ...; "cls" for FRIDA-style use).
          max_seq_length: override the folder's context length (at most max_position_embeddings).
          truncate_dim: keep the first N dimensions of every embedding (Matryoshka), as
            sentence-transformers.
          revision, cache_dir: a hub id's revision; where hub snapshots and URL copies are kept.
          compilation_cache: a directory for JAX's persistent compilation cache, or True for the
            default one ($BERTA_JAX_CACHE_DIR or ~/.cache/berta_jax/xla). None leaves JAX's
            settings alone.
          dtype, param_dtype, devices, max_batch_tokens, packing, attention: as in `from_folder`.
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
        """Load the tokenizer and the weights of an opened `ModelFolder`.

        Args:
          dtype: compute dtype: float32 (PyTorch parity, the default), bfloat16 (the fast mode on
            accelerators and on CPUs with AMX or AVX512-BF16), or "auto" (bfloat16 where the
            hardware multiplies it natively, else float32; `compile_stats.dtype` says what was
            chosen and why).
          param_dtype: storage dtype of the parameters.
          devices: devices to shard each batch over (default: every local device).
          max_batch_tokens: padded tokens per batch (default: 2048 per CPU device; on accelerators
            sized to the device's memory, see `default_batch_tokens`).
          packing: several texts per row (almost no padding); False: one text per padded row.
          attention: the attention kernel: "auto" (in bfloat16/float16, cuDNN's fused attention on
            NVIDIA GPUs and Pallas splash attention on TPUs; the explicit XLA form elsewhere and in
            float32; `compile_stats.attention` names the one used), "xla", "cudnn" or "splash".
        """
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
                f"{n_cut} of {len(texts)} texts were longer than "
                f"max_seq_length={self.sentence.max_seq_length} tokens and were truncated; "
                "encode_detailed(...).truncated flags them",
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

        The model's default prompt applies unless `prompt_name` or `prompt` overrides it
        (`prompt=""` means no prompt). `normalize=None` follows the folder (L2-normalised when a
        Normalize module is configured); `truncate_dim` keeps the first dimensions, as
        sentence-transformers does (normalised again only with `normalize=True`). Batches hold up
        to `max_batch_tokens` padded tokens (default: the encoder's), and at most `batch_size`
        texts when given.
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
            # None: the model has no prompts at all
            name = self.sentence.retrieval_prompt_name(role)
            if name is None:
                _warn_once(
                    f"this model defines no prompts, so encode_{role} embeds without one "
                    "(like encode(..., prompt='')); berta-jax looks for the prompt names "
                    f"{', '.join(RETRIEVAL_PROMPT_NAMES[role])}"
                )
            kwargs["prompt_name" if name else "prompt"] = name or ""
        return self.encode(texts, **kwargs)

    def token_embeddings(self, input_ids, attention_mask, token_type_ids=None) -> jax.Array:
        """Last hidden state `[b, L, hidden]` (float32) for caller-made token ids."""
        return self.runtime.hidden(
            *check_token_ids(self.config, input_ids, attention_mask, token_type_ids)
        )

    def hidden_states(
        self, input_ids, attention_mask, token_type_ids=None
    ) -> tuple[jax.Array, ...]:
        """The embeddings output and every layer's output, `N + 1 x [b, L, hidden]`, for
        caller-made token ids."""
        return self.runtime.hidden(
            *check_token_ids(self.config, input_ids, attention_mask, token_type_ids),
            all_layers=True,
        )

    def __repr__(self) -> str:
        c, s = self.config, self.sentence
        return (
            f"Encoder({self.name!r}, layers={c.num_hidden_layers}, hidden={c.hidden_size}, "
            f"pooling={s.pooling}, normalize={s.normalize}, max_seq_length={s.max_seq_length}, "
            f"default_prompt={s.default_prompt_name!r})"
        )


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)
