"""Corpus readers: formats, shard directories and globs, line splitting, ids, and errors that name file and line."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from berta_jax import InputError
from berta_jax.data.inputs import IdPolicy, InputFile, check_fields, expand_inputs, input_format, read_rows
from tests.texts import MIXED

TEXTS = [t.replace("\n", " ") for t in MIXED]


def write_inputs(folder: Path) -> dict[str, Path]:
    """The same texts in every input format (jsonl/csv/parquet rows carry ids r0, r1, ... and the field 'body')."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(TEXTS) + "\n"
    records = "".join(json.dumps({"id": f"r{i}", "body": t}, ensure_ascii=False) + "\n" for i, t in enumerate(TEXTS))
    files = {"txt": folder / "in.txt", "txt.gz": folder / "in.txt.gz", "jsonl": folder / "in.jsonl",
             "jsonl.gz": folder / "in.jsonl.gz", "csv": folder / "in.csv", "parquet": folder / "in.parquet"}
    files["txt"].write_text(lines, encoding="utf-8")
    files["txt.gz"].write_bytes(gzip.compress(lines.encode()))
    files["jsonl"].write_text(records, encoding="utf-8")
    files["jsonl.gz"].write_bytes(gzip.compress(records.encode()))
    with files["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows([f"r{i}", t] for i, t in enumerate(TEXTS))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "body": TEXTS}), files["parquet"],
                   row_group_size=4)
    return files


def rows_of(path: Path, **kwargs) -> list:
    return list(read_rows(InputFile(str(path), input_format(str(path))), **kwargs))


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "csv", "parquet"])
def test_every_format_yields_the_texts_in_order_with_ids_and_lines(fmt, tmp_path):
    files = write_inputs(tmp_path)
    fields = {} if fmt.startswith("txt") else {"text_field": "body", "id_field": "id"}
    rows = rows_of(files[fmt], **fields)
    assert [r.text for r in rows] == TEXTS
    if not fmt.startswith("txt"):
        assert [r.id for r in rows] == [f"r{i}" for i in range(len(TEXTS))]
    expected_lines = list(range(2, len(TEXTS) + 2)) if fmt == "csv" else list(range(1, len(TEXTS) + 1))
    assert [r.line for r in rows] == expected_lines


def test_lines_split_on_newline_only_with_bom_nul_and_crlf(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"\xef\xbb\xbffirst\xe2\x80\xa8still first\r\nsecond\xc2\x85still second\nnul\x00inside\nlast")
    assert [r.text for r in rows_of(source)] == ["first\u2028still first", "second\u0085still second",
                                                 "nul\x00inside", "last"]


def test_csv_quoted_newlines_long_fields_and_bad_bytes(tmp_path):
    long = "слово " * 40_000  # 240k characters: over the csv module's default field limit
    source = tmp_path / "in.csv"
    source.write_bytes(b"\xef\xbb\xbfid,text\r\n" + b'a,"two\r\nlines"\r\n' + f"b,{long}\r\n".encode()
                       + b"c,bad \xff byte\r\nd,last\r\n")
    rows = rows_of(source, id_field="id", on_error="skip")
    assert [r.id for r in rows] == ["a", "b", "c", "d"]
    assert [r.text for r in rows] == ["two\r\nlines", long, None, "last"]
    assert rows[2].error == "not valid UTF-8 in column 'text'" and rows[2].line == 5


