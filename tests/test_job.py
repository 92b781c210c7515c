"""The batch job end to end: the real `berta-jax encode` command on small files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from berta_jax import Encoder
from tests.texts import MIXED

REPO = Path(__file__).resolve().parent.parent


def _encode(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "berta_jax", "encode", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


TEXTS = [t.replace("\n", " ") for t in MIXED]


def _write_inputs(folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    lines = "\n".join(TEXTS) + "\n"
    records = "".join(json.dumps({"id": f"r{i}", "body": t}, ensure_ascii=False) + "\n" for i, t in enumerate(TEXTS))
    files = {
        "txt": folder / "in.txt", "txt.gz": folder / "in.txt.gz", "jsonl": folder / "in.jsonl",
        "jsonl.gz": folder / "in.jsonl.gz", "csv": folder / "in.csv", "parquet": folder / "in.parquet",
    }
    files["txt"].write_text(lines, encoding="utf-8")
    files["txt.gz"].write_bytes(gzip.compress(lines.encode()))
    files["jsonl"].write_text(records, encoding="utf-8")
    files["jsonl.gz"].write_bytes(gzip.compress(records.encode()))
    import csv

    with files["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "body"])
        writer.writerows([f"r{i}", t] for i, t in enumerate(TEXTS))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "body": TEXTS}), files["parquet"],
                   row_group_size=4)
    return files


@pytest.mark.parametrize("fmt", ["txt", "txt.gz", "jsonl", "jsonl.gz", "csv", "parquet"])
def test_every_input_format_gives_the_embeddings_in_input_order(fmt, tmp_path, tiny, tiny_bert_dir):
    files = _write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    field = [] if fmt.startswith("txt") else ["--text-field", "body"]
    _encode(str(files[fmt]), "-o", str(out), "--model", str(tiny_bert_dir), "--chunk-rows", "5", *field)
    got = np.load(out)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    assert np.abs(got - tiny.encode(TEXTS)).max() <= 1e-6


def test_parquet_output_carries_ids_and_binary_precision_matches_sentence_transformers(tmp_path, tiny, tiny_bert_dir):
    import pyarrow.parquet as pq
    from sentence_transformers.quantization import quantize_embeddings

    files = _write_inputs(tmp_path / "in")
    out = tmp_path / "out.parquet"
    _encode(str(files["jsonl"]), "-o", str(out), "--model", str(tiny_bert_dir), "--text-field", "body",
            "--id-field", "id", "--precision", "binary", "--chunk-rows", "4")
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

    files = _write_inputs(tmp_path / "in")
    out = tmp_path / f"out{suffix}"
    _encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--precision", precision,
            "--chunk-rows", "4")
    expected = quantize_embeddings(tiny.encode(TEXTS), precision=precision)
    got = np.load(out) if suffix == ".npy" else np.array(pq.read_table(out).column("embedding").to_pylist(),
                                                           dtype=expected.dtype)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # float32 rounding differences of ~1e-7 between chunked and whole-set encoding may move a value
    # across a bucket edge; everything else must match exactly
    assert np.mean(got == expected) > 0.995 and np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_float16_and_truncate_dim(tmp_path, tiny, tiny_bert_dir):
    files = _write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    _encode(str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir), "--precision", "float16",
            "--truncate-dim", "8")
    got = np.load(out)
    assert got.dtype == np.float16 and got.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(got, tiny.encode(TEXTS)[:, :8].astype(np.float16))


def _big_input(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    words = ["кот", "дом", "river", "city", "врачи", "program", "лампочка", "test"]
    path.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(n)) + "\n")
    return path


def _interruptible_run(tmp_path: Path, model: Path) -> tuple[list[str], Path, Path, Path]:
    """A 3000-line input in 30 chunks: the encode arguments for out.npy, the uninterrupted reference output,
    out.npy itself and its manifest."""
    source = _big_input(tmp_path / "big.txt", 3000)
    reference = tmp_path / "reference.npy"
    _encode(str(source), "-o", str(reference), "--model", str(model), "--chunk-rows", "100")
    out = tmp_path / "out.npy"
    args = [str(source), "-o", str(out), "--model", str(model), "--chunk-rows", "100"]
    return args, reference, out, tmp_path / "out.npy.parts" / "manifest.json"


def _start_encode(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "berta_jax", "encode", *args], cwd=REPO, **popen)


def _wait_for_chunks(proc: subprocess.Popen, manifest: Path, chunks: int) -> None:
    """Until the run has committed `chunks` chunks (or ended, or two minutes passed)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["chunks"] >= chunks:
            return
        time.sleep(0.01)


