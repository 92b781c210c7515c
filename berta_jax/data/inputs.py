"""Stream texts out of corpus files, local or in object storage, with errors that name file and
line.

Formats (by extension): `.txt` (one text per line, split on '\\n' only), `.jsonl` (a text field and
an optional id field), `.csv` (a text column), `.parquet` (a text column, read by row group), and
gzip-compressed `.txt.gz` / `.jsonl.gz`. This module reads the line-based formats and hands each
file to its reader (`read_rows`); which files a run reads and how they are opened is `files`, what
a row is and the checks every row goes through is `rows`, Parquet's reader is `parquet_rows`. Their
public names are importable from here too.

Per-row cost is bounded: a line longer than `MAX_LINE_BYTES` is a row error, JSON nesting depth is
bounded by Python's parser (a row error, not a crash).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from typing import BinaryIO, Iterator

from berta_jax.data.files import (  # noqa: F401 (re-exported: callers import them from here)
    FORMATS,
    InputFile,
    check_input,
    expand_inputs,
    input_format,
    open_input,
)
from berta_jax.data.parquet_rows import parquet_columns, parquet_file, parquet_rows
from berta_jax.data.rows import IdPolicy, Row, bad_row, checked_row
from berta_jax.errors import InputError
from berta_jax.storage.stores import is_url

MAX_LINE_BYTES = 64 * 2**20


def _raw_lines(file: InputFile, raw: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line with its newline), or (number, None) for a line over MAX_LINE_BYTES
    (skipped over)."""
    compressed = file.format.endswith(".gz")
    stream = (
        io.BufferedReader(gzip.GzipFile(fileobj=raw))
        if compressed
        else io.BufferedReader(raw, 1 << 20)
    )
    number = 0
    try:
        while line := stream.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield number, None
                continue
            yield number, line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        where = f" (compressed byte {raw.tell()})" if compressed and hasattr(raw, "tell") else ""
        raise InputError(
            f"{file.url}: the {'compressed ' if compressed else ''}stream is damaged after line "
            f"{number}{where}: {e}"
        ) from None


def _lines(file: InputFile, raw: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the line ending), split on '\\n' only; None for an over-long
    line."""
    for number, line in _raw_lines(file, raw):
        yield number, None if line is None else line.rstrip(b"\n").removesuffix(b"\r")


def decode_line(source: str, number: int, raw: bytes | None, on_error: str) -> str | Row:
    if raw is None:
        return bad_row(source, number, f"line longer than {MAX_LINE_BYTES} bytes", on_error)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return bad_row(source, number, f"not valid UTF-8 at byte {e.start} of the line", on_error)


def read_rows(
    file: InputFile,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: str = "raise",
    ids: IdPolicy | None = None,
) -> Iterator[Row]:
    """Every row of one input file, in order, streamed."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    ids = ids or IdPolicy()
    if file.format == ".parquet":
        yield from parquet_rows(file, text_field, id_field, on_error, ids)
        return
    with open_input(file) as raw:
        if file.format == ".csv":
            yield from _csv_rows(file, raw, text_field, id_field, on_error, ids)
            return
        for number, line in _lines(file, raw):
            text = decode_line(file.url, number, line, on_error)
            if isinstance(text, Row) or file.format.startswith(".txt"):
                yield text if isinstance(text, Row) else Row(file.url, number, text)
            else:
                yield json_row(file.url, number, text, text_field, id_field, on_error, ids)


def _json_record(source: str, number: int, line: str, on_error: str) -> dict | Row:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return bad_row(source, number, f"not valid JSON ({e.msg} at column {e.colno})", on_error)
    except RecursionError:
        return bad_row(source, number, "not valid JSON (nested too deeply)", on_error)
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        return bad_row(source, number, f"not valid JSON here ({e})", on_error)
    if not isinstance(record, dict):
        return bad_row(source, number, "not a JSON object", on_error)
    return record


def json_row(
    source: str,
    number: int,
    line: str,
    field: str,
    id_field: str | None,
    on_error: str,
    ids: IdPolicy,
) -> Row:
    record = _json_record(source, number, line, on_error)
    if isinstance(record, Row):
        return record
    return checked_row(
        source,
        number,
        record.get(field),
        record.get(id_field) if id_field else None,
        field,
        on_error,
        ids,
        id_field,
    )


_CSV_FIELD_LIMIT = 2**31 - 1


