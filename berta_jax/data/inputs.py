"""Stream texts out of corpus files, local or in object storage, with errors that name file and line.

Formats (by extension): `.txt` (one text per line, split on '\\n' only), `.jsonl` (a text field and an
optional id field), `.csv` (a text column), `.parquet` (a text column, read by row group), and
gzip-compressed `.txt.gz` / `.jsonl.gz`. An input may be a file, a glob (`gs://b/corpus/*.parquet`) or a
directory of shards (`corpus.parquet/`, hidden and `_`-prefixed files ignored).

Every row yields a `Row`; a bad row either raises `InputError` (file, line, problem) or, with
`on_error="skip"`, yields a `Row` whose `error` says why, so the caller keeps row numbering and can report
skips. Per-row cost is bounded: a line longer than `MAX_LINE_BYTES` is a row error, JSON nesting depth is
bounded by Python's parser (a row error, not a crash).

Ids: strings, or integers written in decimal; one kind per run (mixing `1` and `"1"` could collide), any
other JSON type is a row error.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import stat
import zlib
from typing import BinaryIO, Iterator

from berta_jax.errors import InputError
from berta_jax.storage.stores import is_url, store_for
from berta_jax.text.texts import surrogate_problem, text_problem

FORMATS = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".csv", ".parquet")
MAX_LINE_BYTES = 64 * 2**20
_GLOB_CHARS = "*?["


@dataclasses.dataclass(frozen=True)
class Row:
    source: str
    line: int  # 1-based line (txt/jsonl/csv) or row (parquet) in its file
    text: str | None
    id: str | None = None
    error: str | None = None  # set only for skipped rows


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


def expand_inputs(specs: list[str]) -> list[InputFile]:
    """Files, globs and directories of shards -> the input files, in order; each checked to be readable."""
    files: list[InputFile] = []
    for spec in specs:
        spec = os.fspath(spec)
        store = store_for(spec)
        if any(c in spec for c in _GLOB_CHARS) and not store.exists(spec):
            found = [p for p in store.glob(spec) if not _hidden(store.name(p))]
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
    """The format of an input that exists and can be read more than once, or an InputError naming it."""
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


class IdPolicy:
    """Ids are strings or integers (written in decimal), one kind per run."""

    def __init__(self, kind: str | None = None):
        self.kind: str | None = (
            kind  # "string" or "integer", once known (the run's first id decides)
        )

    def __call__(self, value) -> tuple[str | None, str | None]:
        """(id as text, error) for a raw id value."""
        if value is None:
            return None, None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None, f"id is {type(value).__name__}; ids must be strings or integers"
        if isinstance(value, str) and (problem := surrogate_problem(value)):
            return None, f"the id {problem}"
        kind = "string" if isinstance(value, str) else "integer"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            return None, (
                f"id is a {kind} but earlier ids are {self.kind}s; ids of one run must be of one kind "
                '(1 and "1" would collide)'
            )
        return str(value), None


def _problem(source: str, line: int, message: str, on_error: str, id_: str | None = None) -> Row:
    if on_error == "skip":
        return Row(source, line, None, id_, message)
    raise InputError(f"{source}:{line}: {message}")


def open_input(file: InputFile, block_size: int | None = None) -> BinaryIO:
    store = store_for(file.url)
    try:
        return store.open_read(file.url, block_size)
    except FileNotFoundError:
        raise InputError(f"{file.url}: no such file") from None
    except OSError as e:
        raise InputError(f"{file.url}: cannot be read ({e.strerror or e})") from None


def _raw_lines(file: InputFile, raw: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line with its newline), or (number, None) for a line over MAX_LINE_BYTES (skipped over)."""
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
    """(line number, bytes without the line ending), split on '\\n' only; None for an over-long line."""
    for number, line in _raw_lines(file, raw):
        yield number, None if line is None else line.rstrip(b"\n").removesuffix(b"\r")


def decode_line(source: str, number: int, raw: bytes | None, on_error: str) -> str | Row:
    if raw is None:
        return _problem(source, number, f"line longer than {MAX_LINE_BYTES} bytes", on_error)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _problem(source, number, f"not valid UTF-8 at byte {e.start} of the line", on_error)


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
        yield from _parquet_rows(file, text_field, id_field, on_error, ids)
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


def checked_row(
    source: str,
    number: int,
    text,
    id_,
    field: str,
    on_error: str,
    ids: IdPolicy,
    id_field: str | None = None,
) -> Row:
    """The row, or its problem: a text that is not one, an id of the wrong kind, or no id where `id_field` asks for
    one on every row."""
    if id_field is not None and id_ is None:
        return _problem(
            source,
            number,
            f"the id {id_field!r} is missing or null; with an id field every row needs one",
            on_error,
        )
    id_text, id_error = ids(id_)
    if id_error:
        return _problem(source, number, id_error, on_error)
    if text is None:
        return _problem(source, number, f"{field!r} is missing or null", on_error, id_text)
    if problem := text_problem(text):
        return _problem(source, number, f"{field!r} {problem}", on_error, id_text)
    return Row(source, number, text, id_text)


