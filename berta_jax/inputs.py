"""Stream texts out of corpus files, a bounded chunk at a time, with errors that name file and line.

Formats (by extension): `.txt` (one text per line, split on '\\n' only), `.jsonl` (a text field and an
optional id field), `.csv` (a text column), `.parquet` (a text column, read by row group), and
gzip-compressed `.txt.gz` / `.jsonl.gz`. Every row yields a `Row`; a bad row either raises
`InputError` (file, line, problem) or, with `on_error="skip"`, yields a `Row` whose `error` says why,
so the caller keeps row numbering and can report skips.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from pathlib import Path
from typing import Iterator

from berta_jax.errors import BertaJaxError

FORMATS = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".csv", ".parquet")


class InputError(BertaJaxError, ValueError):
    """A corpus row that cannot be read: names the file, the line (or row) and the problem."""


@dataclasses.dataclass(frozen=True)
class Row:
    source: str
    line: int  # 1-based line (txt/jsonl/csv) or row (parquet) in its file
    text: str | None
    id: str | None = None
    error: str | None = None  # set only for skipped rows


def input_format(path: str | Path) -> str:
    name = str(path).lower()
    for fmt in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(fmt):
            return fmt
    raise InputError(f"{path}: unknown input format; use one of {', '.join(FORMATS)}")


def check_input(path: Path) -> str:
    """The format of an input file that exists, or an InputError naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return input_format(path)


def _problem(path: Path, line: int, message: str, on_error: str, id_: str | None = None) -> Row:
    if on_error == "skip":
        return Row(str(path), line, None, id_, message)
    raise InputError(f"{path}:{line}: {message}")


def _lines(path: Path, compressed: bool) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if compressed else open
    with opener(path, "rb") as f:
        buffered = io.BufferedReader(f) if compressed else f
        for number, raw in enumerate(buffered, start=1):  # binary readline splits on b"\n" only
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, raw.rstrip(b"\n").removesuffix(b"\r")


def _decode(path: Path, number: int, raw: bytes, on_error: str) -> str | Row:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _problem(path, number, f"not valid UTF-8 at byte {e.start} of the line", on_error)


def read_rows(
    path: str | Path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: str = "raise",
) -> Iterator[Row]:
    """Every row of one input file, in order, streamed."""
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    fmt = check_input(path)
    if fmt in (".txt", ".txt.gz"):
        for number, raw in _lines(path, fmt.endswith(".gz")):
            text = _decode(path, number, raw, on_error)
            yield text if isinstance(text, Row) else Row(str(path), number, text)
    elif fmt in (".jsonl", ".jsonl.gz"):
        for number, raw in _lines(path, fmt.endswith(".gz")):
            decoded = _decode(path, number, raw, on_error)
            if isinstance(decoded, Row):
                yield decoded
                continue
            yield _json_row(path, number, decoded, text_field, id_field, on_error)
    elif fmt == ".csv":
        yield from _csv_rows(path, text_field, id_field, on_error)
    else:
        yield from _parquet_rows(path, text_field, id_field, on_error)


def _checked(path: Path, number: int, text, id_, field: str, on_error: str) -> Row:
    if text is None:
        return _problem(path, number, f"{field!r} is missing or null", on_error, id_)
    if not isinstance(text, str):
        return _problem(path, number, f"{field!r} is {type(text).__name__}, not a string", on_error, id_)
    return Row(str(path), number, text, id_)


def _json_row(path: Path, number: int, line: str, field: str, id_field: str | None, on_error: str) -> Row:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return _problem(path, number, f"not valid JSON ({e.msg} at column {e.colno})", on_error)
    if not isinstance(record, dict):
        return _problem(path, number, "not a JSON object", on_error)
    id_ = None if id_field is None or record.get(id_field) is None else str(record[id_field])
    return _checked(path, number, record.get(field), id_, field, on_error)


_CSV_FIELD_LIMIT = 2**31 - 1


def _csv_rows(path: Path, column: str, id_column: str | None, on_error: str) -> Iterator[Row]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:  # the default 131072 characters would reject long texts
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # Bytes are decoded line by line with surrogateescape, so a bad byte is found at its record (with its
    # line) instead of failing a whole read buffer; quoted fields may still span lines.
    with path.open("rb") as f:
        lines = (raw.removeprefix(b"\xef\xbb\xbf" if n == 0 else b"").decode("utf-8", "surrogateescape")
                 for n, raw in enumerate(f))
        reader = csv.DictReader(lines)
        fieldnames = reader.fieldnames or []
        if _undecodable(",".join(fieldnames)):
            raise InputError(f"{path}:1: not valid UTF-8 in the header")
        if column not in fieldnames:
            raise InputError(f"{path}:1: no column {column!r} (columns: {', '.join(fieldnames)})")
        try:
            for record in reader:
                number = reader.line_num
                text, id_ = record.get(column), record.get(id_column) if id_column else None
                bad = [name for name, value in ((column, text), (id_column, id_)) if _undecodable(value)]
                if bad:
                    yield _problem(path, number, f"not valid UTF-8 in column {bad[0]!r}", on_error,
                                   None if id_column in bad else id_)
                else:
                    yield _checked(path, number, text, id_, column, on_error)
        except csv.Error as e:  # e.g. a stray carriage return in an unquoted field
            raise InputError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _undecodable(value) -> bool:
    """True for text that carries surrogateescape'd bytes, i.e. was not valid UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_rows(path: Path, column: str, id_column: str | None, on_error: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable parquet file ({e})") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    columns = [column] + ([id_column] if id_column else [])
    number = 0
    for group in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(group, columns=columns)
        except Exception as e:
            raise InputError(f"{path}: row group {group} cannot be read ({e})") from None
        ids = table.column(id_column).to_pylist() if id_column else [None] * table.num_rows
        for text, id_ in zip(table.column(column).to_pylist(), ids):
            number += 1
            yield _checked(path, number, text, None if id_ is None else str(id_), column, on_error)


def count_rows(path: str | Path) -> int | None:
    """Rows in a file when cheap to know (for a progress bar's ETA): newline count of .txt/.jsonl, parquet
    metadata; None for compressed and csv files."""
    path = Path(path)
    try:
        return _count_rows(path, input_format(path))
    except Exception:  # a missing or damaged file: no total; reading it reports the real error
        return None


def _count_rows(path: Path, fmt: str) -> int | None:
    if fmt in (".txt", ".jsonl"):
        count, last = 0, b"\n"
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
                last = block[-1:]
        return count + (last != b"\n")
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None
