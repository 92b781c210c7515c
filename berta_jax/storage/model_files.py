"""Read the files of a model folder safely: regular files inside the folder, of bounded size.

A model folder is untrusted input. Before a file is opened, its path (as a config names it or as
berta-jax expects it) must stay inside the folder, must resolve (through symlinks) to a regular file
inside the folder's root, and must be below a size bound; otherwise the read is refused with the
reason. So a `config.json` that is a symlink to `/dev/zero`, a FIFO that would block, `modules.json`
naming `../elsewhere` or a shard index naming `/etc/passwd` are errors, never reads.

The root is the folder itself, or for a Hugging Face hub snapshot
(`.../models--owner--name/snapshots/REV`) the repository's cache folder, whose `blobs/` the
snapshot's symlinks point into.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from berta_jax.errors import ConfigError
from berta_jax.storage.json_fields import Fields

# Size bounds: configs are a few kB; tokenizer files of large vocabularies a few tens of MB.
JSON_LIMIT = 16 * 2**20
TOKENIZER_LIMIT = 256 * 2**20
# Weight files, in the order the loader prefers them (see `weight_files`).
FLAX_WEIGHTS = "flax_model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_WEIGHTS = "model.safetensors"


def folder_root(folder: Path) -> Path:
    """The folder symlinks may point into: the hub repository cache for a snapshot, else the
    folder."""
    resolved = folder.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent
    return resolved


class ModelFiles:
    """Validated access to the files of one local model folder."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.root = folder_root(self.folder)

    def __repr__(self) -> str:
        return f"ModelFiles({str(self.folder)!r})"

    def _inside(self, name: str) -> Path:
        """The path of `name` (relative, '/'-separated) in the folder; refused if it could leave
        it."""
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or "\x00" in name:
            raise ConfigError(
                f"{self.folder}: the path {name!r} would leave the model folder; paths in a model "
                "folder's files must be relative and stay inside it"
            )
        return self.folder.joinpath(*pure.parts)

    def exists(self, name: str) -> bool:
        """Whether anything (even a broken symlink) is at `name`; such entries are then checked by
        `path`."""
        return os.path.lexists(self._inside(name))

    def path(self, name: str, limit: int | None = JSON_LIMIT) -> Path:
        """The checked path of a file that must exist: a regular file inside the folder's root,
        within `limit`."""
        path = self._inside(name)
        try:
            resolved = path.resolve(strict=True)
            info = os.stat(resolved)
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: file not found (the model folder is {self.root}); is it a model folder?"
            ) from None
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
            raise ConfigError(f"{path}: cannot be resolved ({e})") from None
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: is {_file_kind(info.st_mode)}, not a regular file")
        if not resolved.is_relative_to(self.root):
            raise ConfigError(
                f"{path}: is a link to {resolved}, outside the model folder {self.root}; berta-jax "
                "reads only files inside the model folder"
            )
        if limit is not None and info.st_size > limit:
            raise ConfigError(
                f"{path}: {info.st_size} bytes, over the {limit}-byte limit for this file; "
                "it is not a model configuration file"
            )
        return path

    def read_bytes(self, name: str, limit: int = JSON_LIMIT) -> bytes:
        path = self.path(name, limit)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        if len(data) > limit:  # grew since it was checked
            raise ConfigError(f"{path}: over the {limit}-byte limit for this file")
        return data

    def read_json(self, name: str, limit: int = JSON_LIMIT) -> Any:
        """Parse a JSON file of the folder; every failure is a ConfigError naming the file."""
        return parse_json(self.read_bytes(name, limit), str(self._inside(name)))


def weight_files(files: ModelFiles) -> list[str]:
    """The names of the weight files the loader reads (`convert.checkpoint.read_checkpoint`): the
    converted file, else the sharded index and its shards, else the single file (none: no
    weights)."""
    if files.exists(FLAX_WEIGHTS):
        return [FLAX_WEIGHTS]
    if files.exists(HF_INDEX):
        index = Fields(files.read_json(HF_INDEX), str(files.folder / HF_INDEX))
        return [HF_INDEX, *sorted(set(index.str_map("weight_map").values()))]
    return [HF_WEIGHTS] if files.exists(HF_WEIGHTS) else []


def parse_json(data: bytes, source: str) -> Any:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid JSON (nested too deeply)") from None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"
