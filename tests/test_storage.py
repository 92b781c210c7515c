"""Object storage: gs:// and s3:// inputs, outputs and model folders, against local stand-ins that speak the real
protocols (gcp-storage-emulator for the Cloud Storage JSON API, moto for S3), one process and several, with
kill -9 and resume; and the bad inputs a bucket brings."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import tracemalloc
import uuid

import fsspec.config
import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.cli import main
from berta_jax.storage.stores import store_for
from tests.emulators import apply_client_env, gcs_client_env, start_gcs_emulator, start_moto
from tests.helpers import cli_env, start_berta_jax, wait_for
from tests.test_inputs import TEXTS


@pytest.fixture(scope="module")
def stores():
    """Both stand-ins in threads of this process; the environment points gcsfs and s3fs (and subprocesses) at them."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    gcs, gcs_server = start_gcs_emulator()
    s3, s3_server = start_moto()
    env = {**gcs_client_env(gcs), "AWS_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    apply_client_env(env)
    yield
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    fsspec.config.conf.get("gcs", {}).pop("token", None)
    gcs_server.stop()
    s3_server.stop()


def bucket(scheme: str) -> str:
    name = f"b{uuid.uuid4().hex[:12]}"
    store_for(f"{scheme}://{name}").fs.mkdir(name)
    return f"{scheme}://{name}"


def upload_folder(folder, url: str) -> None:
    store = store_for(url)
    for path in folder.rglob("*"):
        if path.is_file():
            store.write(f"{url}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def upload_corpus(url: str, shards: int = 3) -> None:
    store = store_for(url)
    per = -(-len(TEXTS) // shards)
    for s in range(shards):
        rows = [{"id": f"r{i}", "body": TEXTS[i]} for i in range(s * per, min(len(TEXTS), (s + 1) * per))]
        store.write(f"{url}/part-{s:05d}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def read_dataset(url: str):
    import pyarrow.dataset as ds

    store = store_for(url)
    if not store.remote:
        return ds.dataset(url, format="parquet").to_table().sort_by("row")
    return ds.dataset(store.fs._strip_protocol(url), filesystem=store.fs, format="parquet").to_table().sort_by("row")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


@pytest.mark.parametrize("scheme", ["gs", pytest.param("s3", marks=pytest.mark.slow)])
def test_a_bucket_in_and_out_with_the_model_in_the_bucket_too(stores, tiny, tiny_bert_dir, scheme, capsys):
    root = bucket(scheme)
    upload_folder(tiny_bert_dir, f"{root}/model")
    upload_corpus(f"{root}/corpus")
    args = [f"{root}/corpus/*.jsonl", "--model", f"{root}/model", "--text-field", "body", "--id-field", "id",
            "--split-size", "80", "--quiet"]
    assert main(["encode", *args, "-o", f"{root}/emb/"]) == 0
    table = read_dataset(f"{root}/emb")
    assert table.column("row").to_pylist() == list(range(len(TEXTS)))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]
    assert np.abs(np.array(table.column("embedding").to_pylist()) - tiny.encode(TEXTS)).max() <= 1e-6
    names = store_for(root).list(f"{root}/emb")
    assert "_manifest.json" in names and "_state" not in names and "_lock.json" not in names
    capsys.readouterr()
    assert main(["encode", *args, "-o", f"{root}/emb/"]) == 0 and "already complete" in capsys.readouterr().out
    assert main(["encode", *args, "-o", f"{root}/emb.npy"]) == 0
    single = np.load(io.BytesIO(store_for(root).read(f"{root}/emb.npy")))
    assert np.abs(single - tiny.encode(TEXTS)).max() <= 1e-6


def _big_corpus(url: str, n: int) -> None:
    rng = np.random.default_rng(0)
    words = ["кот", "дом", "river", "city", "врачи", "program"]
    text = "\n".join(" ".join(rng.choice(words, size=rng.integers(1, 10))) for _ in range(n)) + "\n"
    store_for(url).write(url, text.encode())


def _pair(args: list[str], **popen) -> list[subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [start_berta_jax("encode", *args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--peer-timeout", "5",
                            "--process-id", str(i), env=cli_env(), **popen) for i in range(2)]


@pytest.mark.slow  # the same kill on local disk is in the default run (test_job); buckets here, in the slow tier
def test_two_processes_write_shards_directly_and_survive_a_kill(stores, tiny_bert_dir, tmp_path, capsys):
    """Two jax.distributed processes against the Cloud Storage stand-in give the rows of a one-process local run;
    kill -9 of one process mid-run leaves the other to finish its share and say which splits are left (once JAX
    finds the killed one silent), and --resume (one process) finishes."""
    root = bucket("gs")
    _big_corpus(f"{root}/in.txt", 1200)
    local_in = tmp_path / "in.txt"
    local_in.write_bytes(store_for(root).read(f"{root}/in.txt"))
    common = ["--model", str(tiny_bert_dir), "--split-size", "4K", "--max-batch-tokens", "256", "--quiet"]
    assert main(["encode", str(local_in), "-o", f"{tmp_path}/local/", *common]) == 0
    reference = read_dataset(str(tmp_path / "local"))
    procs = _pair([f"{root}/in.txt", "-o", f"{root}/emb/", *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    assert read_dataset(f"{root}/emb").equals(reference)

    procs = _pair([f"{root}/in.txt", "-o", f"{root}/emb2/", *common],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = store_for(root)
    assert wait_for(lambda: sum(n[:-5].isdigit() for n in store.list(f"{root}/emb2/_state")) >= 3, procs[1])
    procs[1].send_signal(signal.SIGKILL)
    out0, err0 = procs[0].communicate(timeout=300)
    procs[1].wait()
    assert procs[0].returncode in (0, 3), err0[-1500:]  # 3: splits dealt to the killed process are left
    assert main(["encode", f"{root}/in.txt", "-o", f"{root}/emb2/", *common, "--resume"]) == 0
    resumed = read_dataset(f"{root}/emb2")
    assert resumed.column("row").to_pylist() == reference.column("row").to_pylist()
    assert np.array_equal(np.array(resumed.column("embedding").to_pylist()),
                          np.array(reference.column("embedding").to_pylist()))


def test_a_held_lock_in_a_bucket_refuses_a_second_run(stores, tiny_bert_dir, capsys):
    import time

    root = bucket("s3")
    store = store_for(root)
    store.write(f"{root}/in.txt", b"a\nb\n")
    holder = {"run": "a" * 16, "host": "another-host", "pid": 7, "ttl": 600}  # held, however slow this machine
    lock = f"{root}/emb/_lock.json"
    assert store.create(lock, json.dumps(holder).encode())
    args = ["encode", f"{root}/in.txt", "-o", f"{root}/emb/", "--model", str(tiny_bert_dir), "--quiet"]
    assert main(args) == 2
    assert "another run is writing this output (run aaaaaaaaaaaaaaaa, pid 7 on another-host)" in capsys.readouterr().err
    assert store.replace_if(lock, json.dumps({**holder, "ttl": 1}).encode(), store.info(lock).version)  # its last renewal
    time.sleep(1.1)  # not renewed for its term, by the store's clock: taken over
    assert main(args) == 0 and "_lock.json" not in " ".join(store.list(f"{root}/emb"))


def test_bad_buckets_schemes_and_foreign_records_are_one_line_errors(stores, tiny_bert_dir, capsys):
    root = bucket("gs")
    store_for(root).write(f"{root}/in.txt", b"a\n")
    store_for(root).write(f"{root}/emb/_manifest.json", b'{"format": "somebody-else"}')
    model = ["--model", str(tiny_bert_dir), "--quiet"]
    for args, message in (
        (["gs://no-such-bucket-xyz/in.txt", "-o", "x.npy"], "gs://no-such-bucket-xyz/in.txt: no such object"),
        (["abfs://container/in.txt", "-o", "x.npy"], "the abfs:// scheme needs a package that is not installed"),
        (["nosuchscheme://x/in.txt", "-o", "x.npy"], "unknown storage scheme 'nosuchscheme'"),
        ([f"{root}/in.txt", "-o", f"{root}/emb/"], "not a berta-jax completion record"),
    ):
        assert main(["encode", *args, *model]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_reading_from_a_bucket_streams(stores):
    """A 48 MB object is read row by row with a bounded buffer, never downloaded whole first."""
    from berta_jax.data.inputs import InputFile, read_rows

    root = bucket("gs")
    line = ("слово " * 30 + "\n").encode()
    store_for(root).write(f"{root}/big.txt", line * (48 * 2**20 // len(line)))
    tracemalloc.start()
    count = sum(1 for _ in read_rows(InputFile(f"{root}/big.txt", ".txt")))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 48 * 2**20 // len(line) and peak < 24 * 2**20, peak


def test_a_remote_model_folder_tells_apart_objects_whose_names_once_shared_a_stamp(stores, tiny_bert_dir, tmp_path):
    """1_Pooling/config.json and an object named 1_Pooling__config.json: an S3 ETag is the content's MD5, so once the
    first holds what the second held, only a stamp keyed by the exact name tells the stale local copy apart."""
    from berta_jax.loading.hub import resolve_model_dir

    root = bucket("s3")
    upload_folder(tiny_bert_dir, f"{root}/model")
    store, cache = store_for(root), str(tmp_path / "cache")
    pooling = (tiny_bert_dir / "1_Pooling" / "config.json").read_text()
    cls = json.dumps({**json.loads(pooling), "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    store.write(f"{root}/model/1_Pooling__config.json", cls.encode())
    local = resolve_model_dir(f"{root}/model", cache_dir=cache)
    assert (local / "1_Pooling" / "config.json").read_text() == pooling
    store.write(f"{root}/model/1_Pooling/config.json", cls.encode())  # same size and ETag as the other object
    assert (resolve_model_dir(f"{root}/model", cache_dir=cache) / "1_Pooling" / "config.json").read_text() == cls


def test_a_remote_model_folder_copies_the_top_level_and_the_module_configs_only(stores, tiny_bert_dir, tmp_path):
    """A training run's checkpoint-500/ or eval/ beside the model is not what the loader reads: not copied."""
    from berta_jax.loading.folder import ModelFolder
    from berta_jax.loading.hub import resolve_model_dir

    root = bucket("gs")
    upload_folder(tiny_bert_dir, f"{root}/model")
    store = store_for(root)
    for extra in ["checkpoint-500/model.safetensors", "checkpoint-500/config.json", "eval/results.json",
                  "1_Pooling/extra/config.json", "1_Pooling/notes.json"]:
        store.write(f"{root}/model/{extra}", b"{}")
    local = resolve_model_dir(f"{root}/model", cache_dir=str(tmp_path / "cache"))
    copied = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() and ".versions" not in p.parts)
    expected = sorted(p.relative_to(tiny_bert_dir).as_posix() for p in tiny_bert_dir.rglob("*")
                      if p.is_file() and (p.parent == tiny_bert_dir or p.name == "config.json"))
    assert copied == expected and "1_Pooling/config.json" in copied
    assert ModelFolder.open(local).sentence == ModelFolder.open(tiny_bert_dir).sentence


def test_a_remote_model_folder_copies_only_plain_object_names_and_drops_files_gone_from_the_bucket(stores, tiny_bert_dir,
                                                                                                   tmp_path):
    """An object key `model//tmp/x.json` would become the absolute local path /tmp/x.json; a file deleted from the
    bucket must not be served from the local copy of an earlier load."""
    from berta_jax import StorageError
    from berta_jax.loading.hub import resolve_model_dir

    root = bucket("gs")
    upload_folder(tiny_bert_dir, f"{root}/model")
    store = store_for(root)
    store.write(f"{root}/model/extra.json", b"{}")
    local = resolve_model_dir(f"{root}/model", cache_dir=str(tmp_path / "cache"))
    assert (local / "extra.json").is_file() and (local / "config.json").is_file()
    store.delete(f"{root}/model/extra.json")
    assert not (resolve_model_dir(f"{root}/model", cache_dir=str(tmp_path / "cache")) / "extra.json").exists()
    escape = tmp_path / "escaped.json"
    store.write(f"{root}/model/{escape}", b"{}")  # an empty segment, then an absolute path
    with pytest.raises(StorageError, match="an empty, '.' or '..' segment"):
        resolve_model_dir(f"{root}/model", cache_dir=str(tmp_path / "cache"))
    assert not escape.exists()
