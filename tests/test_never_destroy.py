"""Class A: the job never destroys a file it was not asked to write.

Every path the job may write or delete (output, work folder, lock, completion record, sidecars, truncation
report) is resolved and compared with every input, the model folder and each other before the first write.
Each variant below must end in exit 2 with an error naming both paths, and leave every file as it was, even
with --overwrite.
"""

from __future__ import annotations

import shutil

import pytest

from berta_jax import CheckpointError
from berta_jax.cli import main
from berta_jax.convert.folders import flax_folder_to_hf, hf_folder_to_flax
from tests.helpers import tree_hashes


@pytest.fixture
def corpus(tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("один\nдва\nthree\n" + "слово " * 200 + "\n")
    return source


def refused(args: list[str], capsys, *roots) -> str:
    before = tree_hashes(*roots)
    code = main(["encode", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert tree_hashes(*roots) == before, "a file changed"
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_truncation_report_may_not_be_an_input_the_output_or_a_model_file(tmp_path, corpus, tiny_bert_dir,
                                                                               capsys, overwrite):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    out = tmp_path / "out.npy"
    base = [str(corpus), "-o", str(out), "--model", str(model), *overwrite]
    for report, named in ((corpus, "input 1"), (out, "the output"), (model / "config.json", "the model folder"),
                          (tmp_path / "out.npy.manifest.json", "the completion record")):
        err = refused([*base, "--truncation-report", str(report)], capsys, tmp_path)
        assert str(report) in err and named in err


@pytest.mark.parametrize("sidecar", ["out.npy.truncated.jsonl", "out.npy.skipped.jsonl"])
def test_an_input_named_like_a_sidecar_is_never_deleted(tmp_path, tiny_bert_dir, capsys, sidecar):
    source = tmp_path / sidecar
    source.write_text('{"text": "a"}\n')
    err = refused([str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)], capsys, tmp_path)
    assert sidecar in err and "would overwrite or delete input 1" in err


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_output_may_not_be_an_input_even_with_overwrite(tmp_path, tiny_bert_dir, capsys, overwrite):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), corpus)
    link = tmp_path / "alias.parquet"
    link.symlink_to(corpus)
    for output in (corpus, link):
        err = refused([str(corpus), "-o", str(output), "--model", str(tiny_bert_dir), *overwrite], capsys, tmp_path)
        assert "would overwrite or delete input 1" in err and str(corpus) in err


def test_no_output_or_report_onto_a_file_behind_a_linked_model_folder(tmp_path, corpus, tiny_bert_dir, capsys):
    """A hub snapshot's files are links into the repository's shared blob folder: writing there would change the
    model."""
    repo = tmp_path / "models--owner--name"
    blobs, model = repo / "blobs", repo / "snapshots" / "0123abc"
    shutil.copytree(tiny_bert_dir, blobs)
    model.mkdir(parents=True)
    for file in blobs.iterdir():
        (model / file.name).symlink_to(file)
    err = refused([str(corpus), "-o", f"{blobs}/", "--model", str(model)], capsys, tmp_path)  # a dataset holding them
    assert "inside the model folder" in err and str(blobs) in err
    err = refused([str(corpus), "-o", str(tmp_path / "emb.npy"), "--model", str(model), "--truncation-report",
                   str(blobs / "config.json")], capsys, tmp_path)
    assert "the truncation report" in err and "config.json" in err


def test_no_output_inside_the_model_folder_or_an_input_directory(tmp_path, corpus, tiny_bert_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    err = refused([str(corpus), "-o", str(model / "emb.npy"), "--model", str(model)], capsys, tmp_path)
    assert "inside the model folder" in err and str(model) in err
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.txt").write_text("x\n")
    err = refused([str(shards), "-o", str(shards / "emb.npy"), "--model", str(model)], capsys, tmp_path)
    assert "inside the input directory" in err
    err = refused([str(corpus), "-o", f"{tmp_path}/", "--model", str(model)], capsys, tmp_path)
    assert "would overwrite or delete input 1" in err  # a dataset directory that holds the input


def test_a_refused_run_leaves_no_files_behind(tmp_path, corpus, tiny_bert_dir, capsys):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "a", "id": 1}\n')
    for extra in (["--text-field", "body"], ["--id-field", "idd"], ["--prompt-name", "nope"], ["--truncate-dim", "17"]):
        refused([str(jsonl), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), *extra], capsys, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "in.jsonl"], extra


def test_convert_refuses_an_existing_destination_and_the_source_itself(tiny_bert_dir, tmp_path):
    src = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, src)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    before = tree_hashes(tmp_path)
    for target, message in ((dst, "exists and is not empty; pass --overwrite"), (src, "is the source folder"),
                            (src / "sub", "inside the source folder")):
        with pytest.raises(CheckpointError, match=message):
            hf_folder_to_flax(src, target)
    assert tree_hashes(tmp_path) == before
    hf_folder_to_flax(src, dst, overwrite=True)
    assert (dst / "keep.txt").read_text() == "mine" and (dst / "flax_model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="is the source folder"):
        flax_folder_to_hf(dst, dst)


@pytest.mark.parametrize("output", ["out.npy", "out/"])
def test_a_work_folder_that_is_a_link_is_refused_before_any_write(tmp_path, corpus, tiny_bert_dir, capsys, output):
    """The job writes and deletes part files in its work folder: a link there (to a folder of someone else's files,
    named as parts are) would send them elsewhere. Refused, naming the link, with or without --overwrite."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "part-00000.parquet").write_bytes(b"someone else's file")
    (elsewhere / "00000.json").write_text("{}")
    out = tmp_path / output
    state = tmp_path / "out.npy.parts" if output == "out.npy" else out / "_state"
    state.parent.mkdir(exist_ok=True)
    state.symlink_to(elsewhere, target_is_directory=True)
    for overwrite in ([], ["--overwrite"], ["--resume"]):
        err = refused([str(corpus), "-o", str(out) + ("/" if output.endswith("/") else ""), "--model",
                       str(tiny_bert_dir), *overwrite], capsys, tmp_path)
        assert f"the work folder {state} is a symbolic link (to {elsewhere})" in err
    assert not (tmp_path / "out.npy").exists() and sorted(p.name for p in elsewhere.iterdir()) == [
        "00000.json", "part-00000.parquet"]


def test_a_glob_that_matches_the_jobs_own_files_leaves_them_out(tmp_path, tiny_bert_dir, capsys):
    """`d/*.parquet -o d/emb.parquet`: once the output exists the glob matches it too; it is the job's own file,
    never an input, so the same command is still a no-op (and a named output is still refused as an input)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["один", "two"]}), tmp_path / "in.parquet")
    args = ["encode", f"{tmp_path}/*.parquet", "-o", str(tmp_path / "emb.parquet"), "--model", str(tiny_bert_dir),
            "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0 and "already complete" in capsys.readouterr().out
    refused([str(tmp_path / "emb.parquet"), "-o", str(tmp_path / "emb.parquet"), "--model", str(tiny_bert_dir),
             "--overwrite"], capsys, tmp_path)
