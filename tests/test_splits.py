"""Splits from the input's own structure: byte ranges aligned to line starts, Parquet row groups, whole files.
Whatever the split size, the splits' rows put together are the file's rows, numbered as the whole-file reader
numbers them, and planning reads no row."""

from __future__ import annotations

import gzip

import pytest

from berta_jax.data.inputs import InputFile, input_format, read_rows
from berta_jax.data.splits import count_rows, plan_splits, read_split
from tests.test_inputs import TEXTS, write_inputs


def _file(path) -> InputFile:
    return InputFile(str(path), input_format(str(path)))


def _read_all(files, split_bytes: int, **fields):
    """Every split's rows in plan order, each split told its first line from the counts of the ones before."""
    rows, lines = [], {}
    for split in plan_splits(files, split_bytes=split_bytes):
        first = split.first_line or lines.get(split.file.url, 1)
        got = list(read_split(split, first_line=first, **fields))
        assert len(got) == count_rows(split, **fields), split
        lines[split.file.url] = first + len(got)
        rows += got
    return rows


@pytest.mark.parametrize("split_bytes", [1, 5, 64, 1000, 1 << 30])
def test_byte_splits_give_every_line_once_across_multibyte_characters_crlf_and_a_bom(tmp_path, split_bytes):
    lines = [("ё" * (i % 9)) + f" строка {i}" + ("\r" if i % 4 == 0 else "") for i in range(60)]
    lines[7] = "x" * 3000  # a line longer than most splits
    lines[8] = ""
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # no final newline
    want = [(r.line, r.text) for r in read_rows(_file(path))]
    got = [(r.line, r.text) for r in _read_all([_file(path)], split_bytes)]
    assert got == want and len(got) == 60 and got[0][1] == " строка 0"


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "csv", "parquet"])
def test_every_format_splits_into_the_whole_file_reader_rows(tmp_path, fmt):
    files = write_inputs(tmp_path)
    fields = {} if fmt.startswith("txt") else {"text_field": "body", "id_field": "id"}
    file = _file(files[fmt])
    want = [(r.line, r.text, r.id) for r in read_rows(file, **fields)]
    assert [(r.line, r.text, r.id) for r in _read_all([file], 40, **fields)] == want
    kinds = {s.kind for s in plan_splits([file], split_bytes=40)}
    assert kinds == {"bytes" if fmt in ("txt", "jsonl") else "row_group" if fmt == "parquet" else "file"}


def test_planning_reads_metadata_only(tmp_path):
    """A damaged body is not seen by the plan (sizes and footers only), and is reported when the split is read."""
    big = tmp_path / "big.txt"
    big.write_bytes(b"ok\n" * 1000)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"a\nb\n")[:-6])
    splits = plan_splits([_file(big), _file(broken)], split_bytes=1000)
    assert [s.kind for s in splits] == ["bytes"] * 3 + ["file"] and [s.index for s in splits] == [0, 1, 2, 3]
    assert [(s.start, s.end) for s in splits[:3]] == [(0, 1000), (1000, 2000), (2000, 3000)]
    with pytest.raises(Exception, match="broken.txt.gz"):
        list(read_split(splits[3], first_line=1))


def test_parquet_row_groups_carry_their_row_counts_and_first_rows(tmp_path):
    files = write_inputs(tmp_path)
    splits = plan_splits([_file(files["parquet"])])
    sizes = [min(4, len(TEXTS) - start) for start in range(0, len(TEXTS), 4)]  # written with row_group_size=4
    assert [(s.rows, s.first_line) for s in splits] == [(n, 1 + 4 * i) for i, n in enumerate(sizes)]


def test_row_starts_number_rows_over_the_corpus_and_lines_within_each_file(tmp_path):
    from berta_jax.beam.pipeline import row_starts

    files = write_inputs(tmp_path)
    plan = plan_splits([_file(files["jsonl"]), _file(files["parquet"]), _file(files["txt"])], split_bytes=200)
    starts = row_starts([(s.index, count_rows(s, text_field="body")) for s in plan], plan)
    rows, lines = 0, {}
    for split in plan:  # the same numbering, split by split
        line = split.first_line or lines.get(split.file.url, 1)
        assert starts[split.index] == (rows, line)
        n = count_rows(split, text_field="body")
        rows, lines[split.file.url] = rows + n, line + n
    assert rows == 3 * len(TEXTS)