def _csv_rows(
    file: InputFile, raw: BinaryIO, column: str, id_column: str | None, on_error: str, ids: IdPolicy
) -> Iterator[Row]:
    """The records of a CSV file; its ids are strings, under the run's one-kind rule (a jsonl id 1
    beside a csv id "1" is refused, as two jsonl ids would be)."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:  # the default 131072 would reject long texts
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # Bytes are decoded line by line with surrogateescape, so a bad byte is found at its record
    # (with its line) instead of failing a whole read buffer; quoted fields may still span lines.
    lines = (_csv_line(file.url, n, line) for n, line in _raw_lines(file, raw))
    # strict: a quote left open at the end of the file is an error, not a field that swallows the
    # rest of it
    reader = csv.DictReader(lines, strict=True)
    _csv_header(file.url, reader.fieldnames or [], column, id_column)
    # the first physical line of the next record, for errors that name it
    start = reader.line_num + 1
    try:
        for record in reader:
            number = start  # a record spanning lines is named by its first
            text, id_ = record.get(column), record.get(id_column) if id_column else None
            bad = [
                name for name, value in ((column, text), (id_column, id_)) if _undecodable(value)
            ]
            if bad:
                yield bad_row(
                    file.url,
                    number,
                    f"not valid UTF-8 in column {bad[0]!r}",
                    on_error,
                    None if id_column in bad else id_,
                )
            else:
                yield checked_row(file.url, number, text, id_, column, on_error, ids, id_column)
            start = reader.line_num + 1
    except csv.Error as e:
        # a stray carriage return in an unquoted field, a quote never closed, ...
        if "unexpected end of data" in str(e):
            raise InputError(
                f"{file.url}:{start}: a quoted field opened in the record starting on this line is "
                "never closed: the file ends inside it"
            ) from None
        raise InputError(f"{file.url}:{reader.line_num}: not valid CSV ({e})") from None


def _csv_line(source: str, number: int, line: bytes | None) -> str:
    if line is None:
        raise InputError(f"{source}:{number}: line longer than {MAX_LINE_BYTES} bytes")
    return line.decode("utf-8", "surrogateescape")


def _csv_header(source: str, fieldnames: list[str], column: str, id_column: str | None) -> None:
    if _undecodable(",".join(fieldnames)):
        raise InputError(f"{source}:1: not valid UTF-8 in the header")
    for name in (column, id_column):
        if name is not None and name not in fieldnames:
            raise InputError(f"{source}:1: no column {name!r} (columns: {', '.join(fieldnames)})")


def _undecodable(value) -> bool:
    """True for text that carries surrogateescape'd bytes, i.e. was not valid UTF-8."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_fields(file: InputFile, text_field: str, id_field: str | None) -> None:
    """Before any work: the text (and id) field must exist in the file's first record, its header or
    schema."""
    if file.format == ".parquet":
        parquet_columns(file.url, parquet_file(file).schema_arrow.names, text_field, id_field)
        return
    if file.format.startswith(".txt"):
        if id_field is not None:
            raise InputError(
                f"{file.url}: text files have no fields; --id-field needs jsonl, csv or parquet "
                "inputs"
            )
        return
    with open_input(file) as raw:
        if file.format == ".csv":
            header = next((line for _, line in _lines(file, raw)), b"") or b""
            names = next(csv.reader([header.decode("utf-8", "surrogateescape")]), [])
            _csv_header(file.url, [n.removeprefix("\ufeff") for n in names], text_field, id_field)
            return
        for number, line in _lines(file, raw):
            text = decode_line(file.url, number, line, "skip")
            record = text if isinstance(text, Row) else _json_record(file.url, number, text, "skip")
            if isinstance(record, dict):
                for name in (text_field, id_field):
                    if name is not None and name not in record:
                        raise InputError(
                            f"{file.url}:{number}: the first record has no field {name!r} (fields: "
                            f"{', '.join(map(str, record)) or 'none'}); check --text-field / "
                            "--id-field"
                        )
                return


def first_id_kind(files: list[InputFile], id_field: str | None) -> str | None:
    """The kind of the first id of the inputs ("string" or "integer"): every split is judged by
    it."""
    if id_field is None:
        return None
    for file in files:
        ids = IdPolicy()
        for _ in read_rows(file, id_field=id_field, text_field=id_field, on_error="skip", ids=ids):
            if ids.kind is not None:
                return ids.kind
    return None


def count_rows(file: InputFile) -> int | None:
    """Rows in a file when cheap to know (for a progress bar's ETA): newline count of local
    .txt/.jsonl, parquet metadata; None for compressed, csv and remote text files."""
    try:
        if file.format == ".parquet":
            return parquet_file(file).metadata.num_rows
        if file.format in (".txt", ".jsonl") and not is_url(file.url):
            return _count_lines(file.url)
    except (InputError, OSError):
        return None  # a missing or damaged file: no total; reading it reports the real error
    return None


def _count_lines(path: str) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
