"""Find a model folder: a local path, or a hub repository through huggingface_hub's cache."""

from __future__ import annotations

import os
from pathlib import Path

from berta_jax.errors import ModelNotFoundError

# What a sentence encoder needs from a repository; never pickles or other frameworks' weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "vocab.txt"]  # fnmatch: "*" also matches "/" (1_Pooling/...)


def _is_hub_id(name: str) -> bool:
    """'owner/name', and not something that reads as a filesystem path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def resolve_model_dir(name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local folder holding the model: `name_or_path` itself, or a hub snapshot.

    A hub id is fetched with huggingface_hub (weights as safetensors only);
    when the hub cannot be reached the cached snapshot is used, and with
    neither, one ModelNotFoundError says what to pass instead.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the model folder that contains config.json")
    if not _is_hub_id(name):
        raise ModelNotFoundError(
            f"{name}: no such folder, and not a hub id of the form 'owner/name' (e.g. 'sergeyzh/BERTA')"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    kwargs = dict(repo_id=name, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS)
    try:
        return Path(snapshot_download(**kwargs))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{name}: no such repository on the Hugging Face hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as online_error:
        try:
            return Path(snapshot_download(**kwargs, local_files_only=True))
        except (LocalEntryNotFoundError, OSError):
            raise ModelNotFoundError(
                f"{name}: the Hugging Face hub cannot be reached ({type(online_error).__name__}) and no cached "
                f"copy exists. Pass the path of a local model folder instead (one holding config.json, "
                f"model.safetensors and the tokenizer files), or download it where the hub is reachable with "
                f"`huggingface-cli download {name}` and copy the cache (HF_HOME) here."
            ) from None