def _json_record(source: str, number: int, line: str, on_error: str) -> dict | Row:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return _problem(source, number, f"not valid JSON ({e.msg} at column {e.colno})", on_error)
    except RecursionError:
        return _problem(source, number, "not valid JSON (nested too deeply)", on_error)
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        return _problem(source, number, f"not valid JSON here ({e})", on_error)
    if not isinstance(record, dict):
        return _problem(source, number, "not a JSON object", on_error)
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
    """The records of a CSV file; its ids are strings, under the run's one-kind rule (a jsonl id 1 beside a csv id
    "1" is refused, as two jsonl ids would be)."""
    if (
        csv.field_size_limit() < _CSV_FIELD_LIMIT
    ):  # the default 131072 characters would reject long texts
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # Bytes are decoded line by line with surrogateescape, so a bad byte is found at its record (with its
    # line) instead of failing a whole read buffer; quoted fields may still span lines.
    lines = (_csv_line(file.url, n, line) for n, line in _raw_lines(file, raw))
    # strict: a quote left open at the end of the file is an error, not a field that swallows the rest of it
    reader = csv.DictReader(lines, strict=True)
    _csv_header(file.url, reader.fieldnames or [], column, id_column)
    start = (
        reader.line_num + 1
    )  # the first physical line of the next record, for errors that name it
    try:
        for record in reader:
            number = start  # a record spanning lines is named by its first
            text, id_ = record.get(column), record.get(id_column) if id_column else None
            bad = [
                name for name, value in ((column, text), (id_column, id_)) if _undecodable(value)
            ]
            if bad:
                yield _problem(
                    file.url,
                    number,
                    f"not valid UTF-8 in column {bad[0]!r}",
                    on_error,
                    None if id_column in bad else id_,
                )
            else:
                yield checked_row(file.url, number, text, id_, column, on_error, ids, id_column)
            start = reader.line_num + 1
    except (
        csv.Error
    ) as e:  # a stray carriage return in an unquoted field, a quote never closed, ...
        if "unexpected end of data" in str(e):
            raise InputError(
                f"{file.url}:{start}: a quoted field opened in the record starting on this line is never "
                "closed: the file ends inside it"
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


def parquet_file(file: InputFile):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(open_input(file))
    except InputError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{file.url}: not a readable parquet file ({e})") from None


def _parquet_rows(
    file: InputFile, column: str, id_column: str | None, on_error: str, ids: IdPolicy
) -> Iterator[Row]:
    parquet = parquet_file(file)
    parquet_columns(file.url, parquet.schema_arrow.names, column, id_column)
    columns = [column] + ([id_column] if id_column else [])
    number = 0
    for group in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(group, columns=columns)
        except Exception as e:
            raise InputError(f"{file.url}: row group {group} cannot be read ({e})") from None
        values = table.column(id_column).to_pylist() if id_column else [None] * table.num_rows
        for text, id_ in zip(table.column(column).to_pylist(), values):
            number += 1
            yield checked_row(file.url, number, text, id_, column, on_error, ids, id_column)


def parquet_columns(source: str, names: list[str], column: str, id_column: str | None) -> None:
    for name in (column, id_column):
        if name is not None and name not in names:
            raise InputError(f"{source}: no column {name!r} (columns: {', '.join(names)})")


def check_fields(file: InputFile, text_field: str, id_field: str | None) -> None:
    """Before any work: the text (and id) field must exist in the file's first record, its header or schema."""
    if file.format == ".parquet":
        parquet_columns(file.url, parquet_file(file).schema_arrow.names, text_field, id_field)
        return
    if file.format.startswith(".txt"):
        if id_field is not None:
            raise InputError(
                f"{file.url}: text files have no fields; --id-field needs jsonl, csv or parquet inputs"
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
                            f"{', '.join(map(str, record)) or 'none'}); check --text-field / --id-field"
                        )
                return


def first_id_kind(files: list[InputFile], id_field: str | None) -> str | None:
    """The kind of the first id of the inputs ("string" or "integer"): every split is judged by it."""
    if id_field is None:
        return None
    for file in files:
        ids = IdPolicy()
        for _ in read_rows(file, id_field=id_field, text_field=id_field, on_error="skip", ids=ids):
            if ids.kind is not None:
                return ids.kind
    return None


def count_rows(file: InputFile) -> int | None:
    """Rows in a file when cheap to know (for a progress bar's ETA): newline count of local .txt/.jsonl, parquet
    metadata; None for compressed, csv and remote text files."""
    try:
        if file.format == ".parquet":
            return parquet_file(file).metadata.num_rows
        if file.format in (".txt", ".jsonl") and not is_url(file.url):
            return _count_lines(file.url)
    except (
        InputError,
        OSError,
    ):  # a missing or damaged file: no total; reading it reports the real error
        return None
    return None


def _count_lines(path: str) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
