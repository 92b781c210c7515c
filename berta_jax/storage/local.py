"""Local disk: atomic replacement through a temporary file, fsync and rename, and atomic
create-if-absent through a hard link (see `stores` for the guarantees every store gives)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from berta_jax.storage.file_info import FileInfo


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class LocalStore:
    """Local paths, with atomic replacement through rename and atomic create through a hard link."""

    remote = False

    def join(self, base: str, *names: str) -> str:
        return os.path.join(base, *names)

    def parent(self, path: str) -> str:
        return os.path.dirname(path.rstrip("/")) or "."

    def name(self, path: str) -> str:
        return os.path.basename(path.rstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def info(self, path: str) -> FileInfo:
        stat = os.stat(path)
        kind = "directory" if os.path.isdir(path) else "file" if os.path.isfile(path) else "other"
        return FileInfo(stat.st_size, kind, f"{stat.st_ino}:{stat.st_ctime_ns}", stat.st_mtime)

    def list(self, folder: str) -> list[str]:
        """Names in a folder (empty if it does not exist)."""
        try:
            return sorted(os.listdir(folder))
        except FileNotFoundError:
            return []

    def glob(self, pattern: str) -> list[str]:
        import glob

        return sorted(glob.glob(pattern))

    def open_read(self, path: str, block_size: int | None = None) -> BinaryIO:
        return open(path, "rb")

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @contextlib.contextmanager
    def open_write(self, path: str, mode: int | None = None) -> Iterator[BinaryIO]:
        """A file that appears at `path` only when the block ends without error (see the `stores`
        module docstring). `mode` caps the permissions (never wider than 0666 & ~umask)."""
        with _atomic_temp(path, mode) as (f, tmp):
            yield f
        os.replace(tmp, path)
        _fsync_folder(path)

    def write(self, path: str, data: bytes) -> None:
        with self.open_write(path) as f:
            f.write(data)

    def create(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` unless something is there already; True if this call created
        it."""
        with _atomic_temp(path, None) as (f, tmp):
            f.write(data)
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        finally:
            os.unlink(tmp)
        if created:
            _fsync_folder(path)
        return created

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def remove_empty_folder(self, path: str) -> bool:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False


@contextlib.contextmanager
def _atomic_temp(path: str, mode: int | None) -> Iterator[tuple[BinaryIO, str]]:
    """A temporary file next to `path`, fsynced and closed when the block ends; removed on any
    error."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, (0o666 if mode is None else mode & 0o666) & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # disk full and the like: name the file being written (write/fsync errors carry none)
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_folder(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
