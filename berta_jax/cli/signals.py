"""Ctrl-C and SIGTERM (what schedulers, `timeout` and Kubernetes send) for the batch job.

Python runs a signal handler only when the main thread returns to bytecode, and two signals that
arrive while it computes in native code (a batch on the device) run the handler once. So once armed,
signals are counted by a thread that reads the interpreter's wakeup fd, which gets one byte per
signal as it arrives: a second Ctrl-C 0.3 s after the first aborts at once.

Before the work starts, a signal interrupts at once (exit 130, nothing committed), except while the
model loads (`held`), when it interrupts as soon as loading is over. Once armed, the first signal is
acknowledged immediately and asks the run to stop after the current batch (what is done is
committed); a second one ends the process at once (exit 130) without raising anything Python could
swallow in a finalizer. Only committed state remains; a temporary file of a write in progress is
removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator


class StopSignals:
    """Callable: True once a stop was asked for."""

    def __init__(self, stream=None):
        self.stream, self.count, self.armed = stream or sys.stderr, 0, False
        self._holding = False  # inside `held()`: an interrupt before arming waits for its end
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None  # (read end, the fd it replaced)
        # what a stop keeps, in words (the job's progress sets it)
        self.describe: Callable[[], str] = lambda: "nothing is committed yet"

    def install(self) -> StopSignals:
        """Take SIGINT and SIGTERM (again, after a library took one: `restore` gives back the
        handlers found the first time)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous.setdefault(sig, signal.signal(sig, self._handle))
            self._listen()
        return self

    def _listen(self) -> None:
        """Count every signal as it arrives (see the module), in a thread reading the wakeup fd."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._wakeup = (read, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
        self._write = write
        threading.Thread(target=self._watch, args=(read,), name="berta-jax-signals",
                         daemon=True).start()

    def _watch(self, read: int) -> None:
        while data := os.read(read, 64):  # empty: `restore` closed the write end
            for number in data:
                if number in (signal.SIGINT, signal.SIGTERM) and self.armed:
                    self._signalled(number)
        os.close(read)

    def arm(self) -> None:
        """From now on the first signal stops gracefully (the run can commit at a batch
        boundary)."""
        self.armed = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Before arming: a signal during the block interrupts only once the block is over. Native
        libraries call Python while they start (jaxlib's nanobind init does): an interrupt raised in
        there fails the import, and the process then crashes (-11) instead of exiting 130."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self.count and not self.armed:
            raise KeyboardInterrupt

    def restore(self) -> None:
        # None: a handler installed outside Python (JAX's, say)
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._wakeup[1])
            os.close(self._write)  # the watcher reads to the end and closes its side
            self._wakeup = None

    def _handle(self, signum: int, frame) -> None:
        if self.armed:
            if self._wakeup is None:  # not installed (a test calls this): no watcher counts it
                self._signalled(signum)
            return
        self.count += 1
        if self._holding:
            return  # raised when the held block ends
        raise KeyboardInterrupt  # start-up: nothing is being written yet

    def _signalled(self, signum: int) -> None:
        """An armed stop: the first asks the run to stop at a batch boundary, the second aborts."""
        self.count += 1
        if self.count > 1:
            print(
                f"berta-jax: aborted; {self.describe()}. Rerun with --resume",
                file=self.stream,
                flush=True,
            )
            os._exit(130)
        name = signal.Signals(signum).name
        print(
            f"berta-jax: {name}: stopping after the current batch; {self.describe()}. Press "
            "Ctrl-C again to abort",
            file=self.stream,
            flush=True,
        )

    def __call__(self) -> bool:
        return self.count > 0

    def exit_now(self, code: int) -> None:
        """End the process at once: a thread blocked in native code (JAX waiting for a stalled peer)
        would crash a normal interpreter exit. Committed state is all there is."""
        sys.stdout.flush()
        self.stream.flush()
        os._exit(code)