def test_resume_after_kill_9_at_several_points_is_byte_identical(tmp_path, tiny_bert_dir):
    args, reference, out, manifest = _interruptible_run(tmp_path, tiny_bert_dir)
    killed_at = []
    for target in (3, 11, 20):
        proc = _start_encode([*args, "--resume", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_chunks(proc, manifest, target)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(json.loads(manifest.read_text())["chunks"])
        assert not out.exists()
    assert killed_at == sorted(killed_at) and killed_at[-1] < 30
    # a kill inside a write leaves a temporary file (never a final one); plant some, and one that is not ours
    stale = [tmp_path / "out.npy.parts" / ".part-000025.npy.k9x.tmp", tmp_path / ".out.npy.k9y.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / ".someone-else.tmp").write_bytes(b"theirs")
    done = _encode(*args, "--resume")
    assert f"({killed_at[-1]} chunks resumed)" in done.stdout
    assert out.read_bytes() == reference.read_bytes()
    assert not any(p.exists() for p in stale) and (tmp_path / ".someone-else.tmp").exists()


def test_existing_output_changed_inputs_and_held_lock_are_refused(tmp_path, tiny_bert_dir):
    files = _write_inputs(tmp_path / "in")
    out = tmp_path / "out.npy"
    base = [str(files["txt"]), "-o", str(out), "--model", str(tiny_bert_dir)]
    _encode(*base)
    first = out.read_bytes()
    again = _encode(*base)  # the same command again: verified no-op
    assert "already complete" in again.stdout and out.read_bytes() == first
    foreign = tmp_path / "foreign.npy"
    foreign.write_bytes(b"someone else's file")
    refused = _encode(str(files["txt"]), "-o", str(foreign), "--model", str(tiny_bert_dir), check=False)
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr
    assert foreign.read_bytes() == b"someone else's file"
    files["txt"].write_text("changed\n")
    changed = _encode(*base, "--resume", check=False)
    assert changed.returncode == 2 and "different inputs" in changed.stderr
    assert out.read_bytes() == first  # untouched
    import fcntl

    with open(tmp_path / "out.npy.lock", "w") as held:  # another run holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        locked = _encode(*base, "--overwrite", check=False)
    assert locked.returncode == 2 and "another run is writing this output" in locked.stderr
    _encode(*base, "--overwrite")
    assert np.load(out).shape == (1, 16)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"good line\nbad \xff line\n", "in.jsonl:2: not valid UTF-8 at byte 14 of the line"),
        (b'{"text": "ok"}\n{"text": broken\n', "in.jsonl:2: not valid JSON"),
        (b'{"text": "ok"}\n{"other": "x"}\n', "in.jsonl:2: 'text' is missing or null"),
        (b'{"text": "ok"}\n{"text": null}\n', "in.jsonl:2: 'text' is missing or null"),
        (b'{"text": "ok"}\n{"text": 42}\n', "in.jsonl:2: 'text' is int, not a string"),
    ],
)
def test_bad_rows_stop_with_file_and_line_or_are_skipped_and_listed(content, message, tmp_path, tiny_bert_dir):
    if b"good line" in content:
        content = b'{"text": "good line"}\n{"text": "bad \xff line"}\n'
    source = tmp_path / "in.jsonl"
    source.write_bytes(content + b'{"text": "last"}\n')
    out = tmp_path / "out.npy"
    failed = _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), check=False)
    assert failed.returncode == 2 and message in failed.stderr and "Traceback" not in failed.stderr
    assert not out.exists()
    done = _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--on-error", "skip", "--overwrite")
    assert "1 skipped" in done.stdout
    got = np.load(out)
    assert got.shape == (3, 16) and not got[1].any() and got[0].any() and got[2].any()  # alignment kept
    listed = [json.loads(line) for line in (tmp_path / "out.npy.skipped.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["line"]) for r in listed] == [("in.jsonl", 2)]


def test_empty_input_gives_an_empty_valid_output(tmp_path, tiny_bert_dir):
    source = tmp_path / "empty.txt"
    source.write_text("")
    for suffix in (".npy", ".parquet"):
        out = tmp_path / f"out{suffix}"
        _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir))
    assert np.load(tmp_path / "out.npy").shape == (0, 16)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


