"""What a stop keeps and what the job says about it: a split is about a minute of work on the device (the
unit of a stop; test_job_edges checks that a resume keeps the earlier run's size), the stop messages count
what is committed, a refusal names exactly what changed, a second signal is never lost, and the progress
display shows the same embedding rate as the final line on any terminal."""

from __future__ import annotations

import json
import os
import signal
import threading
import types

import pytest

from berta_jax.cli import main
from berta_jax.job.split_size import (ASSUMED_FLOPS, BYTES_PER_TOKEN, SECONDS_PER_SPLIT, default_split_bytes,
                                      flops_per_token)
from berta_jax.job.summary import JobSummary
from tests.helpers import committed_parts
from tests.test_job import big_input

BERTA = types.SimpleNamespace(hidden_size=768, num_hidden_layers=12, intermediate_size=3072)
MINILM = types.SimpleNamespace(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)


def _seconds(size: int, platform: str, config) -> float:
    return size / BYTES_PER_TOKEN * flops_per_token(config) / ASSUMED_FLOPS[platform]


@pytest.mark.parametrize("platform, config, expected", [
    ("cpu", BERTA, 16 << 10), ("cpu", MINILM, 128 << 10), ("gpu", BERTA, 4 << 20), ("tpu", MINILM, 4 << 20),
])
def test_the_default_split_is_at_most_about_a_minute_of_work_on_the_device(platform, config, expected):
    size = default_split_bytes(platform, config)
    assert size == expected
    assert _seconds(size, platform, config) <= SECONDS_PER_SPLIT  # a stop loses at most about a minute
    if size < 4 << 20:  # not at the ceiling: twice the size would be more than a minute
        assert _seconds(2 * size, platform, config) > SECONDS_PER_SPLIT


def encode(*args: str) -> int:
    return main(["encode", *args, "--quiet"])


def stop_when(monkeypatch, condition) -> None:
    from berta_jax.cli import encode as cli_encode

    monkeypatch.setattr(cli_encode.StopSignals, "__call__", lambda self: condition())


def test_a_stop_says_what_it_keeps(tmp_path, tiny_bert_dir, monkeypatch, capsys):
    source = big_input(tmp_path / "in.txt", 400)
    args = [str(source), "-o", str(tmp_path / "out.npy"), "--model", str(tiny_bert_dir), "--max-batch-tokens", "64"]
    polls = {"n": 0}

    def after_three_batches() -> bool:
        polls["n"] += 1
        return polls["n"] >= 3

    stop_when(monkeypatch, after_three_batches)
    assert encode(*args) == 130
    err = capsys.readouterr().err
    assert "stopped: nothing is committed yet: the first split is " in err
    done = int(err.split("the first split is ")[1].split("%")[0])
    assert 0 < done < 100 and "(a split is 4M of text here; --split-size sets it)" in err
    monkeypatch.undo()
    stop_when(monkeypatch, lambda: committed_parts(tmp_path / "out.npy.parts") >= 3)
    assert encode(*args, "--overwrite", "--split-size", "2K") == 130
    err = capsys.readouterr().err
    total = json.loads((tmp_path / "out.npy.parts" / "job.json").read_text())
    splits = len(total["counts"])
    assert f"stopped: 3 of {splits} splits committed and kept; the split in flight" in err and splits > 3


def test_a_refusal_names_exactly_what_changed(tmp_path, tiny_bert_dir, capsys):
    """An output written from corpus.txt (its final line gives the embedding rate and the start-up apart), asked
    for from c200.txt: the inputs removed and added by name, and no option (the splits differ only because the
    inputs do); another --precision names only that option."""
    corpus, other = big_input(tmp_path / "corpus.txt", 50), big_input(tmp_path / "c200.txt", 200)
    out, model = str(tmp_path / "corpus.npy"), ["--model", str(tiny_bert_dir)]
    assert encode(str(corpus), "-o", out, *model) == 0
    line = capsys.readouterr().out  # the final line: the embedding rate, and the start-up apart
    rate = float(line.split(" texts/s")[0].rsplit(" ", 1)[1])
    startup, load, compiling = (float(line.split(f"{word} ")[1].split(" s")[0])
                                for word in ("(start-up", "loading", "compiling"))
    assert rate > 0 and " s of embedding (start-up " in line
    assert load > 0 and compiling > 0 and abs(startup - load - compiling) <= 0.11
    assert encode(str(other), "-o", out, *model) == 2
    err = capsys.readouterr().err
    assert f"different inputs ({corpus} removed, {other} added) wrote it" in err
    assert "split" not in err and "options" not in err
    assert encode(str(corpus), "-o", out, *model, "--precision", "float16") == 2
    err = capsys.readouterr().err
    assert "different options (--precision) wrote it" in err and "inputs" not in err and "split" not in err


