"""Ctrl-C and SIGTERM (what schedulers, `timeout` and Kubernetes send) for the batch job.

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
from typing import Iterator


class StopSignals:
    """Callable: True once a stop was asked for."""

    def __init__(self, stream=None):
        self.stream, self.count, self.armed = stream or sys.stderr, 0, False
        self._holding = False  # inside `held()`: an interrupt before arming waits for its end
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        """Take SIGINT and SIGTERM (again, after a library took one: `restore` gives back the
        handlers found the first time)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous.setdefault(sig, signal.signal(sig, self._handle))
        return self

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

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if not self.armed and self._holding:
            return  # raised when the held block ends
        if not self.armed:
            raise KeyboardInterrupt  # start-up: nothing is being written yet
        if self.count > 1:
            print(
                "berta-jax: aborted; committed chunks are kept, rerun with --resume",
                file=self.stream,
                flush=True,
            )
            os._exit(130)
        name = signal.Signals(signum).name
        print(
            f"berta-jax: {name}: stopping after the current batch and committing what is done; "
            "press Ctrl-C again to abort",
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
