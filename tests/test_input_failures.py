"""Class F: every input failure is a file:line (or compressed byte) error that --on-error skip can skip where a row
can be skipped, with the cost of a row bounded, never a traceback or a runaway."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from berta_jax.cli import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["encode", *args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-gzip"])
def test_a_damaged_compressed_input_names_the_file_and_where(tmp_path, tiny_bert_dir, capsys, damage):
    data = gzip.compress(("".join(f"line {i} with words\n" for i in range(5000))).encode())
    source = tmp_path / "in.txt.gz"
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupt":
        data = data[:40] + bytes(b ^ 0x55 for b in data[40:80]) + data[80:]
    else:
        data = b"plain text, not gzip\n"
    source.write_bytes(data)
    code, _, err = run([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)], capsys)
    assert code == 2 and "in.txt.gz: the compressed stream is damaged after line" in err and "compressed byte" in err
    assert "Traceback" not in err and not (tmp_path / "out.npy").exists()


def test_deep_nesting_and_over_long_lines_are_row_errors_that_skip(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    from berta_jax.data import inputs

    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 16384)  # smaller than the default 64 MiB, for speed
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "first"}\n' + b"[" * 5_000 + b"]" * 5_000 + b"\n"
                       + b'{"text": "' + b"x" * 20_000 + b'"}\n' + b'{"text": "last"}\n')
    code, _, err = run([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)], capsys)
    assert code == 2 and "in.jsonl:2: not valid JSON (nested too deeply)" in err
    code, out, _ = run([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir),
                        "--on-error", "skip"], capsys)
    assert code == 0 and "2 skipped" in out
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (4, 16) and got[0].any() and not got[1].any() and not got[2].any() and got[3].any()
    listed = [json.loads(line) for line in (tmp_path / "out.npy.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in listed] == [(2, "not valid JSON (nested too deeply)"),
                                                          (3, "line longer than 16384 bytes")]


def test_pipes_devices_and_empty_directories_are_named(tmp_path, tiny_bert_dir, capsys):
    fifo = tmp_path / "in.txt"
    os.mkfifo(fifo)
    empty = tmp_path / "shards"
    empty.mkdir()
    for source, message in ((fifo, "is a pipe or device, not a regular file"),
                            ("/dev/stdin", "is a pipe or device"), (empty, "a directory with no input files in it"),
                            (tmp_path / "missing.txt", "missing.txt: no such file")):
        code, _, err = run([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)], capsys)
        assert code == 2 and message in err, (source, err)


def test_file_names_that_are_not_utf8_work_end_to_end(tmp_path, tiny_bert_dir, capsys):
    name = os.fsdecode(b"in-\xff\xfe.jsonl")
    source = tmp_path / name
    source.write_text('{"text": "ok"}\n{"text": 5}\n')
    code, out, err = run([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir),
                          "--on-error", "skip"], capsys)
    assert code == 0, err
    listed = json.loads((tmp_path / "out.npy.skipped.jsonl").read_text())
    assert os.fsencode(listed["file"]).endswith(b"in-\xff\xfe.jsonl") and listed["line"] == 2


def test_mixed_id_kinds_stop_at_the_row(tmp_path, tiny_bert_dir, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": "1"}\n')
    code, _, err = run([str(source), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_bert_dir),
                        "--id-field", "id"], capsys)
    assert code == 2 and "in.jsonl:2: id is a string but earlier ids are integers" in err
