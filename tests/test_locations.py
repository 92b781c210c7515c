"""Class O (one location, one canonical form) with class A: a storage object spelt two ways (`s3://` and
`s3a://`, `gs://` and `gcs://`) is one object to every collision check, a `file://` URL is the local path it
names, and an existing --truncation-report in a bucket is found through the store (the local emulators stand
in for the buckets)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from berta_jax import Encoder
from berta_jax.cli import main
from berta_jax.errors import StorageError
from berta_jax.storage.stores import canonical, store_for
from tests.test_storage import bucket, stores, upload_folder  # noqa: F401 (the emulators' fixture)


def parquet_bytes(texts: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), sink)
    return sink.getvalue()


def test_every_spelling_of_a_location_has_one_canonical_form(stores, tmp_path):  # noqa: F811
    # (gcsfs reads the emulator's address when it is imported: the fixture comes first)
    assert canonical("s3a://b/in.parquet") == canonical("s3://b/in.parquet") == "s3://b/in.parquet"
    assert canonical("gcs://b/x/") == canonical("gs://b/x/") == "gs://b/x/"  # the dataset's slash kept
    assert canonical("S3A://b/k") == "s3://b/k"
    assert canonical(f"file://{tmp_path}/o.npy") == f"{tmp_path}/o.npy"
    assert canonical(f"file://{tmp_path}/out/") == f"{tmp_path}/out/"
    assert canonical("relative/o.npy") == "relative/o.npy" and canonical(tmp_path) == str(tmp_path)
    assert canonical(canonical("gcs://b/k")) == "gs://b/k"
    with pytest.raises(StorageError, match="unknown storage scheme 'nosuch'"):
        canonical("nosuch://b/k")


def refused(args: list[str], capsys, store, *objects: str) -> str:
    before = {o: store.read(o) if store.exists(o) else None for o in objects}
    code = main(["encode", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert {o: store.read(o) if store.exists(o) else None for o in objects} == before, "an object changed"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# S3's variants in the slow tier; Cloud Storage's in the default run
@pytest.mark.parametrize("scheme, alias", [pytest.param("s3", "s3a", marks=pytest.mark.slow), ("gs", "gcs")])
def test_an_alias_of_a_scheme_is_the_same_object(stores, tiny_bert_dir, capsys, scheme, alias):  # noqa: F811
    root = bucket(scheme)
    other = root.replace(f"{scheme}://", f"{alias}://", 1)
    store = store_for(root)
    store.write(f"{root}/in.parquet", parquet_bytes(["один", "два"]))
    store.write(f"{root}/in.txt", b"one\ntwo\n")
    upload_folder(tiny_bert_dir, f"{root}/model")
    model = ["--model", str(tiny_bert_dir)]
    for args, named in (
        ([f"{root}/in.parquet", "-o", f"{other}/in.parquet", *model, "--overwrite"], "would overwrite or delete input 1"),
        ([f"{other}/in.parquet", "-o", f"{root}/in.parquet", *model, "--overwrite"], "would overwrite or delete input 1"),
        ([f"{root}/in.txt", "-o", f"{root}/o.npy", *model, "--truncation-report", f"{other}/in.txt", "--overwrite"],
         "would overwrite or delete input 1"),
        ([f"{root}/in.txt", "-o", f"{other}/model/o.npy", "--model", f"{root}/model"], "inside the model folder"),
        ([f"{root}/in.txt", "-o", f"{root}/d/", *model, "--truncation-report", f"{other}/d/r.jsonl"],
         "inside the output's folder"),
    ):
        err = refused(args, capsys, store, f"{root}/in.parquet", f"{root}/in.txt", f"{root}/model/config.json")
        assert named in err, err
    assert not store.exists(f"{root}/o.npy") and not store.exists(f"{root}/d")


def test_a_file_url_is_the_local_path_it_names(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    out = tmp_path / "o.npy"
    args = [f"file://{tmp_path}/in.txt", "-o", f"file://{out}", "--model", f"file://{tiny_bert_dir}", "--quiet"]
    assert main(["encode", *args]) == 0, capsys.readouterr().err
    assert not (tmp_path / "file:").exists()
    expected = Encoder.from_pretrained(tiny_bert_dir).encode(["one", "two"])
    assert np.abs(np.load(out) - expected).max() <= 1e-6
    assert main(["encode", *args]) == 0 and "already complete" in capsys.readouterr().out
    # the same file by its path and by its URL is one file: never an output of itself
    err = refused_local([str(tmp_path / "in.txt"), "-o", str(out), "--model", str(tiny_bert_dir), "--overwrite",
                         "--truncation-report", f"file://{tmp_path}/in.txt"], capsys)
    assert "would overwrite or delete input 1" in err


def refused_local(args: list[str], capsys) -> str:
    code = main(["encode", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("scheme", [pytest.param("s3", marks=pytest.mark.slow), "gs"])
def test_an_existing_report_in_a_bucket_is_kept_without_overwrite(stores, tiny_bert_dir, capsys, scheme):  # noqa: F811
    root = bucket(scheme)
    store = store_for(root)
    store.write(f"{root}/in.txt", b"one\n" + " ".join(["word"] * 600).encode() + b"\n")
    store.write(f"{root}/report.jsonl", b"precious\n")
    args = [f"{root}/in.txt", "-o", f"{root}/o.npy", "--model", str(tiny_bert_dir), "--truncation-report",
            f"{root}/report.jsonl"]
    err = refused(args, capsys, store, f"{root}/report.jsonl")
    assert f"--truncation-report {root}/report.jsonl exists; pass --overwrite" in err
    assert main(["encode", *args, "--quiet", "--overwrite"]) == 0
    report = store.read(f"{root}/report.jsonl").decode()
    assert report.count("\n") == 1 and '"line": 2' in report.replace('"line":2', '"line": 2'), report
    # the same command again: the report already holds what it would write, so it is a no-op
    assert main(["encode", *args, "--quiet"]) == 0, capsys.readouterr().err
    store.write(f"{root}/folder/x", b"")
    folder = [f"{root}/in.txt", "-o", f"{root}/o2.npy", "--model", str(tiny_bert_dir), "--truncation-report",
              f"{root}/folder"]
    assert "is a link or not a regular file" in refused(folder, capsys, store)
