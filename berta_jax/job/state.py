"""The job's state on disk or in a bucket: one scheme for every backend, built on atomic create-if-absent.

- The lock (`OUT.lock`, `DIR/_lock.json`) is a lease naming the run that holds it: its id, host, pid and
  an expiry that a heartbeat thread pushes forward. It is taken with create-if-absent, so of two runs
  only one gets it, on local disk and on object storage alike. A lock whose owner is gone (same host and
  its process is dead, or its expiry passed) is taken over. Every commit first checks the lock still
  names this run.
- `job.json` in the work folder holds the fingerprint of what the output depends on; a resume compares it.
- A chunk is claimed per run (`claims/RUN/CCCCCC`, create-if-absent): of several processes one embeds it.
- Work is committed as segments: the data object is written first, then the record
  (`chunks/CCCCCC-SS.json`, create-if-absent) with the data's size and sha256, the rows it covers, the
  input digest of the chunk and its skipped / truncated rows. A segment counts only once its record
  exists and its data verifies.
- `end.json` records the chunk and row count once a process has read to the end of the inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import time
from typing import Any

from berta_jax.errors import JobError, StorageError
from berta_jax.jsonfields import Fields

FORMAT_VERSION = 1
_RECORD = re.compile(r"(\d{6})-(\d{2})\.json\Z")
_PART = re.compile(r"part-\d{6}-\d{2}-[0-9a-f]{8}\.npy\Z")  # a single-file output's parts, in the work folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_run_id() -> str:
    return os.urandom(8).hex()


def _proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_start(pid: int) -> str | None:
    """The start time of a process (Linux), so a reused pid is not taken for the lock's owner."""
    fields = _proc_stat(pid)
    return fields[19].decode() if fields and len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    """Whether the process still runs: not gone, not a zombie waiting to be reaped, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    if fields is not None and fields[0] in (b"Z", b"X"):
        return False
    return start is None or _pid_start(pid) in (None, start)


def read_json_record(store, path: str, what: str) -> Any | None:
    """A JSON state file, None when absent; a damaged one is a JobError naming it."""
    try:
        data = store.read(path)
    except FileNotFoundError:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise JobError(f"{store.url(path)}: {what} is damaged ({e}); it was not written by berta-jax or was edited. "
                       "Pass --overwrite to start this output again") from None


def dump_json(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=True, sort_keys=True).encode()


@dataclasses.dataclass
class Lease:
    """The lock of one output, held by one run."""

    store: Any
    path: str
    run: str
    ttl: float
    held: bool = False
    _thread: threading.Thread | None = None
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def _record(self, processes: int) -> dict:
        pid = os.getpid()
        return {"run": self.run, "host": socket.gethostname(), "pid": pid, "pid_start": _pid_start(pid),
                "processes": processes, "expires": time.time() + self.ttl}

    def acquire(self, processes: int = 1) -> None:
        """Take the lock, or raise JobError naming the run that holds it."""
        for _ in range(3):
            if self.store.create(self.path, dump_json(self._record(processes))):
                self.held = True
                return
            holder = self.holder()
            if holder is not None and _holder_alive(holder):
                raise JobError(f"{self.store.url(self.path)}: another run is writing this output (run "
                               f"{holder.get('run')}, pid {holder.get('pid')} on {holder.get('host')}); wait for it "
                               "to finish or stop it")
            self.store.delete(self.path)  # its owner is gone: take it over
        raise JobError(f"{self.store.url(self.path)}: could not take the lock (other runs keep taking it)")

    def holder(self) -> dict | None:
        try:
            record = read_json_record(self.store, self.path, "the lock")
        except JobError:
            return {}  # damaged: nobody can hold it
        return record if isinstance(record, dict) else {}

    def check(self) -> None:
        """Raise JobError unless the lock still names this run."""
        holder = self.holder()
        if not holder or holder.get("run") != self.run:
            raise JobError(f"{self.store.url(self.path)}: this run no longer holds the lock (now: "
                           f"{(holder or {}).get('run', 'nobody')}); it stops here. Committed chunks are kept")

    def start_heartbeat(self, processes: int) -> None:
        def beat() -> None:
            while not self._stop.wait(self.ttl / 4):
                try:
                    if self.holder().get("run") == self.run:
                        self.store.write(self.path, dump_json(self._record(processes)))
                except (OSError, StorageError):
                    pass  # a missed beat is retried; the next commit's check() reports a lost lock

        self._thread = threading.Thread(target=beat, name="berta-jax-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if this run holds it (safe to call twice)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and self.holder().get("run") == self.run:
            self.store.delete(self.path)
        self.held = False


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return _alive(holder["pid"], holder.get("pid_start"))
    expires = holder.get("expires")
    return isinstance(expires, (int, float)) and time.time() < expires


@dataclasses.dataclass(frozen=True)
class Segment:
    """A committed piece of one chunk: which of its rows, and the data object holding their vectors."""

    chunk: int
    segment: int
    run: str
    chunk_rows: int  # rows in the whole chunk
    rows: tuple[int, ...]  # offsets within the chunk covered by this segment, in data order
    data: str  # the data object's name (in the work folder, or the dataset directory)
    size: int
    sha256: str
    input_sha256: str  # digest of the chunk's input rows
    ids: tuple  # ids of `rows`
    skipped: tuple  # ({"file", "line", "reason"}, ...)
    truncated: tuple  # ({"file", "line"}, ...)
    tokens: int

    @staticmethod
    def record_name(chunk: int, segment: int) -> str:
        return f"{chunk:06d}-{segment:02d}.json"

    def to_json(self) -> bytes:
        return dump_json({**dataclasses.asdict(self), "rows": list(self.rows), "ids": list(self.ids),
                      "skipped": list(self.skipped), "truncated": list(self.truncated)})

    @classmethod
    def from_json(cls, raw: Any, source: str) -> Segment:
        f = Fields(raw, source)
        return cls(f.int("chunk", minimum=0), f.int("segment", minimum=0), f.str("run"), f.int("chunk_rows", minimum=0),
                   tuple(f.list("rows", item=lambda v: isinstance(v, int) and not isinstance(v, bool), what="integers")),
                   f.str("data"), f.int("size", minimum=0), f.str("sha256"), f.str("input_sha256"),
                   tuple(f.list("ids", item=lambda v: v is None or isinstance(v, str), what="ids")),
                   tuple(f.list("skipped", item=lambda v: isinstance(v, dict), what="objects")),
                   tuple(f.list("truncated", item=lambda v: isinstance(v, dict), what="objects")),
                   f.int("tokens", minimum=0))


class WorkFolder:
    """The records, claims and data of one output's work in progress."""

    def __init__(self, store, root: str, data_root: str):
        self.store, self.root, self.data_root = store, root, data_root
        self.created = False  # by this run (so a run stopped before any commit can remove it again)

    def path(self, *names: str) -> str:
        return self.store.join(self.root, *names)

    @staticmethod
    def part_name(chunk: int, segment: int, run: str) -> str:
        """The work-folder file of one segment of a single-file output."""
        return f"part-{chunk:06d}-{segment:02d}-{run[:8]}.npy"

    def data_path(self, name: str) -> str:
        return self.store.join(self.data_root, name)

    def job(self) -> dict | None:
        record = read_json_record(self.store, self.path("job.json"), "the work folder's job record")
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("fingerprint"), dict)):
            raise JobError(f"{self.store.url(self.path('job.json'))}: the job record is damaged; pass --overwrite "
                           "to start this output again")
        return record

    def create_job(self, fingerprint: dict) -> None:
        self.created = True
        self.store.makedirs(self.root)
        record = {"format": "berta-jax-work", "version": FORMAT_VERSION, "fingerprint": fingerprint}
        if not self.store.create(self.path("job.json"), dump_json(record)):
            raise JobError(f"{self.store.url(self.path('job.json'))}: another run created this work folder meanwhile")

    def claim(self, run: str, chunk: int, process: int) -> bool:
        record = {"run": run, "process": process, "host": socket.gethostname(), "pid": os.getpid()}
        return self.store.create(self.path("claims", run, f"{chunk:06d}"), dump_json(record))

    def claim_holder(self, run: str, chunk: int) -> dict | None:
        try:
            return read_json_record(self.store, self.path("claims", run, f"{chunk:06d}"), "a claim")
        except JobError:
            return None

    def commit(self, segment: Segment, data: bytes) -> None:
        """Write the data object, then its record: the segment counts from the moment the record exists."""
        self.store.write(self.data_path(segment.data), data)
        if not self.store.create(self.path("chunks", Segment.record_name(segment.chunk, segment.segment)),
                                 segment.to_json()):
            raise JobError(f"chunk {segment.chunk} segment {segment.segment} was committed by another run meanwhile")

    def segments(self) -> tuple[list[Segment], list[str]]:
        """The committed segments and the names of records that are damaged (their chunks are re-embedded)."""
        good, damaged = [], []
        for name in self.store.list(self.path("chunks")):
            if not _RECORD.match(name):
                continue
            path = self.path("chunks", name)
            try:
                good.append(Segment.from_json(read_json_record(self.store, path, "a chunk record"), path))
            except (JobError, ValueError):
                damaged.append(name)
        return good, damaged

    def end(self) -> dict | None:
        record = read_json_record(self.store, self.path("end.json"), "the end record")
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("chunks"), int)):
            return None
        return record

    def record_end(self, chunks: int, rows: int) -> None:
        record = {"chunks": chunks, "rows": rows}
        if not self.store.create(self.path("end.json"), dump_json(record)):
            if self.end() not in (None, record):
                raise JobError(f"{self.store.url(self.path('end.json'))}: the inputs now hold {rows} rows in {chunks} "
                               "chunks, not what an earlier pass read; they changed. Pass --overwrite")

    def heartbeat(self, run: str, process: int) -> None:
        record = {"run": run, "process": process, "host": socket.gethostname(), "pid": os.getpid(),
                  "pid_start": _pid_start(os.getpid()), "time": time.time()}
        self.store.write(self.path("heartbeats", f"{run}-{process}.json"), dump_json(record))

    def peer_alive(self, run: str, process: int, ttl: float) -> bool:
        """Whether process `process` of `run` has a live heartbeat (its pid on this host, a fresh time elsewhere)."""
        return self._peer_state(run, process, ttl) == "alive"

    def peer_dead(self, run: str, process: int, ttl: float) -> bool:
        """Whether the heartbeat of `process` says it died without leaving (a leaver removes its heartbeat)."""
        return self._peer_state(run, process, ttl) == "dead"

    def _peer_state(self, run: str, process: int, ttl: float) -> str:
        try:
            record = read_json_record(self.store, self.path("heartbeats", f"{run}-{process}.json"), "a heartbeat")
        except JobError:
            return "dead"  # a damaged heartbeat is no sign of life
        if not isinstance(record, dict):
            return "absent" if record is None else "dead"
        if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
            return "alive" if _alive(record["pid"], record.get("pid_start")) else "dead"
        beat = record.get("time")
        fresh = isinstance(beat, (int, float)) and time.time() - beat < ttl
        return "alive" if fresh else "dead"

    def remove_record(self, name: str) -> None:
        self.store.delete(self.path("chunks", name))

    def remove(self, names: list[str]) -> None:
        """Delete the work folder's own files (records, claims, heartbeats, data it names), then the folder."""
        for sub in ("chunks", "heartbeats"):
            for name in self.store.list(self.path(sub)):
                self.store.delete(self.path(sub, name))
            self.store.remove_empty_folder(self.path(sub))
        for run in self.store.list(self.path("claims")):
            for name in self.store.list(self.path("claims", run)):
                self.store.delete(self.path("claims", run, name))
            self.store.remove_empty_folder(self.path("claims", run))
        self.store.remove_empty_folder(self.path("claims"))
        for name in [*names, "end.json", "job.json"]:
            self.store.delete(self.path(name) if "/" not in name else name)
        for name in self.store.list(self.root):  # a writer killed mid-write, or between a part and its record
            if (name.startswith(".") and name.endswith(".tmp")) or _PART.match(name):
                self.store.delete(self.path(name))
        self.store.remove_empty_folder(self.root)

    def holds_work(self) -> bool:
        """Whether anything was committed here (a segment record, or the end record)."""
        return bool(self.store.list(self.path("chunks"))) or self.store.exists(self.path("end.json"))

    def runs(self) -> list[str]:
        return self.store.list(self.path("claims"))
