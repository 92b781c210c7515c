"""The batch job at its edges, as a red-team review found them: refusals that must keep earlier work, paths the
job owns, what a rerun of a finished command does, ids and line numbers whatever the split size, a model
identified by content, and stops that come between batches."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from berta_jax.cli import main
from tests.helpers import committed_parts


def encode(*args: str) -> int:
    return main(["encode", *args, "--quiet"])


def stop_after(monkeypatch, tmp_path, parts: int) -> None:
    from berta_jax.cli import encode as cli_encode

    monkeypatch.setattr(cli_encode.StopSignals, "__call__",
                        lambda self: committed_parts(tmp_path / "out.npy.parts") >= parts)


@pytest.fixture
def corpus(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("".join(f"строка {i} line\n" for i in range(400)))
    return source


def test_a_refused_run_with_another_split_size_keeps_the_earlier_work(tmp_path, corpus, tiny_bert_dir, monkeypatch,
                                                                       capsys):
    args = [str(corpus), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)]
    stop_after(monkeypatch, tmp_path, 3)
    assert encode(*args, "--split-size", "600") == 130
    monkeypatch.undo()
    kept = sorted(os.listdir(tmp_path / "out.npy.parts"))
    assert encode(*args, "--split-size", "2K", "--resume") == 2
    err = capsys.readouterr().err
    assert "different options (--split-size) wrote here" in err and "inputs" not in err
    assert sorted(os.listdir(tmp_path / "out.npy.parts")) == kept  # refused: nothing of the earlier run deleted
    assert encode(*args, "--resume") == 0  # without --split-size: the recorded 600, not the default
    manifest = tmp_path / "out.npy.manifest.json"
    assert json.loads(manifest.read_text())["fingerprint"]["options"]["split_bytes"] == 600
    capsys.readouterr()
    assert encode(*args) == 0 and "already complete" in capsys.readouterr().out  # the same command again
    assert encode(*args, "--overwrite") == 0  # planned afresh: the tiny model's default on a CPU
    assert json.loads(manifest.read_text())["fingerprint"]["options"]["split_bytes"] == 4 << 20


def test_the_report_may_not_be_a_shard_of_the_dataset_and_a_rerun_keeps_an_equal_report(tmp_path, corpus,
                                                                                       tiny_bert_dir, capsys):
    out, report = f"{tmp_path}/ds/", tmp_path / "report.jsonl"
    base = [str(corpus), "-o", out, "--model", str(tiny_bert_dir), "--split-size", "2K"]
    assert encode(*base, "--truncation-report", f"{out}part-00000.parquet") == 2
    assert "inside the output's folder" in capsys.readouterr().err
    assert encode(*base, "--truncation-report", str(report)) == 0 and report.is_file()
    capsys.readouterr()
    assert encode(*base, "--truncation-report", str(report)) == 0  # the same command again: complete, no refusal
    assert "already complete" in capsys.readouterr().out


def test_a_skipped_rows_list_from_an_earlier_output_does_not_survive_overwrite(tmp_path, tiny_bert_dir):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.npy"
    source.write_text('{"text": "a"}\n{"text": 5}\n')
    args = [str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--on-error", "skip"]
    assert encode(*args) == 0 and (tmp_path / "out.npy.skipped.jsonl").is_file()
    source.write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "out.npy.manifest.json").write_text("garbage")
    assert encode(*args, "--overwrite") == 0 and not (tmp_path / "out.npy.skipped.jsonl").exists()


@pytest.mark.parametrize("split_size", ["1", "4M"])
def test_the_id_kind_of_a_run_is_its_first_ids_whatever_the_split_size(tmp_path, tiny_bert_dir, split_size):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    source.write_text('{"text": "a", "id": "x"}\n{"text": "b", "id": "y"}\n{"text": "c", "id": 1}\n')
    assert encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--id-field", "id", "--on-error",
                  "skip", "--split-size", split_size) == 0
    skipped = [json.loads(line) for line in (tmp_path / "out.parquet.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["row"]) for r in skipped] == [(3, 2)] and "integer" in skipped[0]["reason"]


def test_lines_restart_for_a_file_given_twice_and_a_csv_record_is_named_by_its_first_line(tmp_path, tiny_bert_dir):
    txt = tmp_path / "in.jsonl"
    txt.write_text('{"text": "a"}\n{"text": 7}\n')
    out = tmp_path / "twice.npy"
    assert encode(str(txt), str(txt), "-o", str(out), "--model", str(tiny_bert_dir), "--on-error", "skip",
                  "--split-size", "8") == 0
    skipped = [json.loads(line) for line in (tmp_path / "twice.npy.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["row"]) for r in skipped] == [(2, 1), (2, 3)]
    csv = tmp_path / "in.csv"
    csv.write_bytes(b'text\nok\n"a record\nover\nthree lines \xff"\nlast\n')
    out = tmp_path / "csv.npy"
    assert encode(str(csv), "-o", str(out), "--model", str(tiny_bert_dir), "--text-column", "text", "--on-error",
                  "skip") == 0
    skipped = [json.loads(line) for line in (tmp_path / "csv.npy.skipped.jsonl").read_text().splitlines()]
    assert [r["line"] for r in skipped] == [3]


def test_huge_integers_and_tampered_fingerprints_are_one_line_errors(tmp_path, corpus, tiny_bert_dir, monkeypatch,
                                                                    capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a"}\n{"text": "b", "n": ' + "1" * 5000 + "}\n")
    assert encode(str(source), "-o", str(tmp_path / "big.npy"), "--model", str(tiny_bert_dir)) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:2: not valid JSON" in err and "Traceback" not in err
    args = [str(corpus), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--split-size", "600"]
    stop_after(monkeypatch, tmp_path, 2)
    assert encode(*args) == 130
    monkeypatch.undo()
    record = tmp_path / "out.npy.parts" / "job.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "fingerprint": {"inputs": 5}}))
    assert encode(*args, "--resume") == 2
    err = capsys.readouterr().err
    assert "different inputs" in err and "Traceback" not in err


def test_a_record_with_a_shifted_first_row_is_embedded_again_by_the_next_resume(tmp_path, corpus, tiny_bert_dir,
                                                                                monkeypatch, capsys):
    """Settling checks each kept record's first row against the counts before it: the resume embeds that split
    again, names the record and finishes (it used to stop at the finish blaming a stopped process)."""
    args = [str(corpus), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--split-size", "600"]
    assert encode(*args[:2], str(tmp_path / "reference.npy"), *args[3:]) == 0
    stop_after(monkeypatch, tmp_path, 3)
    assert encode(*args) == 130
    monkeypatch.undo()
    for name, shift in [("00000.json", 1), ("00001.json", -1)]:
        record = tmp_path / "out.npy.parts" / name
        record.write_text(json.dumps({**json.loads(record.read_text()), "first_row": shift + json.loads(
            record.read_text())["first_row"]}))
    capsys.readouterr()
    assert encode(*args, "--resume") == 0
    err = capsys.readouterr().err
    for name in ["00000.json", "00001.json"]:
        assert f"{tmp_path / 'out.npy.parts' / name}: it holds rows " in err and "embedded again" in err
    assert "a process of this run stopped" not in err
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()


def test_a_failed_overwrite_leaves_the_finished_output_complete_and_a_resume_replaces_it(tmp_path, tiny_bert_dir,
                                                                                          monkeypatch, capsys):
    """--overwrite touches nothing of a finished output until its own output is ready: a run that fails on a bad
    row (or stops) leaves the earlier output verified and complete; the stopped one's resume goes on replacing."""
    source = tmp_path / "in.txt"
    source.write_bytes("".join(f"строка {i} line\n" for i in range(120)).encode() + b"\xff\n")
    args = [str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--split-size", "600"]
    assert encode(*args, "--on-error", "skip") == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("out.npy")}
    assert encode(*args, "--overwrite") == 2  # the bad row stops it: no skip this time
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("out.npy")
            and not p.name.endswith(".parts")} == before
    capsys.readouterr()
    assert encode(*args, "--on-error", "skip") == 0 and "already complete" in capsys.readouterr().out
    source.write_bytes(source.read_bytes()[:-3])  # the bad row mended: the overwrite stops midway, then resumes
    stop_after(monkeypatch, tmp_path, 1)
    assert encode(*args, "--overwrite") == 130
    assert (tmp_path / "out.npy").read_bytes() == before["out.npy"]
    monkeypatch.undo()
    assert encode(*args, "--resume") == 0
    assert encode(*args[:2], str(tmp_path / "reference.npy"), *args[3:]) == 0
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.npy")) == ["out.npy", "out.npy.manifest.json"]


