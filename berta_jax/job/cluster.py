"""The processes of one run and the few times they meet, through `jax.distributed`'s public API
only.

A run's processes meet four times, all of them at the same points of the same program: to compare
their plans, to hear process 0's settlement of what is on disk, to share the row counts of the
splits they counted, and at the end. A meeting is an all-gather of bytes among the processes, inside
`multihost_utils.live_devices`, so a process that died makes the meeting fail on every other one
(after JAX's heartbeat timeout) instead of hanging it. Process 0 hosts JAX's coordination service,
and JAX stops every process still connected when it goes: it leaves last, once the others have
disconnected or died.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

from berta_jax.errors import BertaJaxError, JobError


class Cluster:
    """One process: every meeting is with itself."""

    index: int = 0
    count: int = 1
    # a meeting was left while JAX still waited in it (see JaxCluster._wait)
    abandoned: bool = False

    def gather(self, data: bytes) -> list[bytes]:
        """Every process's `data`, by process index."""
        return [data]

    def leave(self) -> None:
        """Disconnect (process 0: once every other process has)."""

    def meet(
        self, payload: Any, error: BaseException | None = None, *, tolerate_gone: bool = False
    ) -> list:
        """Every process's JSON `payload`, by process index. An error a process brings is raised on
        every process (on its own as itself), so all leave from the same meeting. With
        `tolerate_gone`, a process that is gone gives [] instead of an error (what it left is found
        on disk)."""
        mine = {"error": describe(error)} if error is not None else {"ok": payload}
        try:
            every = [json.loads(raw) for raw in self.gather(json.dumps(mine).encode())]
        except JobError:
            if error is not None:
                raise error from None
            if tolerate_gone:
                return []
            raise
        if error is not None:
            raise error
        for process, item in enumerate(every):
            if "error" in item:
                raise JobError(f"process {process} stopped: {item['error']}")
        return [item["ok"] for item in every]


def describe(error: BaseException) -> str:
    """An error as one line: a berta-jax error's own message, or the file and reason of an
    OSError."""
    if isinstance(error, OSError) and not isinstance(error, BertaJaxError):
        return f"{error.filename or 'a file'}: {error.strerror or error}"
    return str(error)


class JaxCluster(Cluster):
    """The processes of a `jax.distributed` run (initialized before this is made)."""

    def __init__(self, stop: Callable[[], bool] | None = None):
        import jax

        self.index, self.count, self.stop = jax.process_index(), jax.process_count(), stop

    def gather(self, data: bytes) -> list[bytes]:
        return self._wait(lambda: self._gather(data))

    def _gather(self, data: bytes) -> list[bytes]:
        import jax
        import numpy as np
        from jax.experimental import multihost_utils as hosts

        try:
            with hosts.live_devices(jax.devices()) as devices:
                gone = sorted(set(range(self.count)) - {d.process_index for d in devices})
                if gone:
                    raise JobError(_gone(gone))
                sizes = np.asarray(
                    hosts.process_allgather(np.array([len(data)], np.int64))
                ).reshape(-1)
                buffer = np.zeros(max(int(sizes.max()), 1), np.uint8)
                buffer[: len(data)] = np.frombuffer(data, np.uint8)
                every = np.asarray(hosts.process_allgather(buffer))
        except hosts.ProcessFailureError:
            # a process failed inside the meeting (JAX names its devices only)
            raise JobError(_gone([])) from None
        return [every[p, : sizes[p]].tobytes() for p in range(self.count)]

    def leave(self) -> None:
        import jax
        from jax.experimental import multihost_utils as hosts

        if self.index != 0:
            jax.distributed.shutdown()
            return

        def others_gone() -> None:  # the block ends (or fails) once no other process is connected
            try:
                with hosts.live_devices(jax.devices()):
                    pass
            except hosts.ProcessFailureError:
                pass

        self._wait(others_gone)

    def _wait(self, fn):
        """`fn()` while honouring a stop (Ctrl-C, SIGTERM) even though JAX waits for a peer."""
        try:
            return wait_stoppable(fn, self.stop)
        except Abandoned:
            # JAX cannot be woken: this process must end without waiting for it; the meeting is
            # abandoned, committed parts stay for a resume
            self.abandoned = True
            raise


class Abandoned(KeyboardInterrupt):
    """A stop came while JAX waited in native code, which cannot be woken: the process must end at
    once (`os._exit`), since a normal interpreter exit would wait for, or crash in, that thread."""


def wait_stoppable(fn, stop: Callable[[], bool] | None):
    """`fn()` in a helper thread, the calling thread waking every 0.1 s: a stop (`stop()` true, or a
    KeyboardInterrupt raised here by a signal handler) while `fn` still runs is `Abandoned`."""
    result: dict = {}
    # an Event, not Thread.join: a KeyboardInterrupt inside join marks a running thread as stopped
    done = threading.Event()

    def call() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # handed to the waiting thread, which raises it
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=call, name="berta-jax-wait", daemon=True).start()
    try:
        while not done.wait(0.1):
            if stop is not None and stop() and not done.is_set():
                raise Abandoned
    except KeyboardInterrupt:
        if not done.is_set():
            raise Abandoned from None
        raise
    if "error" in result:
        raise result["error"]
    return result["value"]


def _initialize(kwargs: dict) -> None:
    import jax

    # a process that dies does not take the others with it
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:  # JAX's own checks; its client's errors
        raise JobError(
            f"jax.distributed could not start ({str(e).strip().splitlines()[0]}); check "
            "--coordinator, --num-processes and --process-id, or run on a cluster JAX detects "
            "(--distributed)"
        ) from None


def _gone(processes: list[int]) -> str:
    which = ", ".join(map(str, processes)) or "another process"
    return (
        f"process {which} of this run stopped or cannot be reached (JAX's heartbeat timed out); "
        "the parts committed so far are kept: rerun the same command with --resume, on any number "
        "of hosts"
    )


def join(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    detect: bool,
    heartbeat_timeout: int,
    stop: Callable[[], bool] | None = None,
) -> Cluster:
    """Join JAX's multi-host runtime when asked (before any JAX array exists); else the one-process
    cluster. JAX's start-up waits up to 300 s for the other processes (or the coordinator) in native
    code: a stop during it is `Abandoned` (the caller ends the process at once)."""
    if not (coordinator or detect):
        return Cluster()
    kwargs: dict = {"heartbeat_timeout_seconds": heartbeat_timeout}
    if coordinator:
        kwargs.update(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    # without a coordinator (TPU pods, SLURM and similar) JAX finds the cluster itself; JAX's
    # import is in the helper thread too (a signal raised inside it can be lost in a callback)
    wait_stoppable(lambda: _initialize(kwargs), stop)
    return JaxCluster(stop)