def test_a_second_signal_is_counted_even_when_the_first_handler_ran_once_for_both(monkeypatch):
    """Two signals that arrive while the main thread computes in native code run Python's handler once; the
    interpreter's wakeup fd gets one byte per signal, and the watcher counts each: two bytes in one read (what
    the two signals leave there) abort with exit 130, naming what is kept."""
    import io

    from berta_jax.cli import signals

    exits, ended = [], threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        ended.set()

    monkeypatch.setattr(signals.os, "_exit", fake_exit)
    stream = io.StringIO()
    stop = signals.StopSignals(stream=stream).install()
    try:
        stop.arm()
        stop.describe = lambda: "2 of 5 splits committed and kept"
        os.write(stop._write, bytes([signal.SIGINT, signal.SIGINT]))
        assert ended.wait(timeout=60) and exits == [130] and stop()
    finally:
        stop.restore()
    said = stream.getvalue()
    assert "SIGINT: stopping after the current batch; 2 of 5 splits committed and kept" in said
    assert "aborted; 2 of 5 splits committed and kept. Rerun with --resume" in said and "chunk" not in said


def _summary(**fields) -> JobSummary:
    return JobSummary(**{"rows": 100, "tokens": 2000, "embed_seconds": 10.0, "fraction": 0.25,
                         "total_rows": 400, **fields})


def _read_all(master: int) -> str:
    """What was written to a pseudo-terminal whose other side is closed (EIO at the end)."""
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def test_progress_on_a_terminal_that_says_0x0_falls_back_to_lines():
    """`script -q -c ...` gives a terminal of 0 columns: a bar there draws nothing, so lines are written."""
    from berta_jax.cli.progress import ProgressDisplay

    master, slave = os.openpty()  # a new pseudo-terminal is 0x0 until someone sets its size
    with os.fdopen(slave, "w") as stream:
        assert stream.isatty() and os.get_terminal_size(slave).columns == 0
        display = ProgressDisplay(log_every=0, stream=stream)
        assert display.bar is None
        display(_summary())
        display.close()
    text = _read_all(master)
    assert text.startswith("embedded 100/400 texts, 25% (0 resumed), 10.0 texts/s, 200 tokens/s, ETA 30 s")


def test_the_last_status_is_shown_when_the_display_closes():
    """Lines come every `log_every` seconds; the last status (after the last commit) is printed at the end, so
    the last line and the final report give the same figures."""
    import io

    from berta_jax.cli.progress import ProgressDisplay

    stream = io.StringIO()
    display = ProgressDisplay(log_every=3600, stream=stream)
    display(_summary())
    display(_summary(rows=400, tokens=8000, embed_seconds=40.0, fraction=1.0))
    assert stream.getvalue().count("\n") == 1
    display.close()
    assert stream.getvalue().splitlines()[-1].startswith("embedded 400/400 texts, 100% (0 resumed), 10.0 texts/s")


def test_the_bar_shows_texts_per_second_and_starts_without_a_comma():
    import fcntl
    import struct
    import termios

    from berta_jax.cli.progress import ProgressDisplay

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    with os.fdopen(slave, "w") as stream:
        display = ProgressDisplay(log_every=0, stream=stream)
        assert display.bar is not None
        display(_summary())
        display.bar.refresh()
        display.close()
    text = _read_all(master)
    shown = text.replace("\r", "\n").strip().splitlines()[-1]
    assert "| 100/400 texts, 25% (0 resumed), 10.0 texts/s, 200 tokens/s, ETA 30 s" in shown
    assert "| ," not in shown


def test_the_eta_and_the_rates_count_embedding_time_only():
    """Start-up (loading, compiling) is not embedding: at 25% after 10 s of embedding the ETA is 30 s whatever
    the start-up took, and the rates divide by the same 10 s."""
    from berta_jax.cli.progress import _status

    slow_start = _summary(load_seconds=50.0, compile_seconds=100.0)
    assert _status(slow_start) == _status(_summary()) and "ETA 30 s" in _status(slow_start)
    assert slow_start.texts_per_second == 10.0 and slow_start.tokens_per_second == 200.0
