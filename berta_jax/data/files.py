"""Input specs to input files: a file, a glob (`gs://b/corpus/*.parquet`) or a directory of shards
(`corpus.parquet/`, hidden and `_`-prefixed files ignored), each with its format (by extension) and
checked to be a file that can be read, and read again (no pipes, no devices).

`open_input` opens one for reading, local or in object storage, with errors that name it.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import BinaryIO

from berta_jax.errors import InputError
from berta_jax.storage.stores import canonical, is_url, store_for

FORMATS = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".csv", ".parquet")
_GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file: where it is and how to read it."""

    url: str  # a local path or a storage URL, as the OS / the store gives it
    format: str


def input_format(path: str) -> str:
    name = os.fspath(path).lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(fmt):
            return fmt
    raise InputError(f"{path}: unknown input format; use one of {', '.join(FORMATS)}")


def expand_inputs(specs: list[str], own=None) -> list[InputFile]:
    """Files, globs and directories of shards -> the input files, in order; each checked to be
    readable. Each spec is taken in its canonical form (`stores.canonical`: `file://` a local path,
    one scheme per store), so the files' URLs compare as the locations they are."""
    files: list[InputFile] = []
    for spec in specs:
        spec = canonical(spec)
        store = store_for(spec)
        if any(c in spec for c in _GLOB_CHARS) and not store.exists(spec):
            found = [
                p
                for p in store.glob(spec)
                if not _hidden(store.name(p)) and not (own is not None and own(p))
            ]
            if not found:
                raise InputError(f"{spec}: no file matches this pattern")
            files += [InputFile(p, input_format(p)) for p in found]
        elif _is_directory(store, spec):
            files += _directory_shards(store, spec)
        else:
            files.append(InputFile(spec, check_input(spec)))
    return files


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _is_directory(store, spec: str) -> bool:
    try:
        return store.info(spec).kind == "directory"
    except FileNotFoundError:
        return False


def _directory_shards(store, folder: str) -> list[InputFile]:
    names = [n for n in store.list(folder) if not _hidden(n) and not n.endswith(".crc")]
    shards = []
    for name in names:
        try:
            input_format(name)
        except InputError:
            raise InputError(
                f"{folder}: a directory input is read as a dataset of shards, but {name} is not an "
                f"input format ({', '.join(FORMATS)})"
            ) from None
        path = store.join(folder, name)
        shards.append(InputFile(path, input_format(name) if store.remote else check_input(path)))
    if not shards:
        raise InputError(f"{folder}: a directory with no input files in it")
    return shards


def check_input(path: str) -> str:
    """The format of an input that exists and can be read more than once, or an InputError naming
    it."""
    if is_url(path):
        store = store_for(path)
        if not store.exists(path):
            raise InputError(f"{path}: no such object")
        return input_format(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode) or stat.S_ISSOCK(info.st_mode):
        raise InputError(
            f"{path}: is a pipe or device, not a regular file; berta-jax reads each input again to "
            "resume and to verify, so save the stream to a file first"
        )
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory")
    return input_format(path)


def open_input(file: InputFile, block_size: int | None = None) -> BinaryIO:
    store = store_for(file.url)
    try:
        return store.open_read(file.url, block_size)
    except FileNotFoundError:
        raise InputError(f"{file.url}: no such file") from None
    except OSError as e:
        raise InputError(f"{file.url}: cannot be read ({e.strerror or e})") from None
