"""Class B: never trust state on disk without checking it.

Committed parts carry their size, version and sha256 in their records (tied to the job's fingerprint), the
finished output in its completion record, and the inputs their identity (size and a version that any write
changes). A resume re-embeds whatever fails its check; "already complete" is said only of a verified output;
a damaged or foreign record is an error naming the file, never a traceback, a loop or a deleted stranger.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from berta_jax.cli import main
from tests.helpers import committed_parts


@pytest.fixture
def setup(tmp_path, tiny_bert_dir):
    """A 600-line input, its uninterrupted reference output, and the arguments of a 6-split run on out.npy."""
    source = tmp_path / "in.txt"
    source.write_text("".join(f"строка номер {i} line {i % 7}\n" for i in range(600)))
    common = ["--model", str(tiny_bert_dir), "--split-size", "3500", "--quiet"]
    assert main(["encode", str(source), "-o", str(tmp_path / "reference.npy"), *common]) == 0
    return source, [str(source), "-o", str(tmp_path / "out.npy"), *common], tmp_path / "reference.npy"


def stopped_after(args: list[str], tmp_path, monkeypatch, *, chunks: int | None = None, checks: int | None = None):
    """Run until `chunks` parts are committed (or the stop flag was polled `checks` times: the run polls it after
    every batch), then stop as Ctrl-C would; the parts stay for a resume."""
    from berta_jax.cli import encode as cli_encode

    polls = {"n": 0}

    def stop_now(self) -> bool:
        polls["n"] += 1
        if chunks is not None:
            return committed_parts(tmp_path / "out.npy.parts") >= chunks
        return polls["n"] > checks

    monkeypatch.setattr(cli_encode.StopSignals, "__call__", stop_now)
    assert main(["encode", *args]) == 130
    monkeypatch.undo()


def parts(tmp_path) -> list:
    return sorted((tmp_path / "out.npy.parts").glob("part-*.parquet"))


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


def records(tmp_path) -> list:
    return sorted(p for p in (tmp_path / "out.npy.parts").glob("*.json") if p.stem.isdigit())


def test_a_damaged_part_record_is_embedded_again(setup, tmp_path, monkeypatch):
    source, args, reference = setup
    stopped_after(args, tmp_path, monkeypatch, chunks=2)
    records(tmp_path)[0].write_text('{"split": "not a number"')
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
    assert "an earlier run with different inputs (" in err and "in.txt changed) wrote here" in err
    assert "--overwrite" in err
    assert committed_parts(tmp_path / "out.npy.parts") == 2  # nothing was thrown away


def test_a_resume_after_a_stop_in_the_middle_of_a_split_is_bit_identical(setup, tmp_path, monkeypatch):
    """The stop comes at the first batch of split 1: split 0 is committed, the split in flight is not (a stop loses
    at most that split), and the resume embeds it again: the file equals an uninterrupted run."""
    source, args, _ = setup
    small = [*args, "--max-batch-tokens", "256"]
    reference = tmp_path / "ref-small.npy"
    assert main(["encode", str(source), "-o", str(reference), *small[3:]]) == 0
    stopped_after(small, tmp_path, monkeypatch, chunks=1)
    assert committed_parts(tmp_path / "out.npy.parts") == 1
    assert main(["encode", *small, "--resume"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()
    assert np.load(tmp_path / "out.npy").shape == (600, 16)


def _tamper(record, **fields) -> None:
    raw = json.loads(record.read_text())
    raw.update(fields)
    record.write_text(json.dumps(raw))


LIES = [("name", "../victim.txt"), ("name", "/dev/zero"), ("first_row", -1), ("rows", 10**6), ("split", 100000),
        ("skipped", [[500, 1, None, "x"]]), ("fingerprint", "0" * 64)]


def test_records_that_lie_are_embedded_again_and_nothing_they_name_is_touched(tmp_path, tiny_bert_dir, monkeypatch):
    """One lie per record (a name outside the folder, a device, rows out of range or too many, another split, a
    skipped row beyond the split, another job's fingerprint): each such part is embedded again."""
    source = tmp_path / "in.txt"
    source.write_text("".join(f"строка номер {i} line {i % 7}\n" for i in range(600)))
    args = [str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--split-size", "1500",
            "--quiet"]
    assert main(["encode", *args[:2], str(tmp_path / "reference.npy"), *args[3:]]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    stopped_after(args, tmp_path, monkeypatch, chunks=len(LIES) + 1)
    for record, (field, value) in zip(records(tmp_path), LIES):
        _tamper(record, **{field: value})
    assert main(["encode", *args, "--resume"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    assert victim.read_text() == "not yours"


@pytest.mark.parametrize("damage", ["drop", "rename", "absolute"])
def test_a_completion_record_that_lies_is_not_believed_and_deletes_nothing_else(tmp_path, tiny_bert_dir, capsys,
                                                                                damage):
    source = tmp_path / "in.txt"
    source.write_text("".join(f"строка {i}\n" for i in range(200)))
    out, victim = tmp_path / "emb", tmp_path / "victim.txt"
    victim.write_text("not yours")
    args = ["encode", str(source), "-o", f"{out}/", "--model", str(tiny_bert_dir), "--split-size", "400", "--quiet"]
    assert main(args) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    if damage == "drop":  # one shard left out of the record: not "complete"
        manifest["shards"] = manifest["shards"][1:]
    else:
        manifest["shards"][0]["name"] = "../victim.txt" if damage == "rename" else str(victim)
    (out / "_manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0 and victim.read_text() == "not yours"
    assert "already complete" in (main(args) == 0 and capsys.readouterr().out)


def test_without_its_job_record_a_work_folder_is_not_resumed_into_another_job(setup, tmp_path, monkeypatch, capsys):
    """Parts embedded with another prompt stay out of this output even when job.json is gone."""
    source, args, reference = setup
    stopped_after([*args, "--prompt", "other: "], tmp_path, monkeypatch, chunks=2)
    (tmp_path / "out.npy.parts" / "job.json").unlink()
    capsys.readouterr()
    assert main(["encode", *args, "--resume"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["encode", *args, "--overwrite"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()


def test_a_damaged_job_record_is_cleared_by_the_overwrite_its_message_suggests(setup, tmp_path, monkeypatch, capsys):
    source, args, reference = setup
    stopped_after(args, tmp_path, monkeypatch, chunks=2)
    (tmp_path / "out.npy.parts" / "job.json").write_text("{damaged")
    capsys.readouterr()
    assert main(["encode", *args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "job.json" in err and "--overwrite" in err
    assert main(["encode", *args, "--overwrite"]) == 0
    assert (tmp_path / "out.npy").read_bytes() == reference.read_bytes()
