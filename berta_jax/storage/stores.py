"""Files on local disk or in object storage, behind the few operations the batch job's crash safety needs.

A location is a local path or an fsspec URL (`gs://bucket/key`, `s3://bucket/key`, `memory://...`).
Every backend gives the same guarantees:

- `write` / `open_write`: the file appears whole or not at all (local disk: temporary file in the same
  folder, fsync, rename, folder fsync; object stores: one object upload, which becomes visible only
  when it completes);
- `create`: create-if-absent, atomic, with the content complete when it appears (local disk: a temporary
  file hard-linked into place; object stores: a conditional upload, `ifGenerationMatch=0` on Cloud Storage,
  `If-None-Match: *` on S3). This is what the job's lock and per-chunk claims are built on;
- nothing is renamed on an object store; every object the job writes is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import quote

from berta_jax.errors import StorageError

_REMOTE_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
TIMEOUT_VAR = "BERTA_JAX_STORAGE_TIMEOUT"  # seconds per storage request (default 300)


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations other than `file://`."""
    text = os.fspath(location)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


@dataclasses.dataclass(frozen=True)
class FileInfo:
    size: int
    kind: str  # "file", "directory" or what else the backend reports
    version: str  # what changes whenever the file is written: inode and ctime locally (utime cannot set a ctime),
    # generation (Cloud Storage) or ETag (S3) remotely
    modified: float = 0.0  # the last write, by the store's own clock (seconds since the epoch)


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
        """A file that appears at `path` only when the block ends without error (see the module docstring).
        `mode` caps the permissions (never wider than 0666 & ~umask)."""
        with _atomic_temp(path, mode) as (f, tmp):
            yield f
        os.replace(tmp, path)
        _fsync_folder(path)

    def write(self, path: str, data: bytes) -> None:
        with self.open_write(path) as f:
            f.write(data)

    def create(self, path: str, data: bytes) -> bool:
        """Create `path` holding `data` unless something is there already; True if this call created it."""
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
    """A temporary file next to `path`, fsynced and closed when the block ends; removed on any error."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, (0o666 if mode is None else mode & 0o666) & ~_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except (
        OSError
    ) as e:  # disk full and the like: name the file being written (write/fsync errors carry none)
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


class RemoteStore:
    """An fsspec filesystem (object storage); paths are full URLs."""

    remote = True

    def __init__(self, fs, protocol: str):
        self.fs, self.protocol = fs, protocol

    def _path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    def join(self, base: str, *names: str) -> str:
        return "/".join([base.rstrip("/"), *names])

    def parent(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[0]

    def name(self, path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    def _call(self, what: str, url: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError):
            raise
        except (
            Exception
        ) as e:  # backends raise many types (HTTP, auth, ...): name the URL and the operation
            raise StorageError(f"{url}: cannot {what} ({type(e).__name__}: {e})") from e

    def exists(self, path: str) -> bool:
        return self._call("check", path, self.fs.exists, self._path(path))

    def info(self, path: str) -> FileInfo:
        raw = self._call("stat", path, self.fs.info, self._path(path), refresh=True)
        version = next(
            (
                str(raw[k])
                for k in (
                    "generation",
                    "ETag",
                    "etag",
                    "md5Hash",
                    "mtime",
                    "updated",
                    "LastModified",
                    "created",
                )
                if raw.get(k) is not None
            ),
            "",
        )
        return FileInfo(
            int(raw.get("size") or 0), raw.get("type", "file"), version, _timestamp(raw)
        )

    def list(self, folder: str) -> list[str]:
        try:
            entries = self._call(
                "list", folder, self.fs.ls, self._path(folder), detail=False, refresh=True
            )
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if n)

    def glob(self, pattern: str) -> list[str]:
        found = self._call("list", pattern, self.fs.glob, self._path(pattern))
        return sorted(self.fs.unstrip_protocol(p) for p in found)

    def find(self, prefix: str) -> list[str]:
        """Every object under `prefix` (objects only, at any depth), as URLs."""
        found = self._call("list", prefix, self.fs.find, self._path(prefix))
        return sorted(self.fs.unstrip_protocol(p) for p in found)

    def open_read(self, path: str, block_size: int | None = None) -> BinaryIO:
        """Read-ahead caching in 4 MiB blocks (gcsfs' default cache re-fetches a block per line when a file is read
        line by line); or, with `block_size`, no cache: the caller buffers reads of that size itself, so a reader
        of a byte range fetches at most one block past the range's end."""
        cache = (
            {"cache_type": "none"}
            if block_size
            else {"cache_type": "readahead", "block_size": 1 << 22}
        )
        return self._call("open", path, self.fs.open, self._path(path), "rb", **cache)

    def read(self, path: str) -> bytes:
        return self._call("read", path, self.fs.cat_file, self._path(path))

    def makedirs(self, path: str) -> None:
        """Object stores have no folders: nothing to make."""

    @contextlib.contextmanager
    def open_write(self, path: str, mode: int | None = None) -> Iterator[BinaryIO]:
        """One object upload, streamed; the object becomes visible only when the upload completes."""
        f = self._call("open for writing", path, self.fs.open, self._path(path), "wb")
        try:
            yield f
        except BaseException:
            # fsspec's close() would publish the partial object: abandon the upload instead
            with contextlib.suppress(Exception):
                f.discard()
            f.closed = True
            raise
        self._call("upload", path, f.close)

    def write(self, path: str, data: bytes) -> None:
        self._call("upload", path, self.fs.pipe_file, self._path(path), data)

    def create(self, path: str, data: bytes) -> bool:
        """Create-if-absent (the backend's generation/if-none-match precondition). The backends retry a request
        whose answer was lost; a retry of a create that did land fails its precondition, so an object that holds
        exactly `data` (records name their run, process and host) counts as created by this call."""
        try:
            self._call("create", path, self.fs.pipe_file, self._path(path), data, mode="create")
        except FileExistsError:
            return self._holds(path, data)
        except StorageError as e:
            if _precondition_failed(e.__cause__):
                return self._holds(path, data)
            raise
        return True

    def replace_if(self, path: str, data: bytes, version: str) -> bool:
        """Write `data` only if the object is still at `version` (what `info` gave); False if it changed."""
        return self._conditional(
            "replace",
            path,
            lambda bucket, key: self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="media",
                name=key,
                ifGenerationMatch=version,
                data=data,
                json_out=True,
                headers={"Content-Type": "application/octet-stream"},
            ),
            lambda bucket, key: self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version
            ),
        )

    def delete_if(self, path: str, version: str) -> bool:
        """Delete the object only if it is still at `version`; False if it changed or is gone."""
        return self._conditional(
            "delete",
            path,
            lambda bucket, key: self.fs.call(
                "DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=version
            ),
            lambda bucket, key: self.fs.call_s3(
                "delete_object", Bucket=bucket, Key=key, IfMatch=version
            ),
        )

    def _conditional(self, what: str, path: str, on_gcs, on_s3) -> bool:
        """One request with the store's own precondition (Cloud Storage generation, S3 ETag): False if it failed."""
        if self.protocol not in ("gs", "gcs", "s3", "s3a"):
            raise StorageError(
                f"{path}: the {self.protocol}:// store has no conditional writes, which the lock "
                "needs; write the output to local disk, gs:// or s3://"
            )
        bucket, key = self._path(path).split("/", 1)
        try:
            (on_gcs if self.protocol in ("gs", "gcs") else on_s3)(bucket, key)
        except (
            Exception
        ) as e:  # gcsfs reports a failed precondition as FileExistsError, s3fs as an OSError
            if _precondition_failed(e) or isinstance(e, (FileNotFoundError, FileExistsError)):
                return False
            raise StorageError(f"{path}: cannot {what} ({type(e).__name__}: {e})") from e
        self.fs.invalidate_cache(self._path(path))
        return True

    def _holds(self, path: str, data: bytes) -> bool:
        try:
            return self.read(path) == data
        except FileNotFoundError:
            return False

    def delete(self, path: str) -> None:
        try:
            self._call("delete", path, self.fs.rm_file, self._path(path))
        except FileNotFoundError:
            pass

    def remove_empty_folder(self, path: str) -> bool:
        return True


