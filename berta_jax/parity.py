"""A parity report against PyTorch, for people who port or fine-tune encoders.

Runs transformers' `BertModel` (eager attention, float32, CPU) and berta-jax on the same texts and
reports, per layer, the max abs difference of the hidden states over real tokens, then the sentence
embeddings of sentence-transformers (when installed) against `Encoder.encode`: max abs difference and
cosine statistics. Needs torch; berta-jax itself never does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from berta_jax.encoder import Encoder

DEFAULT_TEXTS = (
    "В Ярославской области разрешили работу бань, но без посетителей",
    "Женщину спасают врачи.",
    "Сколько программистов нужно, чтобы вкрутить лампочку?",
    "The quick brown fox jumps over the lazy dog.",
    "",
)


@dataclasses.dataclass(frozen=True)
class ParityReport:
    layer_max_abs: list[float]  # embeddings output, then each layer
    embedding_max_abs: float | None  # vs sentence-transformers, None when it is not installed
    cosine_min: float | None
    cosine_mean: float | None

    def passed(self, hidden_tol: float, embed_tol: float) -> bool:
        ok = max(self.layer_max_abs) <= hidden_tol
        return ok and (self.embedding_max_abs is None or self.embedding_max_abs <= embed_tol)


def read_texts(path: str | Path) -> list[str]:
    """One text per line, UTF-8, split on '\\n' only (not on U+2028 or U+0085 as str.splitlines would)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def parity_report(model: str, texts: list[str], *, prompt: str | None = None, prompt_name: str | None = None) -> ParityReport:
    try:
        import torch  # noqa: F401  (checked before any work: the PyTorch side needs it)
        import transformers  # noqa: F401
    except ImportError:
        raise RuntimeError("the parity report needs PyTorch: pip install torch transformers") from None
    encoder = Encoder.from_pretrained(model)
    prefix = encoder.sentence.resolve_prompt(prompt_name, prompt)
    batch = encoder.tokenizer.hf(
        [prefix + t for t in texts], padding=True, truncation=True,
        max_length=encoder.sentence.max_seq_length, return_tensors="np",
    )
    ids, mask, types = (batch[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids"))
    ours = encoder.model.forward(ids, mask, types, output_hidden_states=True).hidden_states
    with _hf_folder(Path(encoder.folder)) as hf_folder:
        return _compare(encoder, hf_folder, texts, prefix, ids, mask, types, ours)


@contextlib.contextmanager
def _hf_folder(folder: Path):
    """The folder itself when it holds HF weights; for a berta-jax folder (flax_model.safetensors only,
    e.g. after fine-tuning in JAX) a temporary HF copy, so PyTorch can load the same weights."""
    from convert.checkpoint import FLAX_WEIGHTS, HF_INDEX, HF_WEIGHTS
    from convert.folders import flax_folder_to_hf

    if (folder / HF_WEIGHTS).exists() or (folder / HF_INDEX).exists() or not (folder / FLAX_WEIGHTS).exists():
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="berta-jax-parity-") as tmp:
        flax_folder_to_hf(folder, tmp)
        yield Path(tmp)


def _compare(encoder, folder: Path, texts, prefix, ids, mask, types, ours) -> ParityReport:
    import torch
    from transformers import BertModel

    reference = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
            token_type_ids=torch.from_numpy(types).long(), output_hidden_states=True,
        ).hidden_states
    real = mask.astype(bool)
    layers = [float(np.abs(np.asarray(a)[real] - b.numpy()[real]).max()) for a, b in zip(ours, theirs)]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return ParityReport(layers, None, None, None)
    mine = encoder.encode(texts, prompt=prefix)
    st = SentenceTransformer(str(folder), device="cpu").encode(texts, prompt=prefix)
    cos = np.sum(mine * st, axis=1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(st, axis=1))
    return ParityReport(layers, float(np.abs(mine - st).max()), float(cos.min()), float(cos.mean()))
