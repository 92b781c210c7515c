"""Find a model folder: a local path, a storage URL (copied to a local cache), or a Hugging Face hub
id."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path

from berta_jax.errors import ConfigError, ModelNotFoundError, StorageError
from berta_jax.storage.model_files import ModelFiles
from berta_jax.storage.stores import canonical, copy_to_local, is_url, store_for

# What a sentence encoder needs from a repository; never pickles or other frameworks' weights.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "vocab.txt",
]  # fnmatch: "*" also matches "/", so a storage URL's copy takes top-level names only
_REMOTE_FILE_LIMIT = 64 * 2**30


def _is_hub_id(name: str) -> bool:
    """'owner/name', and not something that reads as a filesystem path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and "\\" not in name


def default_cache_root() -> Path:
    return Path(
        os.environ.get("BERTA_JAX_MODEL_CACHE") or Path.home() / ".cache" / "berta_jax" / "models"
    )


def resolve_model_dir(
    name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local folder holding the model: `name_or_path` itself, a copy of a storage URL, or a hub
    snapshot.

    A hub id is fetched with huggingface_hub (weights as safetensors only); when the hub cannot be
    reached the cached snapshot is used, and with neither, one ModelNotFoundError says what to pass
    instead.
    """
    name = canonical(name_or_path)
    if is_url(name):
        return _copy_remote_folder(name, Path(cache_dir) if cache_dir else default_cache_root())
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"{path} is a file; pass the model folder that contains config.json"
        )
    if not _is_hub_id(name):
        raise ModelNotFoundError(
            f"{name}: no such folder, and not a hub id of the form 'owner/name' (e.g. "
            "'sergeyzh/BERTA')"
        )
    return _hub_snapshot(name, revision, cache_dir)


def _hub_snapshot(name: str, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    kwargs = dict(
        repo_id=name, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS
    )
    try:
        return Path(snapshot_download(**kwargs))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{name}: no such repository on the Hugging Face hub (or it is private)"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as online_error:
        try:
            return Path(snapshot_download(**kwargs, local_files_only=True))
        except (LocalEntryNotFoundError, OSError):
            raise ModelNotFoundError(
                f"{name}: the Hugging Face hub cannot be reached ({type(online_error).__name__}) "
                "and no cached copy exists. Pass the path of a local model folder instead (one "
                "holding config.json, model.safetensors and the tokenizer files), or download it "
                f"where the hub is reachable with `hf download {name}` (huggingface_hub's command "
                "line) and copy the cache (HF_HOME) here."
            ) from None


def _copy_remote_folder(url: str, cache_root: Path) -> Path:
    """Copy the model files under a storage URL into a local cache folder (again only when they
    changed): the top level's files the loader reads, then the config.json of each
    sentence-transformers module folder that modules.json names, nothing deeper."""
    store = store_for(url)
    base = url.rstrip("/")
    local = cache_root / hashlib.sha256(base.encode()).hexdigest()[:20]
    try:
        found = store.find(base + "/")
    except FileNotFoundError:
        found = []
    names = [p[len(base) + 1 :] for p in found if p.startswith(base + "/") and p != base + "/"]
    # object names are keys, not paths: only plain segments may become local files
    for name in names:
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise StorageError(
                f"{base}/{name}: an object name with an empty, '.' or '..' segment, which would "
                "leave the model folder; rename or remove that object"
            )
    top = [n for n in names if "/" not in n and any(fnmatch.fnmatch(n, p) for p in ALLOW_PATTERNS)]
    if "config.json" not in top:
        raise ModelNotFoundError(f"{url}: no config.json there; pass the URL of a model folder")
    for name in top:
        _copy_if_changed(store, base, name, local)
    wanted = top + [n for n in _module_configs(local) if n in names]
    for name in wanted[len(top) :]:
        _copy_if_changed(store, base, name, local)
    for stale in [
        p for p in local.rglob("*") if p.is_file() and ".versions" not in p.relative_to(local).parts
    ]:
        if stale.relative_to(local).as_posix() not in wanted:
            stale.unlink()  # gone from the bucket (or not read): not served from the cache
    return local


def _module_configs(local: Path) -> list[str]:
    """`PATH/config.json` for each module of the copied modules.json (none when it is absent or
    malformed: the loader then names the problem in the local copy)."""
    files = ModelFiles(local)
    try:
        modules = files.read_json("modules.json") if files.exists("modules.json") else []
    except ConfigError:
        return []
    if not isinstance(modules, list):
        return []
    paths = [m.get("path") for m in modules if isinstance(m, dict)]
    return [f"{p.strip('/')}/config.json" for p in paths if isinstance(p, str) and p.strip("/")]


def _copy_if_changed(store, base: str, name: str, local: Path) -> None:
    """Copy one object unless the local copy's stamp (the object's name, size and version, under a
    key derived from the name alone) says it is this object as it is now."""
    info = store.info(f"{base}/{name}")
    target = local / name
    stamp = local / ".versions" / (hashlib.sha256(name.encode()).hexdigest() + ".version")
    expected = json.dumps({"name": name, "size": info.size, "version": info.version})
    if target.is_file() and stamp.is_file() and stamp.read_text() == expected:
        return
    stamp.unlink(missing_ok=True)  # a copy interrupted from here on is copied again
    copy_to_local(store, f"{base}/{name}", target, _REMOTE_FILE_LIMIT)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(expected)
