"""Class G: signals. SIGTERM is Ctrl-C; the first is acknowledged at once and honoured within one batch (the
splits done are committed, the one in flight is embedded again by a resume); a second aborts, leaving only
committed state; a signal during start-up exits 130 cleanly; a stop that comes after the last batch still
finishes the job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from berta_jax.cli import main
from tests.helpers import berta_jax, committed_parts, start_berta_jax, wait_for
from tests.test_job import big_input


@pytest.fixture(scope="module")
def job(tiny_bert_dir, tmp_path_factory):
    """A 1500-line input in 3 splits of about 500 rows, batches of at most 16 texts (packed or not), and its
    reference output."""
    folder = tmp_path_factory.mktemp("signals")
    source = big_input(folder / "in.txt", 1500)
    common = ["--model", str(tiny_bert_dir), "--split-size", "20K", "--max-batch-tokens", "256", "--batch-size", "16",
              "--quiet"]
    assert main(["encode", str(source), "-o", str(folder / "reference.npy"), *common]) == 0
    return source, common, folder / "reference.npy"


def _started(source, out, common) -> subprocess.Popen:
    proc = start_berta_jax("encode", str(source), "-o", str(out), *common, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: committed_parts(out.parent / f"{out.name}.parts") >= 1, proc)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_the_first_signal_stops_within_a_batch_and_resume_finishes(job, tmp_path, sig):
    """Signalled in the middle of split 1 (seen in the per-batch progress lines): the run stops within a batch,
    says so at once, exits 130 with split 0 committed and split 1 not, and the resume gives the reference bytes."""
    source, common, reference = job
    out = tmp_path / "out.npy"
    args = [a for a in common if a != "--quiet"]
    proc = start_berta_jax("encode", str(source), "-o", str(out), *args, "--log-every", "0",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:
        if line.startswith("embedded "):
            seen = int(line.split()[1].split("/")[0])
            if seen >= 560:  # split 1 (rows ~500-999) is under way
                break
    proc.send_signal(sig)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert f"{signal.Signals(sig).name}: stopping after the current batch" in err and "--resume" in err
    records = [json.loads(p.read_text()) for p in (tmp_path / "out.npy.parts").glob("*.json") if p.stem.isdigit()]
    assert [r["split"] for r in records] == [0] and records[0]["rows"] < seen
    berta_jax("encode", str(source), "-o", str(out), *common, "--resume")
    assert out.read_bytes() == reference.read_bytes()


def test_a_second_signal_aborts_leaving_only_committed_state(job, tmp_path):
    source, common, reference = job
    out = tmp_path / "out.npy"
    proc = _started(source, out, common)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "aborted" in err and not out.exists()
    berta_jax("encode", str(source), "-o", str(out), *common, "--resume")
    assert out.read_bytes() == reference.read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))  # whatever an aborted write left, the resume removed


def test_a_signal_during_start_up_exits_130_and_leaves_nothing(job, tmp_path):
    source, common, _ = job
    proc = start_berta_jax("encode", str(source), "-o", str(tmp_path / "out.npy"), *common, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    # the lock appears once the checks pass, before the model is loaded: the middle of start-up
    assert wait_for(lambda: (tmp_path / "out.npy.lock").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "Exception ignored" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_stop_after_the_last_batch_still_finishes_the_job(job, tmp_path, monkeypatch, capsys):
    source, common, reference = job
    from berta_jax.cli import encode as cli_encode

    out = tmp_path / "out.npy"
    splits = json.loads(reference.with_name("reference.npy.manifest.json").read_text())["splits"]
    monkeypatch.setattr(cli_encode.StopSignals, "__call__",
                        lambda self: committed_parts(tmp_path / "out.npy.parts") >= splits)
    assert main(["encode", str(source), "-o", str(out), *common]) == 0
    assert "wrote" in capsys.readouterr().out and out.read_bytes() == reference.read_bytes()
    assert np.load(out).shape == (1500, 16)


def test_a_signal_while_the_model_loads_interrupts_once_loading_is_over():
    from berta_jax.cli.signals import StopSignals

    stop, steps = StopSignals(), []
    with pytest.raises(KeyboardInterrupt):
        with stop.held():
            stop._handle(signal.SIGTERM, None)  # what the interpreter calls when SIGTERM arrives
            stop._handle(signal.SIGINT, None)  # a second one does not end the process mid-import either
            steps.append("loaded")
    assert steps == ["loaded"] and stop()
    with pytest.raises(KeyboardInterrupt):  # outside the block, before arming: at once
        StopSignals()._handle(signal.SIGTERM, None)
    armed = StopSignals(stream=open(os.devnull, "w"))
    armed.arm()
    with armed.held():
        armed._handle(signal.SIGTERM, None)  # armed: a graceful stop request, nothing raised
    assert armed()


def test_sigterm_to_process_0_waiting_for_a_stalled_peer_is_honoured(tmp_path, tiny_bert_dir):
    """jax.distributed takes SIGTERM for its preemption notifier, and a meeting waits in native code: process 0
    still stops at once (exit 130) when its peer is frozen, with what was committed kept."""
    import socket

    source = big_input(tmp_path / "in.txt", 1500)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["encode", str(source), "-o", f"{tmp_path}/out/", "--model", str(tiny_bert_dir), "--split-size", "2K",
            "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--peer-timeout", "600"]
    first = start_berta_jax(*args, "--process-id", "0", stderr=subprocess.PIPE, text=True)
    peer = start_berta_jax(*args, "--process-id", "1", stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(list((tmp_path / "out").glob("part-*.parquet"))) >= 2, first)
        peer.send_signal(signal.SIGSTOP)  # process 0 ends up waiting for it, at the end meeting or before
        time.sleep(3)
        first.send_signal(signal.SIGTERM)
        # the peer's heartbeat timeout is 600 s: an exit within this hang guard was not the peer's timeout
        assert first.wait(timeout=300) == 130
        assert "--resume" in first.stderr.read()
    finally:
        peer.send_signal(signal.SIGCONT)
        peer.kill()
        peer.wait()


def _in_jax_start_up(proc: subprocess.Popen, port: int, process_id: str) -> bool:
    """Process 0: JAX's coordination service listens (it waits for its peer next); a peer: jaxlib is loaded
    (it imports JAX only to start, and its signals count from before)."""
    if process_id == "0":
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        return "jaxlib" in open(f"/proc/{proc.pid}/maps").read()
    except OSError:
        return False


@pytest.mark.parametrize("process_id", ["0", pytest.param("1", marks=pytest.mark.slow)])
def test_sigterm_while_jax_distributed_starts_exits_130_at_once(tmp_path, tiny_bert_dir, process_id):
    """Process 0 waiting for a peer that never comes, or a peer waiting for a coordinator that never comes (JAX
    waits 300 s in native code, where SLURM and Kubernetes send SIGTERM): exit 130 within seconds, nothing
    written."""
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_berta_jax("encode", str(tmp_path / "in.txt"), "-o", f"{tmp_path}/out/", "--model",
                           str(tiny_bert_dir), "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                           "2", "--process-id", process_id, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _in_jax_start_up(proc, port, process_id), proc, timeout=60)
        time.sleep(2)  # waiting inside jax.distributed.initialize
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert proc.wait(timeout=30) == 130 and time.monotonic() - start < 5
        err = proc.stderr.read()
        assert "interrupted while the processes of the run were meeting" in err and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
    finally:
        proc.kill()
        proc.wait()
