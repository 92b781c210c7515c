"""Object storage through fsspec: one upload per object, conditional creates, replaces and deletes
on the store's own preconditions (see `stores` for the guarantees every store gives)."""

from __future__ import annotations

import contextlib
from typing import BinaryIO, Iterator
from urllib.parse import quote

from berta_jax.errors import StorageError
from berta_jax.storage.file_info import FileInfo

# what an object's metadata calls the version that every write changes, first found wins
_VERSION_KEYS = (
    "generation",
    "ETag",
    "etag",
    "md5Hash",
    "mtime",
    "updated",
    "LastModified",
    "created",
)
# how the backends word a failed precondition
_PRECONDITION_FAILED = (
    "412",
    "PreconditionFailed",
    "Precondition Failed",
    "conditionNotMet",
    "pre-conditions you specified did not hold",
)

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
        except Exception as e:
            # backends raise many types (HTTP, auth, ...): name the URL and the operation
            raise StorageError(f"{url}: cannot {what} ({type(e).__name__}: {e})") from e

    def exists(self, path: str) -> bool:
        return self._call("check", path, self.fs.exists, self._path(path))

    def info(self, path: str) -> FileInfo:
        raw = self._call("stat", path, self.fs.info, self._path(path), refresh=True)
        version = next((str(raw[k]) for k in _VERSION_KEYS if raw.get(k) is not None), "")
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
        """Read-ahead caching in 4 MiB blocks (gcsfs' default cache re-fetches a block per line when
        a file is read line by line); or, with `block_size`, no cache: the caller buffers reads of
        that size itself, so a reader of a byte range fetches at most one block past the range's
        end."""
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
        """One object upload, streamed; the object becomes visible only when the upload
        completes."""
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
        """Create-if-absent (the backend's generation/if-none-match precondition). The backends
        retry a request whose answer was lost; a retry of a create that did land fails its
        precondition, so an object that holds exactly `data` (records name their run, process and
        host) counts as created by this call."""
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
        """Write `data` only if the object is still at `version` (what `info` gave); False if it
        changed."""
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
        """One request with the store's own precondition (Cloud Storage generation, S3 ETag): False
        if it failed."""
        if self.protocol not in ("gs", "gcs", "s3", "s3a"):
            raise StorageError(
                f"{path}: the {self.protocol}:// store has no conditional writes, which the lock "
                "needs; write the output to local disk, gs:// or s3://"
            )
        bucket, key = self._path(path).split("/", 1)
        try:
            (on_gcs if self.protocol in ("gs", "gcs") else on_s3)(bucket, key)
        except Exception as e:
            # gcsfs reports a failed precondition as FileExistsError, s3fs as an OSError
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
    """An object's last-write time as the store reports it (Cloud Storage `updated`, S3
    `LastModified`)."""
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
    return any(s in text for s in _PRECONDITION_FAILED)
