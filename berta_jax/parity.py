"""The one comparison with PyTorch, stage by stage, for people who port or fine-tune encoders (and
for the tests).

Runs transformers' `BertModel` (eager attention, float32, CPU) and berta-jax on the same token ids
and reports the max abs difference over real tokens of the embeddings output and of every layer's
hidden states; then, when sentence-transformers is installed, the pooled vectors against its own
Transformer -> Pooling modules and the final sentence embeddings against its `encode`. A porting bug
shows up at the stage where it starts. Needs torch; berta-jax itself never does.

16-bit compute (`dtype="bfloat16"`, or "auto" where it picks bfloat16) cannot meet float32's max-abs
tolerances, and is not asked to: its differences are reported, and it passes when every sentence
embedding's cosine to sentence-transformers' float32 one is at least `tolerances.MIN_COSINE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from berta_jax.runtime.batching import bucket, length_buckets
from berta_jax.convert.checkpoint import FLAX_WEIGHTS, HF_INDEX, HF_WEIGHTS
from berta_jax.convert.folders import flax_folder_to_hf
from berta_jax.runtime.encoder import Encoder
from berta_jax.errors import TruncationWarning
from berta_jax.storage.model_files import ModelFiles
from berta_jax.tolerances import EMBEDDING_TOLERANCE, HIDDEN_TOLERANCE, MIN_COSINE

DEFAULT_TEXTS = (
    "В Ярославской области разрешили работу бань, но без посетителей",
    "Женщину спасают врачи.",
    "Сколько программистов нужно, чтобы вкрутить лампочку?",
    "The quick brown fox jumps over the lazy dog.",
    "",
)
# sentence-transformers pads each batch to its longest text: small batches pad less
REFERENCE_BATCH = 4


@dataclasses.dataclass(frozen=True)
class ParityReport:
    layer_max_abs: list[float]  # embeddings output, then each layer
    # vs sentence-transformers' Transformer -> Pooling; None without it
    pooled_max_abs: float | None
    embedding_max_abs: float | None  # vs SentenceTransformer.encode; None without it
    cosine_min: float | None
    cosine_mean: float | None
    # SentenceTransformer.encode's vectors, to compare more runs with
    reference_embeddings: np.ndarray | None = None
    truncated: int = 0  # texts longer than max_seq_length: both sides compare their first tokens
    dtype: str = "float32"  # berta-jax's compute dtype (the reference is float32)
    cosine_argmin: int | None = None  # the text with the lowest cosine (0-based)
    dtype_choice: str = "float32"  # the dtype and what chose it (`CompileStats.dtype`), to print

    @property
    def sixteen_bit(self) -> bool:
        """16-bit compute: judged by the cosine bound, not by float32's max-abs tolerances."""
        return self.dtype != "float32"

    def stages(self) -> list[tuple[str, float, str]]:
        """(stage name, max abs difference, which tolerance applies) in pipeline order."""
        rows = [
            ("embeddings" if i == 0 else f"layer {i}", d, "hidden")
            for i, d in enumerate(self.layer_max_abs)
        ]
        if self.pooled_max_abs is not None:
            rows += [
                ("pooled", self.pooled_max_abs, "embedding"),
                ("sentence embedding", self.embedding_max_abs, "embedding"),
            ]
        return rows

    def first_failure(
        self,
        hidden_tol: float = HIDDEN_TOLERANCE,
        embed_tol: float = EMBEDDING_TOLERANCE,
        min_cosine: float = MIN_COSINE,
    ) -> str | None:
        """The first stage above its tolerance (float32), or the cosine below its bound (16-bit
        compute), said with its figure; None when everything holds."""
        if self.sixteen_bit:
            if self.cosine_min is None:
                raise ValueError("a 16-bit report needs sentence-transformers' embeddings")
            if self.cosine_min >= min_cosine:
                return None
            return (
                f"sentence embeddings in {self.dtype}: cosine {self.cosine_min:.7f} to float32 on "
                f"text {self.cosine_argmin + 1}, below the bound {min_cosine}"
            )
        limits = {"hidden": hidden_tol, "embedding": embed_tol}
        return next((name for name, diff, kind in self.stages() if diff > limits[kind]), None)


@dataclasses.dataclass
class Reference:
    """The PyTorch side, loaded once: transformers' BertModel and (when installed)
    sentence-transformers."""

    bert: object
    sentence_transformer: object | None

    @classmethod
    def load(cls, folder: str | Path) -> Reference:
        try:
            import torch  # noqa: F401  (checked before any work: the PyTorch side needs it)
            from transformers import BertModel
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise RuntimeError(
                "the parity report needs PyTorch: pip install torch transformers"
            ) from None
        # its "Loading weights" bars are noise in a report
        transformers_logging.disable_progress_bar()
        bert = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            return cls(bert, None)
        return cls(bert, SentenceTransformer(str(folder), device="cpu"))


def _max_abs(a, b) -> float:
    return (
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        if np.size(a)
        else 0.0
    )


