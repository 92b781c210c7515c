"""A teacher model's embeddings as labels, computed once per run and kept in the run folder.

The teacher embeds one text column of a dataset with its own prompt (a prompt name of the teacher
or a prompt string, `teacher.prompts.COLUMN`; its default prompt otherwise), as
`berta-jax encode` would. The vectors are cached in `OUTPUT_DIR/teacher/NAME.npy` beside a record
of what made them (the teacher's identity, the prompt, a digest of the texts), so a resumed run
reuses them and a changed teacher or text is recomputed, never silently reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from berta_jax.errors import ConfigError
from berta_jax.loading.folder import ModelFolder
from berta_jax.runtime.encoder import Encoder
from berta_jax.storage.local import LocalStore


def _digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def teacher_prompt(folder: ModelFolder, given: str | None) -> str:
    """A prompt name of the teacher, a prompt string, or (None) the teacher's default prompt."""
    if given is None:
        return folder.sentence.resolve_prompt()
    return folder.sentence.prompts.get(given, given)


def teacher_vectors(
    model: str, texts: list[str], prompt: str | None, cache: str, *, log=print
) -> np.ndarray:
    """`[len(texts), D]` float32 teacher embeddings, from `cache` when it was made by the same
    teacher, prompt and texts."""
    folder = ModelFolder.open(model)
    made_by = {
        "teacher": folder.identity(),
        "prompt": teacher_prompt(folder, prompt),
        "texts": _digest(texts),
    }
    record = cache + ".json"
    if os.path.exists(cache) and os.path.exists(record):
        with open(record) as f:
            if json.load(f) == made_by:
                vectors = np.load(cache)
                if vectors.shape[0] == len(texts):
                    return vectors
    log(f"teacher {model}: embedding {len(texts)} texts once (cached in {cache})")
    encoder = Encoder.from_folder(folder)
    vectors = encoder.encode(texts, prompt=made_by["prompt"]).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ConfigError(f"teacher {model}: its embeddings hold NaN or inf")
    store, data = LocalStore(), io.BytesIO()
    np.save(data, vectors)
    store.makedirs(os.path.dirname(cache))
    store.write(cache, data.getvalue())
    store.write(record, json.dumps(made_by).encode())
    return vectors