def _timestamp(raw: dict) -> float:
    """An object's last-write time as the store reports it (Cloud Storage `updated`, S3 `LastModified`)."""
    import datetime

    value = next(
        (raw[k] for k in ("updated", "LastModified", "mtime") if raw.get(k) is not None), None
    )
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return float(value) if isinstance(value, (int, float)) else 0.0


def _precondition_failed(error: BaseException | None) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(
        s in text
        for s in (
            "412",
            "PreconditionFailed",
            "Precondition Failed",
            "conditionNotMet",
            "pre-conditions you specified did not hold",
        )
    )


_LOCAL = LocalStore()


def store_for(location: str | os.PathLike) -> LocalStore | RemoteStore:
    """The store that holds `location`, importing the fsspec backend for its scheme."""
    text = os.fspath(location)
    if not is_url(text):
        return _LOCAL
    import fsspec

    protocol = text.split("://", 1)[0]
    try:
        fs = fsspec.filesystem(protocol, **_options(protocol))
    except ImportError as e:
        extra = _REMOTE_EXTRAS.get(protocol)
        how = (
            f"pip install 'berta-jax[{extra}]'"
            if extra
            else f"install the fsspec package for {protocol}://"
        )
        raise StorageError(
            f"{text}: the {protocol}:// scheme needs a package that is not installed ({e}); {how}"
        ) from None
    except ValueError as e:
        raise StorageError(f"{text}: unknown storage scheme {protocol!r} ({e})") from None
    return RemoteStore(fs, protocol)


def _options(protocol: str) -> dict:
    """Backend options. Listings are never cached: other processes write the same prefixes (locks, records).
    Credentials and endpoints are the backends' own (gcsfs: application default credentials,
    STORAGE_EMULATOR_HOST; s3fs: the AWS variables and AWS_ENDPOINT_URL; any option through fsspec's
    FSSPEC_<PROTOCOL>_<OPTION> configuration)."""
    options: dict = {"use_listings_cache": False}
    timeout = float(
        os.environ.get(TIMEOUT_VAR, 300)
    )  # a request that hangs is an error, not a stuck job
    if protocol in ("gs", "gcs"):
        options["requests_timeout"] = timeout
    elif protocol in ("s3", "s3a"):
        options["config_kwargs"] = {"connect_timeout": min(timeout, 60), "read_timeout": timeout}
    return options


def copy_to_local(store, url: str, target: Path, limit: int | None = None) -> None:
    """Download one object to a local file, atomically."""
    with store.open_read(url) as source, _LOCAL.open_write(str(target)) as out:
        copied = 0
        while block := source.read(1 << 22):
            copied += len(block)
            if limit is not None and copied > limit:
                raise StorageError(f"{url}: over the {limit}-byte limit for this file")
            out.write(block)


def copy_file(src: str, dst: str) -> None:
    """Copy a local file atomically, never with wider permissions than the source."""
    mode = os.stat(src).st_mode & 0o666
    with open(src, "rb") as source, _LOCAL.open_write(dst, mode=mode) as target:
        shutil.copyfileobj(source, target, 1 << 20)
