"""What a store says about one file: its size, its kind and the version that every write changes."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FileInfo:
    size: int
    kind: str  # "file", "directory" or what else the backend reports
    # what changes whenever the file is written: inode and ctime locally (utime cannot set a
    # ctime), generation (Cloud Storage) or ETag (S3) remotely
    version: str
    modified: float = 0.0  # the last write, by the store's own clock (seconds since the epoch)