def test_the_model_is_identified_by_content_not_by_place_or_time(tiny_bert_dir, tmp_path):
    from berta_jax.loading.folder import ModelFolder

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    os.utime(copy / "model.safetensors", (1, 1))
    assert ModelFolder.open(copy).identity() == ModelFolder.open(tiny_bert_dir).identity()
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1  # same size, same time, other bytes
    (copy / "model.safetensors").write_bytes(bytes(weights))
    os.utime(copy / "model.safetensors", (1, 1))
    assert ModelFolder.open(copy).identity() != ModelFolder.open(tiny_bert_dir).identity()


def test_the_model_is_identified_by_the_files_the_loader_reads_and_nothing_else(tiny_bert_dir, tmp_path):
    """A compilation cache inside the model folder, a training checkpoint beside it or a link to a 20 GB file
    elsewhere is no part of the model: not read (the link would cost every run a full read), not counted."""
    import time

    from berta_jax.loading.folder import ModelFolder

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    before = ModelFolder.open(copy).identity()
    big = tmp_path / "elsewhere.bin"
    with open(big, "wb") as f:
        f.truncate(20 * 2**30)  # sparse: reading it would still take many seconds
    (copy / "big.bin").symlink_to(big)
    (copy / "jax_cache").mkdir()
    (copy / "jax_cache" / "jit_encode-abc123").write_bytes(b"compiled" * 100)
    (copy / "checkpoint-500").mkdir()
    (copy / "checkpoint-500" / "model.safetensors").write_bytes(b"old weights")
    started = time.monotonic()
    assert ModelFolder.open(copy).identity() == before
    assert time.monotonic() - started < 5
    for name in ["tokenizer.json", "1_Pooling/config.json", "sentence_bert_config.json"]:  # each is read
        original = (copy / name).read_bytes()
        (copy / name).write_bytes(original + b" ")
        assert ModelFolder.open(copy).identity() != before, name
        (copy / name).write_bytes(original)