def test_directories_of_shards_and_globs_expand_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "corpus.parquet"
    shards.mkdir()
    for i in (1, 0, 2):
        pq.write_table(pa.table({"text": [f"shard {i} row {j}" for j in range(3)]}), shards / f"part-{i:05d}.parquet")
    (shards / "_SUCCESS").write_text("")
    (shards / ".part-00000.parquet.crc").write_text("x")
    files = expand_inputs([str(shards)])
    assert [Path(f.url).name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [f.url for f in expand_inputs([str(shards / "part-*.parquet")])] == [f.url for f in files]
    (shards / "notes.md").write_text("not an input")
    with pytest.raises(InputError, match=r"corpus\.parquet: a directory input is read as a dataset of shards, but "
                                         r"notes\.md is not an input format"):
        expand_inputs([str(shards)])
    with pytest.raises(InputError, match=r"no file matches this pattern"):
        expand_inputs([str(tmp_path / "nothing-*.txt")])


def test_id_policy_stringifies_integers_and_refuses_mixed_or_other_kinds(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a", "id": 7}\n{"text": "b", "id": "7"}\n{"text": "c", "id": 1.5}\n'
                      '{"text": "d", "id": true}\n{"text": "e", "id": 8}\n')
    rows = rows_of(source, id_field="id", on_error="skip")
    assert [(r.id, r.error) for r in rows][0] == ("7", None) and rows[4].id == "8"
    assert "earlier ids are integers" in rows[1].error and "1 and \"1\" would collide" in rows[1].error
    assert rows[2].error == "id is float; ids must be strings or integers"
    assert rows[3].error == "id is bool; ids must be strings or integers"
    with pytest.raises(InputError, match=r"in\.jsonl:2: id is a string but earlier ids are integers"):
        rows_of(source, id_field="id")
    policy = IdPolicy()
    assert policy("x") == ("x", None) and policy(None) == (None, None)


@pytest.mark.parametrize(
    "content, fields, message",
    [
        (b'{"body": "x"}\n', dict(text_field="text"), r"in\.jsonl:1: the first record has no field 'text' \(fields: body\)"),
        (b'{"text": "x"}\n', dict(text_field="text", id_field="idd"), r"in\.jsonl:1: the first record has no field 'idd'"),
        (b'not json\n{"body": "x"}\n', dict(text_field="text"), r"in\.jsonl:2: the first record has no field 'text'"),
    ],
)
def test_a_mistyped_field_is_found_in_the_first_record(tmp_path, content, fields, message):
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    with pytest.raises(InputError, match=message):
        check_fields(InputFile(str(source), ".jsonl"), fields["text_field"], fields.get("id_field"))


def test_text_files_have_no_fields(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    with pytest.raises(InputError, match=r"in\.txt: text files have no fields; --id-field needs"):
        check_fields(InputFile(str(source), ".txt"), "text", "id")


def test_a_csv_quote_left_open_is_an_error_naming_where_its_record_starts(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'id,text\r\na,one\r\nb,"two\r\nc,three\r\nd,four\r\n')
    for on_error in ("raise", "skip"):  # the rest of the file cannot be read as records: never a silent short file
        with pytest.raises(InputError, match=r"in\.csv:3: a quoted field opened in the record starting on this line "
                                             r"is never closed"):
            rows_of(source, id_field="id", on_error=on_error)


def test_an_id_missing_on_a_later_row_is_a_row_error_not_a_null(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a", "id": "x"}\n{"text": "b"}\n{"text": "c", "id": null}\n{"text": "d", "id": "y"}\n')
    rows = rows_of(source, id_field="id", on_error="skip")
    assert [r.id for r in rows] == ["x", None, None, "y"] and rows[0].error is None and rows[3].error is None
    assert all("the id 'id' is missing or null" in r.error and r.text is None for r in rows[1:3])
    with pytest.raises(InputError, match=r"in\.jsonl:2: the id 'id' is missing or null"):
        rows_of(source, id_field="id")


def test_integer_ids_of_one_file_and_string_ids_of_a_csv_are_refused_in_one_run(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.csv"
    first.write_text('{"text": "a", "id": 1}\n')
    second.write_text('id,text\n1,b\n')
    ids = IdPolicy()
    assert rows_of(first, id_field="id", ids=ids)[0].id == "1"
    with pytest.raises(InputError, match=r"b\.csv:2: id is a string but earlier ids are integers"):
        rows_of(second, id_field="id", ids=ids)


def test_a_lone_surrogate_in_a_text_or_an_id_is_a_row_error_naming_it(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a\\ud800", "id": "x"}\n{"text": "b", "id": "\\udc80"}\n{"text": "c", "id": "y"}\n')
    rows = rows_of(source, id_field="id", on_error="skip")
    assert "'text' holds a lone surrogate U+D800 at character 1" in rows[0].error and rows[0].id == "x"
    assert rows[1].error.startswith("the id holds a lone surrogate U+DC80 at character 0") and rows[1].id is None
    assert (rows[2].text, rows[2].id, rows[2].error) == ("c", "y", None)
    with pytest.raises(InputError, match=r"in\.jsonl:1: 'text' holds a lone surrogate"):
        rows_of(source, id_field="id")
