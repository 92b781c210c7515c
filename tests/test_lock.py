"""Class C: one lock per output, whatever the process count.

The lock is a lease taken with create-if-absent (the same on local disk and in a bucket): a second run, single
or multi-process, with or without --overwrite, is refused while the first is alive; a dead owner's lock is
taken over at once on the same host, and after its expiry from elsewhere.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time

import numpy as np

from berta_jax import JobError
from berta_jax.job.state import Lease, dump_json
from berta_jax.storage import store_for
from tests.helpers import berta_jax, committed_parts, start_berta_jax, tree_hashes, wait_for
from tests.test_job import big_input


def test_a_second_run_single_or_multi_process_is_refused_while_the_first_works(tmp_path, tiny_bert_dir):
    source = big_input(tmp_path / "in.txt", 12_000)  # a dozen seconds of work: time for the contenders
    out = tmp_path / "out.npy"
    common = ["--model", str(tiny_bert_dir), "--split-size", "4K", "--quiet"]
    first = start_berta_jax("encode", str(source), "-o", str(out), *common, "--max-batch-tokens", "256",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: committed_parts(tmp_path / "out.npy.parts") >= 1, first)
    first.send_signal(signal.SIGSTOP)  # the holder stays alive and holding, however fast this machine is
    single = berta_jax("encode", str(source), "-o", str(out), *common, "--overwrite", check=False)
    assert single.returncode == 2 and "another run is writing this output" in single.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pair = [start_berta_jax("encode", str(source), "-o", str(out), *common, "--overwrite", "--coordinator",
                            f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in pair]
    assert [p.returncode for p in pair] == [2, 2], [re.sub(r"\n *@.*", "", r[1])[-3000:] for r in results]
    assert all("another run is writing this output" in r[1] for r in results)
    first.send_signal(signal.SIGCONT)
    assert first.poll() is None or first.returncode == 0  # the first run was not disturbed
    assert first.wait(timeout=300) == 0 and np.load(out).shape == (12_000, 16)


def _lease(tmp_path, run: str = "b" * 16) -> Lease:
    return Lease(store_for(str(tmp_path)), str(tmp_path / "out.npy.lock"), run, ttl=60.0)


def _holder(tmp_path, **fields) -> None:
    record = {"run": "a" * 16, "host": "elsewhere", "pid": 1, "pid_start": None, "processes": 1,
              "expires": time.time() + 60, **fields}
    (tmp_path / "out.npy.lock").write_bytes(dump_json(record))


def test_a_lease_from_another_host_is_honoured_until_it_expires(tmp_path):
    _holder(tmp_path)
    before = tree_hashes(tmp_path)
    try:
        _lease(tmp_path).acquire()
        raise AssertionError("the lock was taken from a live holder")
    except JobError as e:
        assert "run aaaaaaaaaaaaaaaa, pid 1 on elsewhere" in str(e)
    assert tree_hashes(tmp_path) == before
    _holder(tmp_path, expires=time.time() - 1)
    lease = _lease(tmp_path)
    lease.acquire()
    assert json.loads((tmp_path / "out.npy.lock").read_text())["run"] == "b" * 16
    lease.check()
    lease.release()
    assert not (tmp_path / "out.npy.lock").exists()


def test_a_dead_process_on_this_host_loses_its_lock_at_once(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _holder(tmp_path, host=socket.gethostname(), pid=dead.pid, expires=time.time() + 3600)
    lease = _lease(tmp_path)
    lease.acquire()  # no waiting for the expiry: the owner is gone
    _holder(tmp_path, run="c" * 16)  # someone else took it over meanwhile
    try:
        lease.check()
        raise AssertionError("a lost lock went unnoticed")
    except JobError as e:
        assert "no longer holds the lock" in str(e)