def test_lines_split_on_newline_only(tmp_path, tiny, tiny_bert_dir):
    source = tmp_path / "in.txt"
    texts = ["first\u2028still first", "second\u0085still second", "third\r"]
    source.write_bytes(("\n".join(texts) + "\n").encode())
    out = tmp_path / "out.npy"
    _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir))
    got = np.load(out)
    assert got.shape == (3, 16)
    assert np.abs(got - tiny.encode(["first\u2028still first", "second\u0085still second", "third"])).max() <= 1e-6


def test_encode_help_shows_examples():
    done = subprocess.run([sys.executable, "-m", "berta_jax", "encode", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "examples:" in done.stdout and "--resume" in done.stdout


def test_two_processes_with_jax_distributed_match_one_process(tmp_path, tiny_bert_dir):
    import socket

    source = _big_input(tmp_path / "in.txt", 230)
    single = tmp_path / "single.npy"
    _encode(str(source), "-o", str(single), "--model", str(tiny_bert_dir), "--chunk-rows", "20")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "multi.npy"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        _start_encode(
            [str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--chunk-rows", "20",
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert "process 1: embedded its 6 chunks" in results[1][0]  # chunks 1, 3, ..., 11 of 12
    assert out.read_bytes() == single.read_bytes()


def test_ctrl_c_commits_the_current_chunk_and_resume_finishes(tmp_path, tiny_bert_dir):
    args, reference, out, manifest = _interruptible_run(tmp_path, tiny_bert_dir)
    proc = _start_encode([*args, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_chunks(proc, manifest, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun with --resume" in err
    _encode(*args, "--resume")
    assert out.read_bytes() == reference.read_bytes()


_RSS = """
import resource, runpy, sys
sys.argv = ["berta-jax", "encode", *{args!r}]
try:
    runpy.run_module("berta_jax", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kb(args: list[str]) -> int:
    done = subprocess.run([sys.executable, "-c", _RSS.format(args=args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split("maxrss_kb")[-1])


def test_memory_stays_flat_as_the_input_grows(tmp_path, tiny_bert_dir):
    small, large = _big_input(tmp_path / "small.txt", 20_000), _big_input(tmp_path / "large.txt", 200_000)
    common = ["--model", str(tiny_bert_dir), "--quiet", "--chunk-rows", "5000"]
    rss_small = _peak_rss_kb([str(small), "-o", str(tmp_path / "small.npy"), *common])
    rss_large = _peak_rss_kb([str(large), "-o", str(tmp_path / "large.npy"), *common])
    assert np.load(tmp_path / "large.npy", mmap_mode="r").shape == (200_000, 16)
    assert rss_large - rss_small < 100_000, (rss_small, rss_large)  # 10x the rows, < 100 MB more


def test_unwritable_output_folder_is_a_clear_error(tmp_path, tiny_bert_dir):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "out.npy"  # a path under a regular file: no permission trick needed as root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out.npy"
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    done = _encode(str(source), "-o", str(target), "--model", str(tiny_bert_dir), check=False)
    assert done.returncode == 2 and "berta-jax encode: error:" in done.stderr and "Traceback" not in done.stderr


def test_truncation_report_and_plain_progress_lines(tmp_path, tiny_bert_dir):
    source = tmp_path / "in.txt"
    long = "слово " * 200
    source.write_text(f"short\n{long}\nalso short\n{long}\n")
    out, report = tmp_path / "out.npy", tmp_path / "truncated.jsonl"
    done = _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--truncation-report", str(report),
                   "--chunk-rows", "1", "--log-every", "0")
    assert "2 truncated at 32 tokens" in done.stdout
    assert [json.loads(line)["line"] for line in report.read_text().splitlines()] == [2, 4]
    progress = [line for line in done.stderr.splitlines() if line.startswith("embedded ")]
    assert progress and "/4 texts" in progress[-1] and "tokens/s" in progress[-1] and "ETA" in progress[-1]


def test_bad_options_and_missing_files_are_one_line_errors(tmp_path, tiny_bert_dir):
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    out = str(tmp_path / "out.npy")
    for extra, message in (
        (["--prompt-name", "nope"], "prompt_name 'nope' is not defined"),
        (["--truncate-dim", "17"], "--truncate-dim 17 exceeds the model's 16 dimensions"),
        (["--chunk-rows", "0"], "chunk_rows must be positive"),
    ):
        done = _encode(str(source), "-o", out, "--model", str(tiny_bert_dir), *extra, check=False)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, extra
    missing = _encode(str(tmp_path / "none.txt"), "-o", out, "--model", str(tiny_bert_dir), check=False)
    assert missing.returncode == 2 and "none.txt: no such file" in missing.stderr


def test_written_files_are_readable_by_others(tmp_path, tiny_bert_dir):
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    _encode(str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir))
    assert (tmp_path / "out.npy").stat().st_mode & 0o044 == 0o044


def test_output_path_that_is_a_directory_is_refused(tmp_path, tiny_bert_dir):
    source = tmp_path / "in.txt"
    source.write_text("hello\n")
    (tmp_path / "out.npy").mkdir()
    done = _encode(str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), check=False)
    assert done.returncode == 2 and "out.npy is a directory" in done.stderr and "Traceback" not in done.stderr


def test_bom_nul_and_crlf_in_text_files(tmp_path, tiny, tiny_bert_dir):
    source = tmp_path / "in.txt"
    source.write_bytes(b"\xef\xbb\xbffirst line\r\nnul\x00inside\r\nlast")  # no final newline either
    out = tmp_path / "out.npy"
    _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir))
    got = np.load(out)
    want = tiny.encode(["first line", "nul\x00inside", "last"])
    assert got.shape == (3, 16) and np.isfinite(got).all() and np.abs(got - want).max() <= 1e-6


def test_non_finite_embeddings_stop_the_job_naming_file_and_line(tmp_path, overflowing_bert_dir):
    source = tmp_path / "in.txt"
    source.write_text("кот\nдом\nдом\nthe river\nкот\n")
    out = tmp_path / "out.npy"
    done = _encode(str(source), "-o", str(out), "--model", str(overflowing_bert_dir), "--chunk-rows", "2", check=False)
    assert done.returncode == 2 and "non-finite embeddings for 1 rows" in done.stderr and "in.txt:4" in done.stderr
    assert not out.exists()
    manifest = json.loads((tmp_path / "out.npy.parts" / "manifest.json").read_text())
    assert manifest["chunks"] == 1  # rows 1-2 committed; the chunk holding line 4 never is


def test_disk_full_keeps_committed_chunks_and_the_earlier_output(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    """ENOSPC surfaces at fsync on many filesystems: the third chunk's fsync fails. The earlier output stays,
    no temporary file is left, and --resume (with space again) gives the uninterrupted result."""
    import errno

    from berta_jax.cli import main

    source = _big_input(tmp_path / "in.txt", 500)
    reference = tmp_path / "reference.npy"
    common = ["--model", str(tiny_bert_dir), "--chunk-rows", "100", "--quiet"]
    assert main(["encode", str(source), "-o", str(reference), *common]) == 0
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
    assert main(["encode", str(source), "-o", str(out), *common, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "part-000002.npy" in err and "--resume" in err
    assert out.read_bytes() == b"an earlier output"
    assert not list(tmp_path.rglob("*.tmp"))
    assert json.loads((tmp_path / "out.npy.parts" / "manifest.json").read_text())["chunks"] == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["encode", str(source), "-o", str(out), *common, "--resume"]) == 0
    assert out.read_bytes() == reference.read_bytes()


def test_input_changed_during_the_run_is_refused_before_assembly(tmp_path, tiny):
    from berta_jax.job import JobError, JobOptions, run_job

    source = tmp_path / "in.txt"
    source.write_text("".join(f"line {i}\n" for i in range(30)))

    def append_once(summary) -> None:  # another program appends while the job runs
        if summary.chunks_done == 1:
            with source.open("a") as f:
                f.write("late line\n")

    with pytest.raises(JobError, match=r"in\.txt changed while it was being embedded; rerun with --overwrite"):
        run_job(tiny, [source], tmp_path / "out.npy", JobOptions(chunk_rows=10), progress=append_once)
    assert not (tmp_path / "out.npy").exists()


def _damaged_parquet(path: Path) -> Path:
    """A parquet file whose footer is intact but whose first data page is overwritten."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"текст номер {i}" * 5 for i in range(200)]}), path, compression="snappy")
    data = bytearray(path.read_bytes())
    data[20:400] = bytes(380)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "in.parquet").write_bytes(b"PAR1 not really") and d / "in.parquet",
         "in.parquet: not a readable parquet file"),
        (lambda d: _damaged_parquet(d / "in.parquet"), "in.parquet: row group 0 cannot be read"),
        (lambda d: (d / "in.csv").write_text("id,other\n1,x\n") and d / "in.csv",
         "in.csv:1: no column 'text' (columns: id, other)"),
        (lambda d: (d / "in.csv").write_bytes(b"text\nok\nbad \xff\n") and d / "in.csv", "in.csv:3: not valid UTF-8 in column 'text'"),
        (lambda d: (d / "in.jsonl").write_text('{"text": "ok"}\n["a list"]\n') and d / "in.jsonl",
         "in.jsonl:2: not a JSON object"),
        (lambda d: (d / "in.doc").write_text("x") and d / "in.doc", "in.doc: unknown input format"),
    ],
)
def test_malformed_files_are_named_with_row_group_or_line(make, message, tmp_path, tiny_bert_dir):
    source = make(tmp_path)
    done = _encode(str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), check=False)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_csv_quoted_newlines_long_fields_and_skipped_bad_bytes(tmp_path, tiny, tiny_bert_dir):
    long = "слово " * 40_000  # 240k characters: over the csv module's default field limit
    source = tmp_path / "in.csv"
    source.write_bytes(b"\xef\xbb\xbfid,text\r\n" + b'a,"two\nlines"\r\n' + f"b,{long}\r\n".encode()
                       + b"c,bad \xff byte\r\nd,last\r\n")
    out = tmp_path / "out.parquet"
    done = _encode(str(source), "-o", str(out), "--model", str(tiny_bert_dir), "--id-field", "id",
                   "--on-error", "skip")
    assert "1 skipped" in done.stdout
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["a", "b", "c", "d"]  # a skipped row keeps its id and place
    got = np.asarray(table.column("embedding").to_pylist(), np.float32)
    want = tiny.encode(["two\nlines", long, "last"])
    assert np.abs(got[[0, 1, 3]] - want).max() <= 1e-6 and not got[2].any()
    listed = [json.loads(line) for line in (tmp_path / "out.parquet.skipped.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in listed] == [(5, "not valid UTF-8 in column 'text'")]