def compare(
    encoder: Encoder,
    reference: Reference,
    texts: Sequence[str],
    *,
    prompt: str = "",
    token_type_ids: np.ndarray | None = None,
) -> ParityReport:
    """Every stage of `encoder` against `reference` on `texts` with `prompt` prepended."""
    if not texts:
        raise ValueError("parity needs at least one text to compare; got none")
    layers = _layer_max_abs(encoder, reference, texts, prompt, token_type_ids)
    with warnings.catch_warnings():  # counted in the report instead
        warnings.simplefilter("ignore", TruncationWarning)
        result = encoder.encode_detailed(list(texts), prompt=prompt)
        pooled = encoder.encode(
            list(texts), prompt=prompt, normalize=False, truncate_dim=encoder.hidden_size
        )
    truncated, mine = int(result.truncated.sum()), result.embeddings
    dtype = np.dtype(encoder.runtime.compute_dtype).name
    st = reference.sentence_transformer
    if st is None:
        if dtype != "float32":
            raise RuntimeError(
                f"a {dtype} parity check compares the sentence embeddings with "
                "sentence-transformers' float32 ones: pip install sentence-transformers"
            )
        return ParityReport(layers, None, None, None, None, truncated=truncated)
    pooled_ref = _pooled(st, list(texts), prompt)
    ref = st.encode(list(texts), prompt=prompt, convert_to_numpy=True, batch_size=REFERENCE_BATCH)
    cos = np.sum(mine * ref, axis=1) / np.maximum(
        np.linalg.norm(mine, axis=1) * np.linalg.norm(ref, axis=1), 1e-12
    )
    return ParityReport(
        layers,
        _max_abs(pooled, pooled_ref),
        _max_abs(mine, ref),
        float(cos.min()),
        float(cos.mean()),
        ref,
        truncated,
        dtype,
        int(cos.argmin()),
        encoder.compile_stats.dtype,
    )


def _layer_max_abs(
    encoder: Encoder,
    reference: Reference,
    texts: Sequence[str],
    prompt: str,
    token_type_ids: np.ndarray | None,
) -> list[float]:
    """Per stage (embeddings output, then each layer), the largest difference over the rows."""
    batch = encoder.tokenizer.hf(
        [prompt + t for t in texts],
        padding=True,
        truncation=True,
        max_length=encoder.sentence.max_seq_length,
        return_tensors="np",
    )
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    types = (
        batch["token_type_ids"].astype(np.int32)
        if token_type_ids is None
        else token_type_ids.astype(np.int32)
    )
    lengths = mask.sum(axis=1)
    groups = [
        _layer_differences(
            encoder, reference, *(a[rows, : lengths[rows].max()] for a in (ids, mask, types))
        )
        for rows in _length_groups(lengths, encoder.sentence.max_seq_length)
    ]
    # per stage, the largest difference over the groups
    return [max(stage) for stage in zip(*groups)]


def _length_groups(lengths: np.ndarray, context: int) -> list[np.ndarray]:
    """Rows grouped by length bucket, so a few long texts do not pad every short one to the context
    (the same comparison over every real token, at a fraction of the cost on both sides)."""
    buckets = np.array([bucket(int(n), length_buckets(context)) for n in lengths])
    return [np.flatnonzero(buckets == b) for b in sorted(set(buckets.tolist()))]


def _layer_differences(
    encoder: Encoder, reference: Reference, ids: np.ndarray, mask: np.ndarray, types: np.ndarray
) -> list[float]:
    """Max abs difference over real tokens of the embeddings output and each layer's output."""
    import torch

    ours = encoder.hidden_states(ids, mask, types)
    with torch.no_grad():
        theirs = reference.bert(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(),
            output_hidden_states=True,
        ).hidden_states
    real = mask.astype(bool)
    return [
        _max_abs(np.asarray(a)[real], b.numpy()[real]) for a, b in zip(ours, theirs, strict=True)
    ]


def _pooled(st, texts: list[str], prompt: str) -> np.ndarray:
    """sentence-transformers' Transformer -> Pooling output (before Normalize and truncation)."""
    from sentence_transformers import SentenceTransformer

    first_two = SentenceTransformer(modules=[st[0], st[1]], device="cpu")
    return first_two.encode(
        texts,
        prompt=prompt,
        convert_to_numpy=True,
        normalize_embeddings=False,
        batch_size=REFERENCE_BATCH,
    )


@contextlib.contextmanager
def hf_folder(folder: Path):
    """The folder itself when it holds HF weights; for a berta-jax folder (flax_model.safetensors
    only, e.g. after fine-tuning in JAX) a temporary HF copy, so PyTorch can load the same
    weights."""
    files = ModelFiles(folder)
    if files.exists(HF_WEIGHTS) or files.exists(HF_INDEX) or not files.exists(FLAX_WEIGHTS):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="berta-jax-parity-") as tmp:
        flax_folder_to_hf(folder, Path(tmp) / "hf")
        yield Path(tmp) / "hf"


def parity_report(
    model: str,
    texts: Sequence[str],
    *,
    prompt: str | None = None,
    prompt_name: str | None = None,
    dtype: str = "float32",
) -> ParityReport:
    """Load `model` on both sides and compare them (`berta-jax parity`); `dtype` is berta-jax's
    compute dtype ("float32", "bfloat16", "float16" or "auto"), the reference's is float32."""
    encoder = Encoder.from_pretrained(model, dtype=dtype)
    prefix = encoder.sentence.resolve_prompt(prompt_name, prompt)
    with hf_folder(Path(encoder.folder)) as folder:
        return compare(encoder, Reference.load(folder), texts, prompt=prefix)
