"""Splits of a corpus taken from its own structure, as Hadoop's and Beam's file sources take them.

A split is a piece of one input file that a worker can read without reading any other: a byte range
of an uncompressed `.txt` / `.jsonl` file (a line belongs to the split holding its first byte, so a
split starts at the first line start at or after its offset and reads its last line to the end,
however far past its end that is), one Parquet row group, or a whole file for compressed and CSV
files (a gzip stream cannot be entered in the middle; a quoted CSV field may hold newlines).
Planning reads metadata only: sizes, Parquet footers.

Rows are numbered over the whole corpus in input order. A split knows its row count from metadata
(Parquet) or by counting (`count_rows`: newlines in its byte range, or every record of a whole
file); `read_split` then yields its rows with their global numbers once it is told how many rows
come before it.
"""

from __future__ import annotations

import dataclasses
import io
from typing import BinaryIO, Iterator

from berta_jax.data import inputs
from berta_jax.data.files import InputFile, open_input
from berta_jax.data.inputs import decode_line, json_row, read_rows
from berta_jax.data.parquet_rows import parquet_columns, parquet_file
from berta_jax.data.rows import IdPolicy, Row, checked_row
from berta_jax.errors import InputError
from berta_jax.storage.stores import store_for

DEFAULT_SPLIT_BYTES = 64 * 2**20
_BYTE_SPLIT_FORMATS = (".txt", ".jsonl")
# what a byte range's reader fetches at a time: it reads at most this past its end
RANGE_BLOCK = 256 * 2**10


@dataclasses.dataclass(frozen=True)
class Split:
    """One readable piece of one input file.

    `kind` is "bytes" (`start`/`end` are byte offsets), "row_group" (`start` is the group's index)
    or "file". `rows` is known for row groups from the footer, None otherwise (see `count_rows`).
    `first_line` is the 1-based line (or row) of the file that the split's first row has, when known
    from the plan.
    """

    file: InputFile
    index: int
    kind: str
    start: int = 0
    end: int = 0
    rows: int | None = None
    first_line: int | None = 1

    def __str__(self) -> str:
        where = {
            "bytes": f"bytes {self.start}-{self.end}",
            "row_group": f"row group {self.start}",
        }.get(self.kind)
        return f"{self.file.url}" + (f" ({where})" if where else "")


def plan_splits(files: list[InputFile], *, split_bytes: int = DEFAULT_SPLIT_BYTES) -> list[Split]:
    """The splits of `files`, in input order, from their sizes and Parquet footers only."""
    if split_bytes < 1:
        raise ValueError(f"split_bytes must be at least 1, got {split_bytes}")
    splits: list[Split] = []
    for file in files:
        for split in _file_splits(file, split_bytes):
            splits.append(dataclasses.replace(split, index=len(splits)))
    return splits


def _file_splits(file: InputFile, split_bytes: int) -> list[Split]:
    if file.format == ".parquet":
        meta = parquet_file(file).metadata
        splits, line = [], 1
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            splits.append(Split(file, 0, "row_group", group, group + 1, rows, line))
            line += rows
        return splits
    if file.format not in _BYTE_SPLIT_FORMATS:
        return [Split(file, 0, "file")]
    size = store_for(file.url).info(file.url).size
    starts = range(0, max(size, 1), split_bytes)
    return [
        Split(file, 0, "bytes", s, min(s + split_bytes, size), first_line=1 if s == 0 else None)
        for s in starts
    ]


def count_rows(split: Split, *, text_field: str = "text", id_field: str | None = None) -> int:
    """Rows of `split`: every record counts, good or bad, as the job numbers rows (the fields matter
    only for a whole CSV file, whose header must name them)."""
    if split.rows is not None:
        return split.rows
    if split.kind == "bytes":
        return sum(1 for _ in _range_lines(split))
    return sum(
        1 for _ in read_rows(split.file, text_field=text_field, id_field=id_field, on_error="skip")
    )


def read_split(
    split: Split,
    *,
    first_line: int,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: str = "raise",
    ids: IdPolicy | None = None,
) -> Iterator[Row]:
    """The rows of `split` in order; `first_line` is the 1-based line (row) in its file of the
    split's first row; `ids` holds the kind of id the split's rows have."""
    ids = ids if ids is not None else IdPolicy()
    if split.kind == "file":
        yield from read_rows(
            split.file, text_field=text_field, id_field=id_field, on_error=on_error, ids=ids
        )
    elif split.kind == "row_group":
        yield from _row_group_rows(split, first_line, text_field, id_field, on_error, ids)
    else:
        source, txt = split.file.url, split.file.format == ".txt"
        for number, line in enumerate(_range_lines(split), start=first_line):
            text = decode_line(source, number, line, on_error)
            if isinstance(text, Row) or txt:
                yield (
                    text
                    if isinstance(text, Row)
                    else checked_row(source, number, text, None, "text", on_error, ids)
                )
            else:
                yield json_row(source, number, text, text_field, id_field, on_error, ids)


def _row_group_rows(
    split: Split, first_line: int, column: str, id_column: str | None, on_error: str, ids: IdPolicy
) -> Iterator[Row]:
    parquet = parquet_file(split.file)
    parquet_columns(split.file.url, parquet.schema_arrow.names, column, id_column)
    try:
        table = parquet.read_row_group(
            split.start, columns=[column] + ([id_column] if id_column else [])
        )
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{split}: cannot be read ({e})") from None
    texts = table.column(column).to_pylist()
    values = table.column(id_column).to_pylist() if id_column else [None] * len(texts)
    for number, (text, id_) in enumerate(zip(texts, values), start=first_line):
        yield checked_row(split.file.url, number, text, id_, column, on_error, ids, id_column)


def _range_lines(split: Split) -> Iterator[bytes | None]:
    """The lines starting in [start, end) without their line ending; None for a line over
    MAX_LINE_BYTES."""
    with open_input(split.file, RANGE_BLOCK) as raw:
        position = max(split.start - 1, 0)
        raw.seek(position)
        stream = (
            io.BufferedReader(raw, RANGE_BLOCK) if not isinstance(raw, io.BufferedIOBase) else raw
        )
        if split.start > 0:  # the line holding byte start-1 belongs to an earlier split
            position += _skip_line(stream)
        while position < split.end:
            line = stream.readline(inputs.MAX_LINE_BYTES + 1)
            if not line:
                return
            position += len(line)
            if len(line) > inputs.MAX_LINE_BYTES and not line.endswith(b"\n"):
                position += _skip_line(stream)
                yield None
                continue
            if position == len(line) and split.start == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
            yield line.rstrip(b"\n").removesuffix(b"\r")


def _skip_line(stream: BinaryIO) -> int:
    """Read past the next newline; the bytes read."""
    skipped = 0
    while chunk := stream.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped
