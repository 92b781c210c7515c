"""Files on local disk or in object storage, behind the few operations the batch job's crash safety
needs.

A location is a local path or an fsspec URL (`gs://bucket/key`, `s3://bucket/key`, `memory://...`).
Every backend gives the same guarantees:

- `write` / `open_write`: the file appears whole or not at all (local disk: temporary file in the
  same folder, fsync, rename, folder fsync; object stores: one object upload, which becomes visible
  only when it completes);
- `create`: create-if-absent, atomic, with the content complete when it appears (local disk: a
  temporary file hard-linked into place; object stores: a conditional upload, `ifGenerationMatch=0`
  on Cloud Storage, `If-None-Match: *` on S3). This is what the job's lock and per-chunk claims are
  built on;
- nothing is renamed on an object store; every object the job writes is written once.

`LocalStore` (`local`) and `RemoteStore` (`remote`) implement them; `store_for` gives the one that
holds a location.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from berta_jax.errors import StorageError
from berta_jax.storage.file_info import FileInfo  # noqa: F401 (re-exported)
from berta_jax.storage.local import LocalStore
from berta_jax.storage.remote import RemoteStore

_REMOTE_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}
TIMEOUT_VAR = "BERTA_JAX_STORAGE_TIMEOUT"  # seconds per storage request (default 300)


def is_url(location: str | os.PathLike) -> bool:
    """True for `scheme://...` locations other than `file://`."""
    text = os.fspath(location)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def canonical(location: str | os.PathLike) -> str:
    """The one spelling of a location, fixed where it enters: a `file://` URL is its local path
    (fsspec's reading of it), and a storage URL takes its filesystem's first protocol (`s3a://` is
    `s3://`, `gcs://` is `gs://`), as fsspec's registry knows them; bucket and key are kept as
    given (a trailing `/` too: it asks for a dataset). A local path is returned as given."""
    text = os.fspath(location)
    if not isinstance(text, str) or "://" not in text:
        return text
    scheme, rest = text.split("://", 1)
    cls = _filesystem_class(scheme.lower(), text)
    protocols = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
    if "file" in protocols:
        path = cls._strip_protocol(text)
        return path + "/" if text.endswith("/") and not path.endswith("/") else path
    return f"{protocols[0]}://{rest}"


def _filesystem_class(protocol: str, text: str):
    """fsspec's class for `protocol`, or a StorageError saying what to install."""
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
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


_LOCAL = LocalStore()


def store_for(location: str | os.PathLike) -> LocalStore | RemoteStore:
    """The store that holds `location`, importing the fsspec backend for its scheme."""
    text = canonical(location)
    if not is_url(text):
        return _LOCAL
    protocol = text.split("://", 1)[0]
    _filesystem_class(protocol, text)  # an uninstalled or unknown scheme is named
    import fsspec

    # fsspec.filesystem applies fsspec's configuration (FSSPEC_<PROTOCOL>_<OPTION>)
    return RemoteStore(fsspec.filesystem(protocol, **_options(protocol)), protocol)


def _options(protocol: str) -> dict:
    """Backend options. Listings are never cached: other processes write the same prefixes (locks,
    records). Credentials and endpoints are the backends' own (gcsfs: application default
    credentials, STORAGE_EMULATOR_HOST; s3fs: the AWS variables and AWS_ENDPOINT_URL; any option
    through fsspec's FSSPEC_<PROTOCOL>_<OPTION> configuration)."""
    options: dict = {"use_listings_cache": False}
    # a request that hangs is an error, not a stuck job
    timeout = float(os.environ.get(TIMEOUT_VAR, 300))
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
