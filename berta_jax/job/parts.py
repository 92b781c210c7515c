"""One part per split: the embedded rows of one split, written whole, then its record.

Names come from the split's index, never from what is on disk: `part-NNNNN.parquet` (at least five
digits, more when there are more splits) in the dataset folder, or in a single-file output's work
folder; the record `NNNNN.json` in the work folder. A part counts only when its record parses,
carries this job's fingerprint, names its split's own file, holds the split's rows (count and first
row), and the file still has the size and version recorded (the version changes with every write:
inode and ctime locally, generation or ETag in a bucket). So checking a part reads metadata only;
its content was checked once, by its writer reading it back before writing the record.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

from berta_jax.errors import ConfigError, JobError
from berta_jax.storage.json_fields import Fields

PART = re.compile(r"part-(\d{5,})\.parquet\Z")
RECORD = re.compile(r"(\d{5,})\.json\Z")


def _width(splits: int) -> int:
    return max(5, len(str(max(splits - 1, 0))))


def part_name(split: int, splits: int) -> str:
    return f"part-{split:0{_width(splits)}d}.parquet"


def record_name(split: int, splits: int) -> str:
    return f"{split:0{_width(splits)}d}.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Part:
    """The record of one committed split."""

    split: int
    name: str
    first_row: int
    rows: int
    size: int
    version: str
    sha256: str
    input_sha256: str  # of the split's rows as read (file, line, text, id, error)
    fingerprint: str  # the job's (see plan.Plan.digest)
    id_kind: str | None  # "string", "integer", or None when the split has no id
    tokens: int
    skipped: tuple  # ([offset, line, id, reason], ...)
    truncated: tuple  # ([offset, line, id], ...)

    def to_json(self) -> bytes:
        record = {
            **dataclasses.asdict(self),
            "skipped": list(self.skipped),
            "truncated": list(self.truncated),
        }
        return json.dumps(record, sort_keys=True, ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Part:
        try:
            f = Fields(json.loads(data.decode("utf-8")), source)
            offsets = lambda v: (  # noqa: E731
                isinstance(v, list) and len(v) >= 3 and type(v[0]) is int
            )
            return cls(
                f.int("split", minimum=0),
                f.str("name"),
                f.int("first_row", minimum=0),
                f.int("rows", minimum=0),
                f.int("size", minimum=0),
                f.str("version"),
                f.str("sha256"),
                f.str("input_sha256"),
                f.str("fingerprint"),
                f.str("id_kind", None, choices=("string", "integer")),
                f.int("tokens", minimum=0),
                tuple(map(tuple, f.list("skipped", item=offsets, what="rows"))),
                tuple(map(tuple, f.list("truncated", item=offsets, what="rows"))),
            )
        except (UnicodeDecodeError, ValueError, RecursionError, ConfigError) as e:
            raise JobError(f"{source}: not a berta-jax part record ({e})") from None

    def problem(
        self, split: int, splits: int, fingerprint: str, first_row: int | None, rows: int | None
    ) -> str | None:
        """Why this record cannot stand for `split` of this job (None when it can)."""
        offsets = [r[0] for r in self.skipped + self.truncated]
        if self.fingerprint != fingerprint:
            return "it was written by a run with other inputs, model, prompt or options"
        if self.split != split or self.name != part_name(split, splits):
            return (
                f"it names split {self.split} / file {self.name!r}, not split {split} / "
                f"{part_name(split, splits)}"
            )
        if (rows is not None and self.rows != rows) or (
            first_row is not None and self.first_row != first_row
        ):
            return f"it holds rows {self.first_row}+{self.rows}, the split rows {first_row}+{rows}"
        if any(not 0 <= o < self.rows for o in offsets) or len(
            set(r[0] for r in self.skipped)
        ) < len(self.skipped):
            return "it lists rows outside the split, or one row twice"
        return None


class Parts:
    """The parts and records of one job's output (see the module)."""

    def __init__(self, store, records: str, data: str, splits: int):
        self.store, self.records, self.data, self.splits = store, records, data, splits

    def data_path(self, split: int) -> str:
        return self.store.join(self.data, part_name(split, self.splits))

    def record_path(self, split: int) -> str:
        return self.store.join(self.records, record_name(split, self.splits))

    def commit(self, part: Part, data: bytes) -> Part:
        """Write the part, read it back, then write its record: the part counts from the record's
        arrival. A split with no rows (a long line can leave a byte range without a line start) has
        a record and no file."""
        if part.rows == 0:
            self.store.write(self.record_path(part.split), part.to_json())
            return part
        path = self.data_path(part.split)
        self.store.write(path, data)
        if sha256(self.store.read(path)) != part.sha256:
            raise JobError(
                f"{path}: reads back other bytes than were written; check the storage, then "
                "--resume"
            )
        part = dataclasses.replace(part, version=self.store.info(path).version)
        self.store.write(self.record_path(part.split), part.to_json())
        return part

    def read(self, split: int) -> Part | None:
        path = self.record_path(split)
        try:
            return Part.from_json(self.store.read(path), path)
        except FileNotFoundError:
            return None

    def recorded(self) -> list[int]:
        """The splits with a record file (named as this job names them; other names are not its
        records)."""
        found = (RECORD.match(n) for n in self.store.list(self.records))
        return sorted(
            int(m.group(1))
            for m in found
            if m
            and m.group(0) == record_name(int(m.group(1)), self.splits)
            and int(m.group(1)) < self.splits
        )

    def check(self, part: Part) -> str | None:
        """Why the part's file does not match its record (None when it does), from metadata and the
        Parquet footer only (the record's row count must be the file's)."""
        import pyarrow.parquet as pq

        if part.rows == 0:
            return None
        path = self.data_path(part.split)
        try:
            info = self.store.info(path)
            if (info.size, info.version) != (part.size, part.version):
                return f"{part.name} has changed since it was committed"
            with self.store.open_read(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        except FileNotFoundError:
            return f"{part.name} is missing"
        except Exception as e:  # pyarrow raises several types for a damaged file
            return f"{part.name} is not a readable part ({type(e).__name__})"
        return (
            None
            if rows == part.rows
            else f"{part.name} holds {rows} rows, its record says {part.rows}"
        )