def test_a_stop_during_splits_with_nothing_to_embed_is_honoured(tmp_path, tiny_bert_dir, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_bytes(b"\xff\n" * 3000)  # every row skipped: no batch, so the stop is polled between splits
    stop_after(monkeypatch, tmp_path, 2)
    assert encode(str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--on-error", "skip",
                  "--split-size", "600") == 130
    assert 2 <= committed_parts(tmp_path / "out.npy.parts") < 10


def test_a_pipe_among_a_directorys_shards_is_named_not_opened(tmp_path, tiny_bert_dir, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.txt").write_text("hi\n")
    os.mkfifo(shards / "x.txt")
    assert encode(str(shards), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)) == 2
    assert "x.txt: is a pipe or device" in capsys.readouterr().err


def test_vectors_are_the_reference_after_all_that(tmp_path, corpus, tiny_bert_dir):
    """The edge handling changes no embedding: a plain run equals the encoder."""
    from berta_jax import Encoder

    assert encode(str(corpus), "-o", str(tmp_path / "plain.npy"), "--model", str(tiny_bert_dir), "--split-size",
                  "777") == 0
    reference = Encoder.from_pretrained(tiny_bert_dir).encode(corpus.read_text().splitlines())
    assert np.abs(np.load(tmp_path / "plain.npy") - reference).max() <= 1e-6
