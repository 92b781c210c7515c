"""The batch job end to end: `berta-jax encode` on small files, in this process (`cli.main`) or in subprocesses
where a kill, several processes or a fresh memory count is the point."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from berta_jax import Encoder, JobError
from berta_jax.cli import main
from berta_jax.job.parts import part_name
from tests.helpers import REPO, WORKERS, berta_jax, cli_env, committed_parts, start_berta_jax, wait_for, worker
from tests.test_inputs import TEXTS, write_inputs


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


def encode(*args: str, capsys=None) -> tuple[int, str, str]:
    """`berta-jax encode ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(["encode", *args, "--quiet"])
    out = capsys.readouterr() if capsys else None
    return code, out.out if out else "", out.err if out else ""


def big_input(path, n: int):
    rng = np.random.default_rng(0)
    words = ["кот", "дом", "river", "city", "врачи", "program", "лампочка", "test"]
    path.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(n)) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "csv", "parquet"])
def test_every_input_format_gives_the_embeddings_in_input_order(fmt, tmp_path, tiny, tiny_bert_dir):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    field = [] if fmt.startswith("txt") else ["--text-field", "body"]
    assert encode(str(files[fmt]), "-o", str(out), "--model", str(tiny_bert_dir), "--split-size", "100", *field)[0] == 0
    got = np.load(out)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    assert np.abs(got - tiny.encode(TEXTS)).max() <= 1e-6


def test_a_finished_run_leaves_the_output_its_record_and_nothing_else(tmp_path, tiny_bert_dir, capsys):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out" / "out.npy"
    code, stdout, _ = encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--split-size", "100",
                             capsys=capsys)
    assert code == 0 and f"wrote {out}: {len(TEXTS)} texts" in stdout
    # the tiny model's 32-token context cuts the paragraphs: their list is the one sidecar
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.npy", "out.npy.manifest.json",
                                                           "out.npy.truncated.jsonl"]
    record = json.loads((out.parent / "out.npy.manifest.json").read_text())
    assert record["rows"] == len(TEXTS) and record["output"]["size"] == out.stat().st_size
    assert record["sidecars"]["truncated"]["rows"] == len((out.parent / "out.npy.truncated.jsonl").read_text().splitlines())
    code, stdout, _ = encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--split-size", "100",
                             capsys=capsys)
    assert code == 0 and "already complete" in stdout and "verified" in stdout


def test_parquet_output_carries_ids_and_binary_precision_matches_sentence_transformers(tmp_path, tiny, tiny_bert_dir):
    import pyarrow.parquet as pq
    from sentence_transformers.quantization import quantize_embeddings

    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out.parquet"
    assert encode(str(files["jsonl"]), "-o", str(out), "--model", str(tiny_bert_dir), "--text-field", "body",
                  "--id-field", "id", "--precision", "binary", "--split-size", "80")[0] == 0
    table = pq.read_table(out)
    assert table.column("row").to_pylist() == list(range(len(TEXTS)))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]
    got = np.array(table.column("embedding").to_pylist(), dtype=np.int8)
    np.testing.assert_array_equal(got, quantize_embeddings(tiny.encode(TEXTS), precision="binary"))


@pytest.mark.parametrize("precision", ["int8", "uint8", "ubinary"])
@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_quantised_outputs_follow_sentence_transformers(tmp_path, tiny, tiny_bert_dir, precision, suffix):
    import pyarrow.parquet as pq
    from sentence_transformers.quantization import quantize_embeddings

    files = write_inputs(tmp_path / "in")
    out = tmp_path / f"out{suffix}"
    assert encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--precision", precision,
                  "--split-size", "80")[0] == 0
    expected = quantize_embeddings(tiny.encode(TEXTS), precision=precision)
    got = np.load(out) if suffix == ".npy" else np.array(pq.read_table(out).column("embedding").to_pylist(),
                                                           dtype=expected.dtype)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # float32 rounding differences of ~1e-7 between chunked and whole-set encoding may move a value
    # across a bucket edge; everything else must match exactly
    assert np.mean(got == expected) > 0.995 and np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_a_skipped_row_does_not_move_the_int8_ranges_of_the_others(tmp_path, tiny_bert_dir):
    """The zero row standing for a skipped input is left out of the per-dimension ranges."""
    good = [json.dumps({"text": t}) for t in ("кот", "дом у реки", "the river", "program test")]
    (tmp_path / "clean.jsonl").write_text("\n".join(good) + "\n")
    (tmp_path / "dirty.jsonl").write_text("\n".join(good[:2] + ['{"text": 5}'] + good[2:]) + "\n")
    for name in ("clean", "dirty"):
        assert encode(str(tmp_path / f"{name}.jsonl"), "-o", str(tmp_path / f"{name}.npy"), "--model",
                      str(tiny_bert_dir), "--precision", "int8", "--on-error", "skip")[0] == 0
    clean, dirty = np.load(tmp_path / "clean.npy"), np.load(tmp_path / "dirty.npy")
    np.testing.assert_array_equal(np.delete(dirty, 2, axis=0), clean)


def test_float16_and_truncate_dim(tmp_path, tiny, tiny_bert_dir):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    assert encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--precision", "float16",
                  "--truncate-dim", "8")[0] == 0
    got = np.load(out)
    assert got.dtype == np.float16 and got.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(got, tiny.encode(TEXTS, truncate_dim=8).astype(np.float16))


def test_empty_input_gives_an_empty_valid_output(tmp_path, tiny_bert_dir):
    import pyarrow.parquet as pq

    source = tmp_path / "empty.txt"
    source.write_text("")
    for suffix in (".npy", ".parquet"):
        assert encode(str(source), "-o", str(tmp_path / f"out{suffix}"), "--model", str(tiny_bert_dir))[0] == 0
    assert np.load(tmp_path / "out.npy").shape == (0, 16)
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


def test_a_dataset_output_is_a_standard_parquet_dataset(tmp_path, tiny, tiny_bert_dir):
    """Shards plus a manifest written last; pyarrow.dataset (and so Spark, BigQuery, HF datasets' parquet loader)
    reads the directory directly and skips the underscore-prefixed bookkeeping."""
    import pyarrow.dataset as ds

    files = write_inputs(tmp_path / "in")
    out = tmp_path / "emb"
    assert encode(str(files["jsonl"]), "-o", f"{out}/", "--model", str(tiny_bert_dir), "--text-field", "body",
                  "--id-field", "id", "--split-size", "80")[0] == 0
    names = sorted(p.name for p in out.iterdir())
    shards = [n for n in names if not n.startswith("_")]
    assert [n for n in names if n.startswith("_")] == ["_manifest.json", "_truncated.jsonl"]  # no lock, no work left
    manifest = json.loads((out / "_manifest.json").read_text())
    assert shards == [s["name"] for s in manifest["shards"]] and 3 < len(shards) <= manifest["splits"]
    table = ds.dataset(str(out), format="parquet").to_table().sort_by("row")
    assert table.column("row").to_pylist() == list(range(len(TEXTS)))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]
    assert np.abs(np.array(table.column("embedding").to_pylist()) - tiny.encode(TEXTS)).max() <= 1e-6
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == shards and manifest["rows"] == len(TEXTS)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "good line"}\n{"text": "bad \xff line"}\n', "in.jsonl:2: not valid UTF-8 at byte 14 of the line"),
        (b'{"text": "ok"}\n{"text": broken\n', "in.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n{"other": "x"}\n', "in.jsonl:2: 'text' is missing or null"),
        (b'{"text": "ok"}\n{"text": null}\n', "in.jsonl:2: 'text' is missing or null"),
        (b'{"text": "ok"}\n{"text": 42}\n', "in.jsonl:2: 'text' is int, not a string"),
    ],
)
def test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed(content, message, tmp_path, tiny_bert_dir,
                                                                   capsys):
    source = tmp_path / "in.jsonl"
    source.write_bytes(content + b'{"text": "last"}\n')
    out = tmp_path / "out.npy"
    code, _, err = encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), capsys=capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    code, stdout, _ = encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--on-error", "skip",
                             capsys=capsys)
    assert code == 0 and "1 skipped" in stdout
    got = np.load(out)
    assert got.shape == (3, 16) and not got[1].any() and got[0].any() and got[2].any()  # alignment kept
    listed = [json.loads(line) for line in (tmp_path / "out.npy.skipped.jsonl").read_text().splitlines()]
    assert [(os.path.basename(r["file"]), r["line"]) for r in listed] == [("in.jsonl", 2)]


def test_resume_after_kill_9_at_several_points_is_byte_identical(tmp_path, tiny_bert_dir):
    source = big_input(tmp_path / "big.txt", 1500)
    reference = tmp_path / "reference.npy"
    common = ["--model", str(tiny_bert_dir), "--split-size", "2K", "--quiet"]
    assert encode(str(source), "-o", str(reference), *common)[0] == 0
    out, parts = tmp_path / "out.npy", tmp_path / "out.npy.parts"
    killed_at = []
    for target in (3, 11, 20):
        proc = start_berta_jax("encode", str(source), "-o", str(out), *common, "--resume",
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: committed_parts(parts) >= target, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(committed_parts(parts))
        assert not out.exists()
    assert killed_at == sorted(killed_at) and killed_at[-1] < 30
    # a kill inside a write leaves a temporary file (never a final one), a kill between a part and its record an
    # unrecorded part (named as the job names its parts, so this test fails if the finish's pattern drifts from
    # that name); plant some, and one that is not ours
    stale = [parts / ".part-00025.parquet.k9x.tmp", tmp_path / ".out.npy.k9y.tmp", parts / part_name(26, 30)]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / ".someone-else.tmp").write_bytes(b"theirs")
    resumed = sum(json.loads(p.read_text())["rows"] for p in parts.glob("*.json") if p.stem.isdigit())
    done = berta_jax("encode", str(source), "-o", str(out), *common, "--resume")
    assert f"{resumed} resumed from {killed_at[-1]} splits" in done.stdout
    assert out.read_bytes() == reference.read_bytes()
    assert not any(p.exists() for p in stale) and (tmp_path / ".someone-else.tmp").exists()
    assert not parts.exists() and not (tmp_path / "out.npy.lock").exists(), sorted(map(str, parts.rglob("*")))


def test_existing_output_and_changed_inputs_are_refused(tmp_path, tiny_bert_dir, capsys):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    base = [str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir)]
    assert encode(*base)[0] == 0
    first = out.read_bytes()
    foreign = tmp_path / "foreign.npy"
    foreign.write_bytes(b"someone else's file")
    code, _, err = encode(str(files["txt"]), "-o", str(foreign), "--model", str(tiny_bert_dir), capsys=capsys)
    assert code == 2 and "pass --overwrite" in err and foreign.read_bytes() == b"someone else's file"
    files["txt"].write_text("changed\n")
    code, _, err = encode(*base, "--resume", capsys=capsys)
    assert code == 2 and "different inputs" in err and out.read_bytes() == first  # untouched
    assert encode(*base, "--overwrite")[0] == 0 and np.load(out).shape == (1, 16)


def test_two_processes_with_jax_distributed_match_one_process(tmp_path, tiny_bert_dir):
    """Process 1 reports 1.5 s late, after its share is done: process 0, which hosts JAX's coordinator, must still
    leave last (JAX aborts every process connected to a coordinator that goes). Each embeds the splits dealt to it."""
    source = big_input(tmp_path / "in.txt", 230)
    single = tmp_path / "single.npy"
    assert encode(str(source), "-o", str(single), "--model", str(tiny_bert_dir), "--split-size", "800")[0] == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "multi.npy"
    args = ["encode", str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--split-size", "800",
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--quiet"]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [start_berta_jax(*args, "--process-id", "0", **pipes),
             subprocess.Popen([sys.executable, str(WORKERS / "slow_leaver.py"), "1.5", *args, "--process-id", "1"],
                              cwd=REPO, env=cli_env(), **pipes)]
    wait_for(lambda: any(p.poll() not in (None, 0) for p in procs) or all(p.poll() == 0 for p in procs), timeout=240)
    for p in procs:  # one that failed must not leave the other waiting for it
        if p.poll() is None:
            p.kill()
    results = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-6000:] for r in results]
    report = next(line for line in results[1][0].splitlines() if line.startswith("process 1: embedded"))
    splits = json.loads((tmp_path / "multi.npy.manifest.json").read_text())["splits"]
    assert splits > 4 and int(report.split()[3]) == splits // 2  # every other split, dealt at the start
    assert "wrote" in results[0][0] and "230 texts" in results[0][0]
    assert out.read_bytes() == single.read_bytes()


def test_processes_started_with_different_plans_stop_before_any_work_naming_the_field(tmp_path, tiny_bert_dir):
    source = big_input(tmp_path / "in.txt", 50)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "multi.npy"
    args = ["encode", str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--quiet"]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [start_berta_jax(*args, "--process-id", "0", **pipes),
             start_berta_jax(*args, "--process-id", "1", "--prompt", "paraphrase: ", **pipes)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], [r[1][-2000:] for r in results]
    assert all("process 1 planned another job than process 0 (prompt differ)" in r[1] for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # nothing was written


@pytest.mark.slow
def test_memory_stays_flat_as_the_input_grows(tmp_path, tiny_bert_dir):
    small, large = big_input(tmp_path / "small.txt", 5_000), big_input(tmp_path / "large.txt", 50_000)
    common = ["--model", str(tiny_bert_dir), "--quiet", "--split-size", "50K"]
    rss_small = worker("peak_rss", "encode", str(small), "-o", str(tmp_path / "small.npy"), *common)["maxrss_kb"]
    rss_large = worker("peak_rss", "encode", str(large), "-o", str(tmp_path / "large.npy"), *common)["maxrss_kb"]
    assert np.load(tmp_path / "large.npy", mmap_mode="r").shape == (50_000, 16)
    assert rss_large - rss_small < 100_000, (rss_small, rss_large)  # 10x the rows, < 100 MB more


def test_unwritable_output_folder_and_a_directory_output_are_clear_errors(tmp_path, tiny_bert_dir, capsys):
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = encode(str(source), "-o", str(blocker / "out.npy"), "--model", str(tiny_bert_dir), capsys=capsys)
    assert code == 2 and "berta-jax encode: error:" in err and "Traceback" not in err
    (tmp_path / "out.npy").mkdir()
    code, _, err = encode(str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), capsys=capsys)
    assert code == 2 and "out.npy is a directory" in err


def test_non_finite_embeddings_stop_the_job_naming_file_and_line(tmp_path, overflowing_bert_dir, capsys):
    source = tmp_path / "in.txt"
    source.write_text("кот\nдом\nдом\nthe river\nкот\n")
    out = tmp_path / "out.npy"
    code, _, err = encode(str(source), "-o", str(out), "--model", str(overflowing_bert_dir), "--split-size", "14",
                          capsys=capsys)
    assert code == 2 and "non-finite embeddings for 1 rows" in err and "in.txt:4" in err
    assert not out.exists() and committed_parts(tmp_path / "out.npy.parts") == 1  # rows 1-2 only


def test_disk_full_keeps_committed_chunks_and_the_earlier_output(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """ENOSPC surfaces at fsync on many filesystems: the third part's fsync fails. The earlier output stays, no
    temporary file is left, and --resume (with space again) gives the uninterrupted result."""
    source = big_input(tmp_path / "in.txt", 500)
    reference = tmp_path / "reference.npy"
    common = ["--model", str(tiny_bert_dir), "--split-size", "4K"]
    assert encode(str(source), "-o", str(reference), *common)[0] == 0
    out = tmp_path / "out.npy"
    out.write_bytes(b"an earlier output")
    real_fsync, calls = os.fsync, {"parts": 0}

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ".part-" in name:
            calls["parts"] += 1
            if calls["parts"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = encode(str(source), "-o", str(out), *common, "--overwrite", capsys=capsys)
    assert code == 2 and "No space left on device" in err and "part-00002" in err and "--resume" in err
    assert out.read_bytes() == b"an earlier output"
    assert not list(tmp_path.rglob("*.tmp"))
    assert committed_parts(tmp_path / "out.npy.parts") == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert encode(str(source), "-o", str(out), *common, "--resume")[0] == 0
    assert out.read_bytes() == reference.read_bytes()


def test_input_changed_during_the_run_is_refused_before_assembly(tmp_path, tiny):
    from berta_jax.job.run import JobOptions, run_job

    source = tmp_path / "in.txt"
    source.write_text("".join(f"line {i}\n" for i in range(30)))

    def append_once(summary) -> None:  # another program appends while the job runs
        if summary.splits_done == 1:
            with source.open("a") as f:
                f.write("late line\n")

    with pytest.raises(JobError, match=r"in\.txt changed while it was being embedded; rerun with --overwrite"):
        run_job(tiny, [source], tmp_path / "out.npy", JobOptions(split_bytes=80), progress=append_once)
    assert not (tmp_path / "out.npy").exists()


def test_bf16_compute_and_batch_knobs_reach_the_encoder(tmp_path, tiny, tiny_bert_dir):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    assert encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--dtype", "bfloat16",
                  "--max-batch-tokens", "64", "--batch-size", "2")[0] == 0
    fast = np.load(out)
    reference = tiny.encode(TEXTS)
    assert np.min(np.sum(fast * reference, axis=1)) >= 0.99 and np.abs(fast - reference).max() > 0  # bf16, not f32
    with pytest.raises(SystemExit):
        main(["encode", str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--dtype", "float64"])


def test_the_next_split_is_read_and_tokenized_while_the_device_embeds_this_one(tmp_path, tiny, monkeypatch):
    """Each split's embedding waits until the next split's reading has begun in the helper thread: with no
    prefetch that never happens and the run fails; with it, however slow the machine, the order holds."""
    import threading
    import time

    from berta_jax.job import run
    from berta_jax.job.run import JobOptions, run_job

    source = big_input(tmp_path / "in.txt", 50)
    events, prepare, embed = [], run._prepare, run._embed
    started: dict[int, threading.Event] = {}

    def prepared(plan, encoder, split, *args):
        events.append(("plan", split, threading.current_thread().name, time.monotonic()))
        started.setdefault(split, threading.Event()).set()
        return prepare(plan, encoder, split, *args)

    def embedded(plan, encoder, work, *args):
        events.append(("embed", work.split, None, time.monotonic()))
        if work.split + 1 < len(plan.splits):  # the device is busy until the next split is being read
            assert started.setdefault(work.split + 1, threading.Event()).wait(timeout=60), "no prefetch"
        vectors = embed(plan, encoder, work, *args)
        events.append(("done", work.split, None, time.monotonic()))
        return vectors

    monkeypatch.setattr(run, "_prepare", prepared)
    monkeypatch.setattr(run, "_embed", embedded)
    summary = run_job(tiny, [source], tmp_path / "out.npy", JobOptions(split_bytes=300))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), tiny.encode(source.read_text().splitlines(), prompt=""),
                               atol=1e-6)
    assert 0 < summary.device_seconds < summary.embed_seconds  # the waits idle the device
    when = {(kind, index): t for kind, index, _, t in events}
    assert all(name.startswith("berta-jax-prepare") for kind, _, name, _ in events if kind == "plan")
    assert len({index for kind, index, _, _ in events if kind == "done"}) >= 5
    for k in range(1, 5):  # split k was read and planned while split k - 1 was on the device
        assert when[("plan", k - 1)] < when[("plan", k)] < when[("done", k - 1)]


def test_progress_inside_a_split_follows_its_tokens_not_its_texts(tmp_path, tiny):
    """Batches run longest texts first: the first batches hold few texts and most of the work, so the progress
    fraction (the ETA's base) counts tokens; with one split it is exactly the share of the tokens embedded."""
    from berta_jax.job.run import JobOptions, run_job

    source = tmp_path / "in.txt"
    source.write_text("".join(("long text " * 12 if i < 8 else f"t{i}") + "\n" for i in range(200)))
    seen = []
    summary = run_job(tiny, [source], tmp_path / "out.npy", JobOptions(split_bytes=1 << 20, max_batch_tokens=64),
                      progress=lambda s: seen.append((s.tokens, s.fraction, s.rows)))
    total = summary.tokens
    assert len(seen) >= 5 and seen[-1] == (total, 1.0, 200)
    assert all(abs(fraction - tokens / total) < 1e-9 for tokens, fraction, _ in seen)
    tokens, fraction, rows = seen[0]
    assert fraction > 2 * rows / 200  # the long texts came first: a count of texts would say less than half


def test_the_device_busy_fraction_counts_every_batch_and_never_exceeds_the_wall_time(tiny):
    """The accounting behind `device busy N%`: every batch is counted, the device time is within the wall time,
    and a host that sleeps between results stretches the wall time by at least its sleeps (deterministic bounds
    only; how the fraction falls as the host slows is a timing, measured by benchmarks/busy_fraction.py)."""
    import time

    texts = [f"text number {i} " * (1 + i % 7) for i in range(24)]
    prepared = tiny.prepare(texts, max_batch_tokens=64)
    assert len(prepared.batches) >= 4
    tiny.encode(texts, max_batch_tokens=64)  # compiled
    stats, nap = tiny.run_stats, 0.01
    before = (stats.batches, stats.device_seconds, stats.wall_seconds)
    for _ in tiny.run_batches(prepared.batches):
        time.sleep(nap)  # the host's own work on each result (writing, say)
    batches, busy, wall = (now - then for now, then in zip((stats.batches, stats.device_seconds,
                                                            stats.wall_seconds), before))
    assert batches == len(prepared.batches) and 0 < busy <= wall
    assert wall >= (batches - 1) * nap  # the sleeps between results are inside the wall time
    assert 0 < stats.busy_fraction <= 1


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(30, "Read-only file system")],
                         ids=["EACCES", "EROFS"])
def test_a_finished_output_in_a_read_only_folder_is_verified_not_refused(tmp_path, tiny_bert_dir, monkeypatch,
                                                                        capsys, error):
    """Taking the lock needs a writable folder; a finished, verified output there still answers "complete", on a
    read-only folder and on a read-only filesystem (EROFS is no PermissionError) alike (simulated: this suite may
    run as root, whom chmod does not stop, and mounting needs privileges)."""
    from berta_jax.job import lock

    source = big_input(tmp_path / "in.txt", 20)
    args = [str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir)]
    assert encode(*args)[0] == 0

    def read_only(self) -> None:
        raise type(error)(error.errno, error.strerror, self.path)

    monkeypatch.setattr(lock.LocalLock, "acquire", read_only)
    code, out, _ = encode(*args, capsys=capsys)
    assert code == 0 and "already complete" in out
    (tmp_path / "out.npy").write_bytes(b"edited")
    code, _, err = encode(*args, capsys=capsys)
    assert code == 2 and error.strerror in err
