"""Class B: never trust state on disk without checking it.

Committed parts carry their size and sha256 in their records, the finished output in its completion record,
and each chunk the digest of its input rows. A resume re-embeds whatever fails its check; "already complete"
is said only of a verified output; a damaged record is an error naming the file, never a traceback or a loop.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from berta_jax.cli import main
from tests.helpers import committed_segments


@pytest.fixture
def setup(tmp_path, tiny_bert_dir):
    """A 600-line input, its uninterrupted reference output, and the arguments of a 6-chunk run on out.npy."""
    source = tmp_path / "in.txt"
    source.write_text("".join(f"строка номер {i} line {i % 7}\n" for i in range(600)))
    common = ["--model", str(tiny_bert_dir), "--chunk-rows", "100", "--quiet"]
    assert main(["encode", str(source), "-o", str(tmp_path / "reference.npy"), *common]) == 0
    return source, [str(source), "-o", str(tmp_path / "out.npy"), *common], tmp_path / "reference.npy"


def stopped_after(args: list[str], tmp_path, monkeypatch, *, chunks: int | None = None, checks: int | None = None):
    """Run until `chunks` segments are committed (or the stop flag was polled `checks` times: the run polls it
    after every batch and after every chunk), then stop as Ctrl-C would; the parts stay for a resume."""
    from berta_jax.cli import encode as cli_encode

    polls = {"n": 0}

    def stop_now(self) -> bool:
        polls["n"] += 1
        if chunks is not None:
            return committed_segments(tmp_path / "out.npy.parts") >= chunks
        return polls["n"] > checks

    monkeypatch.setattr(cli_encode.StopSignals, "__call__", stop_now)
    assert main(["encode", *args]) == 130
    monkeypatch.undo()


def parts(tmp_path) -> list:
    return sorted((tmp_path / "out.npy.parts").glob("part-*.npy"))


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete", "swap"])
def test_a_damaged_part_is_embedded_again_on_resume(setup, tmp_path, monkeypatch, capsys, damage):
    source, args, reference = setup
    stopped_after(args, tmp_path, monkeypatch, chunks=3)
    first, second = parts(tmp_path)[:2]
    if damage == "edit":  # same size, other bytes
        data = bytearray(first.read_bytes())
        data[-4:] = b"\x00\x00\x80\x3f"
        first.write_bytes(bytes(data))
    elif damage == "truncate":
        first.write_bytes(first.read_bytes()[:100])
    elif damage == "delete":
        first.unlink()
    else:  # one part copied over another: a whole, valid .npy of the wrong rows
        first.write_bytes(second.read_bytes())
    assert main(["encode", *args, "--resume"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()


def test_a_damaged_chunk_record_is_embedded_again(setup, tmp_path, monkeypatch):
    source, args, reference = setup
    stopped_after(args, tmp_path, monkeypatch, chunks=2)
    record = sorted((tmp_path / "out.npy.parts" / "chunks").glob("*.json"))[0]
    record.write_text('{"chunk": "not a number"')
    assert main(["encode", *args, "--resume"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("damage", [b"{not json", b"[]", b'{"format": "berta-jax-output"}'])
def test_a_damaged_completion_record_is_a_named_error(setup, tmp_path, capsys, damage):
    source, args, _ = setup
    assert main(["encode", *args]) == 0
    (tmp_path / "out.npy.manifest.json").write_bytes(damage)
    assert main(["encode", *args]) == 2
    err = capsys.readouterr().err
    assert "out.npy.manifest.json" in err and "--overwrite" in err and "Traceback" not in err
    assert main(["encode", *args, "--overwrite"]) == 0


@pytest.mark.parametrize("damage", ["truncate", "edit", "sidecar"])
def test_already_complete_only_after_the_output_verifies(setup, tmp_path, capsys, damage):
    source, args, reference = setup
    assert main(["encode", *args]) == 0
    capsys.readouterr()
    out = tmp_path / "out.npy"
    if damage == "truncate":
        out.write_bytes(out.read_bytes()[:-64])
    elif damage == "edit":
        data = bytearray(out.read_bytes())
        data[200] ^= 1
        stat = out.stat()
        out.write_bytes(bytes(data))
        os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        (tmp_path / "out.npy.truncated.jsonl").write_text("")  # no row is truncated here: make one appear
        record = json.loads((tmp_path / "out.npy.manifest.json").read_text())
        record["sidecars"]["truncated"] = {"name": "out.npy.truncated.jsonl", "rows": 1, "size": 9, "sha256": "0" * 64}
        (tmp_path / "out.npy.manifest.json").write_text(json.dumps(record))
    assert main(["encode", *args]) == 2
    err = capsys.readouterr().err
    assert "changed since the run finished" in err and "--overwrite" in err
    assert main(["encode", *args, "--overwrite"]) == 0
    assert out.read_bytes() == reference.read_bytes()


def test_an_input_edited_in_place_with_its_mtime_restored_is_caught(setup, tmp_path, monkeypatch, capsys):
    source, args, _ = setup
    stopped_after(args, tmp_path, monkeypatch, chunks=2)
    stat = source.stat()
    text = source.read_text()
    source.write_text(text.replace("строка номер 5 ", "строка НОМЕР 5 "))  # same length in bytes? no: same chars
    assert source.stat().st_size == stat.st_size
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert main(["encode", *args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "in.txt: the rows of chunk 0 (lines 1-100) changed since they were embedded" in err
    assert committed_segments(tmp_path / "out.npy.parts") == 2  # nothing was thrown away


def test_a_resume_after_a_stop_in_the_middle_of_a_chunk_is_bit_identical(setup, tmp_path, monkeypatch):
    """Batches of 16 rows (7 per chunk); the stop comes after chunk 0 and two batches of chunk 1: chunk 1 is
    committed in part, and the resume continues the same batch plan, so the file equals an uninterrupted run."""
    source, args, _ = setup
    small = [*args, "--max-batch-tokens", "256"]
    reference = tmp_path / "ref-small.npy"
    assert main(["encode", str(source), "-o", str(reference), *small[3:]]) == 0
    stopped_after(small, tmp_path, monkeypatch, checks=10)
    records = [json.loads(p.read_text()) for p in (tmp_path / "out.npy.parts" / "chunks").glob("*.json")]
    assert any(0 < len(r["rows"]) < r["chunk_rows"] for r in records), "no chunk was committed in part"
    assert main(["encode", *small, "--resume"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()
    assert np.load(tmp_path / "out.npy").shape == (600, 16)
