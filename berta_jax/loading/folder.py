"""A model folder's cheap parts: where it is, what it is, and what its configs say; no weights, no
tokenizer.

The batch job answers "nothing to do" or "refused" from these alone, in well under a second, and
loads the weights only when there is work. `Encoder.from_pretrained` starts here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from berta_jax.models.bert.config import BertConfig
from berta_jax.models.registry import read_config
from berta_jax.storage.model_files import JSON_LIMIT, TOKENIZER_LIMIT, ModelFiles, weight_files
from berta_jax.loading.hub import resolve_model_dir
from berta_jax.loading.sentence_config import SentenceConfig, sentence_files
from berta_jax.text.tokenize import TOKENIZER_FILES
from berta_jax.storage.stores import is_url
from berta_jax.models.vectors import check_truncate_dim, embedding_dim


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A resolved local model folder with its validated `config.json` and sentence-transformers
    settings."""

    name: str  # as the caller gave it (path, URL or hub id)
    files: ModelFiles
    config: BertConfig
    sentence: SentenceConfig

    @classmethod
    def open(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | None = None,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        truncate_dim: int | None = None,
    ) -> ModelFolder:
        """Resolve and read a model folder, applying the caller's overrides of the folder's
        settings."""
        files = ModelFiles(resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir))
        config = read_config(files)
        sentence = SentenceConfig.from_folder(files, config)
        overrides = {}
        if pooling is not None:  # checked by SentenceConfig, as the folder's own value is
            overrides["pooling"] = pooling
        if max_seq_length is not None:
            if not (
                isinstance(max_seq_length, int)
                and 2 <= max_seq_length <= config.max_position_embeddings
            ):
                raise ValueError(
                    f"max_seq_length={max_seq_length!r} must be an integer in "
                    f"[2, {config.max_position_embeddings}]"
                )
            overrides["max_seq_length"] = max_seq_length
        if truncate_dim is not None:
            overrides["truncate_dim"] = check_truncate_dim(truncate_dim, config.hidden_size)
        return cls(
            os.fspath(name_or_path), files, config, dataclasses.replace(sentence, **overrides)
        )

    @property
    def embedding_dim(self) -> int:
        """Dimensions of the vectors this folder's encoder returns (its truncate_dim, else the
        hidden size)."""
        return embedding_dim(self.config.hidden_size, self.sentence.truncate_dim)

    @property
    def folder(self):
        return self.files.folder

    def protected(self) -> list[str]:
        """Every place a job must never write: the name it was given (a URL's prefix), the resolved
        folder and the real file behind each of its entries (hub snapshots link to shared blobs)."""
        folder = self.files.folder
        given = [self.name] if is_url(self.name) or os.path.exists(self.name) else []
        behind = sorted({os.path.realpath(p) for p in folder.rglob("*") if p.is_file()})
        return [str(folder), *given, *behind]

    def identity(self) -> dict:
        """What a job's output depends on in this folder: the name, size and sha256 of each file
        the loader reads (config, weights, tokenizer, sentence-transformers files), through the
        loader's own checks (regular files inside the folder, JSON and tokenizer files bounded).
        Two hosts' byte-identical copies agree, wherever they lie and whatever their times; a file
        replaced by another of the same size and time does not; anything else in the folder (a
        compilation cache, a link to a large file elsewhere) is neither read nor counted."""
        files = self.files
        bounded = [
            ("config.json", JSON_LIMIT),
            *[(name, JSON_LIMIT) for name in sentence_files(files)],
            *[(name, TOKENIZER_LIMIT) for name in TOKENIZER_FILES[:-1] if files.exists(name)],
        ]
        entries = []
        for name, limit in [*bounded, *[(name, None) for name in weight_files(files)]]:
            path = files.path(name, limit)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
            entries.append((name, os.stat(path).st_size, digest.hexdigest()))
        return {"files": hashlib.sha256(json.dumps(entries).encode()).hexdigest()}
