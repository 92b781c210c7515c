"""Class C: one lock per output, whatever the process count.

On local disk the lock is an flock, which the kernel frees when its holder ends; in a bucket a lease, taken with
create-if-absent and taken over only with the store's precondition once the store's clock says it expired. A
second run, single or multi-process, with or without --overwrite, is refused while the first is alive.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np

import sys
import threading

import pytest

from berta_jax import JobError
from berta_jax.job.lock import Lease, LocalLock, holder_run
from berta_jax.storage.stores import store_for
from tests.helpers import REPO, berta_jax, committed_parts, start_berta_jax, wait_for
from tests.test_job import big_input
from tests.test_storage import bucket, stores  # noqa: F401 (the fixture)


def test_a_second_run_single_or_multi_process_is_refused_while_the_first_works(tmp_path, tiny_bert_dir):
    source = big_input(tmp_path / "in.txt", 3_000)
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
    assert first.wait(timeout=300) == 0 and np.load(out).shape == (3_000, 16)


def test_a_live_holder_on_this_host_refuses_and_a_dead_one_loses_the_lock_at_once(tmp_path):
    """flock: the kernel holds the lock for a live process (whatever its pid namespace) and frees it when the
    process ends, however it ends; no expiry, no pid probing."""
    path = str(tmp_path / "out.npy.lock")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from berta_jax.job.lock import LocalLock
LocalLock({path!r}, "a" * 16).acquire()
print("held", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(JobError, match=f"another run is writing this output \\(run {'a' * 16}, pid {holder.pid} on "):
        LocalLock(path, "b" * 16).acquire()
    holder.kill()
    holder.wait()
    lock = LocalLock(path, "b" * 16)
    lock.acquire()  # at once: its holder is gone
    assert holder_run(path) == "b" * 16 and lock.held
    lock.release()
    assert not (tmp_path / "out.npy.lock").exists()


@pytest.fixture
def root(stores):
    return bucket("gs")


def test_a_release_removes_only_the_lock_file_its_run_holds(tmp_path):
    """A lock file removed by hand while its run held it, then taken by a second run: the first run's release must
    leave the second's lock in place (and a lock file removed and not replaced is no error)."""
    path = str(tmp_path / "out.npy.lock")
    first = LocalLock(path, "a" * 16)
    first.acquire()
    os.unlink(path)
    second = LocalLock(path, "b" * 16)
    second.acquire()
    first.release()
    assert holder_run(path) == "b" * 16 and not first.held
    with pytest.raises(JobError, match="another run is writing this output"):
        LocalLock(path, "c" * 16).acquire()
    second.release()
    assert not os.path.exists(path)
    third = LocalLock(path, "c" * 16)
    third.acquire()
    os.unlink(path)
    third.release()
    assert not os.path.exists(path) and not third.held


def test_a_lease_in_a_bucket_is_honoured_until_the_store_says_it_expired(root):
    path = f"{root}/emb/_lock.json"
    first = Lease(path, "a" * 16, ttl=600)
    first.acquire()
    first._stop.set()  # its holder stops renewing (as a host that froze would)
    with pytest.raises(JobError, match="another run is writing this output"):  # 600 s: however slow this machine
        Lease(path, "b" * 16, ttl=1.5).acquire()
    record = json.loads(first.store.read(path))
    assert first.store.replace_if(path, json.dumps({**record, "ttl": 1}).encode(), first.version)
    first.version = first.store.info(path).version  # its last renewal said 1 s
    time.sleep(1.1)
    second = Lease(path, "b" * 16, ttl=1.5)
    second.acquire()  # expired by the store's clock: taken over
    assert holder_run(path) == "b" * 16
    first.lost = not first.store.replace_if(path, b"{}", first.version)  # its next renewal fails
    assert first.lost and holder_run(path) != first.run  # what every process checks before each commit
    first.release()  # a lost lease is not deleted: it is the other run's now
    assert holder_run(path) == "b" * 16
    second.release()
    assert not store_for(root).exists(path)


def test_of_runs_racing_for_an_expired_lease_exactly_one_takes_it(root):
    """Each contender judged the same expired version and replaces it with the store's precondition: one wins."""
    path = f"{root}/emb/_lock.json"
    stale = Lease(path, "0" * 16, ttl=0.5)
    stale.acquire()
    stale._stop.set()
    time.sleep(0.7)
    contenders, outcomes = [Lease(path, f"{i:x}" * 16, ttl=60) for i in range(1, 7)], []
    barrier = threading.Barrier(len(contenders))

    def take(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append(lease.run)
        except JobError:
            pass

    threads = [threading.Thread(target=take, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 1 and holder_run(path) == outcomes[0]
    for c in contenders:
        c.release()


def test_a_host_with_a_slow_clock_does_not_take_over_a_live_lease(root, monkeypatch):
    path = f"{root}/emb/_lock.json"
    live = Lease(path, "a" * 16, ttl=60)
    live.acquire()
    monkeypatch.setattr(time, "time", lambda: 10**10)  # this host's clock is far off; the store's is not
    with pytest.raises(JobError, match="another run is writing this output"):
        Lease(path, "b" * 16, ttl=60).acquire()
    monkeypatch.undo()
    live.release()
