"""The lock of one output: of any number of runs racing for it, exactly one holds it.

- Local disk: an advisory `flock` on the lock file (`OUT.lock`, `DIR/_lock.json`). The kernel gives
  it to one process at a time and takes it back when that process ends, however it ends, so there is
  no expiry to judge and no process to probe. The file names the holding run, for messages and for
  the run's other processes.
- Object storage: a lease object, taken with create-if-absent, and renewed, taken over and released
  only with the store's precondition on the version last seen (Cloud Storage generation, S3 ETag):
  of two runs acting on one version, one succeeds. A lease has expired when the store's own clock
  says it was not renewed for `ttl` seconds (its last-write time against that of a probe object
  written just now): the clocks of two hosts are never compared.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading

from berta_jax.errors import JobError, StorageError
from berta_jax.storage.stores import store_for

LEASE_TTL = 60.0  # seconds a remote lease stays valid without renewal (renewed every ttl / 4)


def _record(run: str, ttl: float = 0.0, renewal: int = 0) -> bytes:
    holder = {
        "run": run,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "ttl": ttl,
        "renewal": renewal,
    }
    return json.dumps(holder, sort_keys=True).encode()


def _describe(raw: bytes | None) -> str:
    try:
        h = json.loads(raw or b"")
        return f"run {h['run']}, pid {h['pid']} on {h['host']}"
    except (ValueError, KeyError, TypeError):
        return "a run whose lock record is not berta-jax's"


def _ttl(raw: bytes, default: float) -> float:
    try:
        ttl = json.loads(raw)["ttl"]
        return float(ttl) if isinstance(ttl, (int, float)) and ttl > 0 else default
    except (ValueError, KeyError, TypeError):
        return default


def _busy(url: str, raw: bytes | None) -> JobError:
    return JobError(
        f"{url}: another run is writing this output ({_describe(raw)}); wait for it to finish or "
        "stop it"
    )


def holder_run(path: str) -> str | None:
    """The run named by the lock at `path`, or None (absent or unreadable)."""
    try:
        return json.loads(store_for(path).read(path)).get("run")
    except (FileNotFoundError, ValueError, AttributeError, StorageError):
        return None


class LocalLock:
    """flock on a local lock file; see the module."""

    def __init__(self, path: str, run: str):
        self.path, self.run, self._fd = path, run, None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 4096, 0)
                os.close(fd)
                raise _busy(self.path, raw) from None
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same and os.fstat(fd).st_nlink > 1:
                os.close(fd)
                raise JobError(
                    f"{self.path}: the lock file has other hard links; writing it would change "
                    "them. Remove it (no run holds it)"
                )
            if same:  # else its holder removed it between our open and flock: take the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record(self.run), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file, while still holding it, only if the path still names the file this
        run holds: one removed by hand while the run held it may since be another run's lock.

        A race remains: a file removed and recreated (by hand, then by another run's acquire)
        between the comparison and the unlink would be removed; POSIX has no unlink-if-inode.
        The window is two system calls wide, and a run never removes another's lock file itself."""
        if self._fd is None:
            return
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass  # removed by hand: nothing of this run's is left to remove
        finally:
            os.close(self._fd)
            self._fd = None


class Lease:
    """A lease object on a remote store; see the module."""

    def __init__(self, path: str, run: str, ttl: float = LEASE_TTL):
        self.path, self.run, self.ttl, self.store = path, run, ttl, store_for(path)
        self.version: str | None = None
        self.lost = False
        self._renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        for _ in range(3):
            if self.store.create(self.path, _record(self.run, self.ttl)):
                return self._held()
            try:
                seen, raw = self.store.info(self.path), self.store.read(self.path)
            except FileNotFoundError:
                continue  # released meanwhile
            if self._store_now() - seen.modified < _ttl(raw, self.ttl):  # the holder's own term
                raise _busy(self.path, raw)
            if self.store.replace_if(self.path, _record(self.run, self.ttl), seen.version):
                # taken over from an expired holder; any other contender's replace fails
                return self._held()
        raise JobError(
            f"{self.path}: could not take the lock (other runs keep taking it); try again"
        )

    def _store_now(self) -> float:
        probe = f"{self.path}.clock-{self.run[:8]}"  # one per contender
        self.store.write(probe, _record(self.run))
        try:
            return self.store.info(probe).modified
        finally:
            self.store.delete(probe)

    def _held(self) -> None:
        self.version = self.store.info(self.path).version
        self._thread = threading.Thread(target=self._renew, name="berta-jax-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self._renewals += 1
            try:
                if not self.store.replace_if(
                    self.path, _record(self.run, self.ttl, self._renewals), self.version
                ):
                    self.lost = True
                    return
                self.version = self.store.info(self.path).version
            except (OSError, StorageError):
                continue  # retried at the next beat; a lease lost meanwhile shows at the commit

    @property
    def held(self) -> bool:
        return self.version is not None

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.version is not None and not self.lost:
            self.store.delete_if(self.path, self.version)
        self.version = None


def lock_for(path: str, run: str) -> LocalLock | Lease:
    return Lease(path, run) if store_for(path).remote else LocalLock(path, run)
