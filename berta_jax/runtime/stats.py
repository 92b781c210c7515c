"""What the compiled runtime measures: compile times and persistent-cache hits per program
(`CompileStats`), and how busy the device was while batches ran (`RunStats`, timed by
`DeviceClock`)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import queue
import threading
import time
from typing import Iterator

import jax

_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileStats:
    """Per compiled program (output, options..., shape): seconds to get it, and whether the
    persistent compilation cache supplied it."""

    seconds: dict[tuple, float] = dataclasses.field(default_factory=dict)
    from_cache: dict[tuple, bool] = dataclasses.field(default_factory=dict)
    # time spent waiting for compiles (programs compiled side by side count once)
    wall_seconds: float = 0.0
    # the attention kernel of the sentence-embedding programs (see attention.select_kernel)
    attention: str = "xla"
    dtype: str = "float32"  # the compute dtype and what chose it (see dtypes.choose_dtype)

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def cache_hits(self) -> int:
        return sum(self.from_cache.values())


@dataclasses.dataclass
class RunStats:
    """How busy the device was while batches ran: `device_seconds` is the time at least one
    dispatched batch was computing (from its dispatch, or the previous batch's end, to its result
    being ready), `wall_seconds` the time from each run's first dispatch to its last result handed
    back. Their ratio is the device-busy fraction: below 1 the device waited on the host
    (tokenizing, packing, copying, writing)."""

    batches: int = 0
    device_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def busy_fraction(self) -> float:
        return self.device_seconds / self.wall_seconds if self.wall_seconds else 0.0


class DeviceClock:
    """Times each dispatched batch to its ready point in a watcher thread (results are ready in
    dispatch order)."""

    def __init__(self, stats: RunStats):
        self.stats, self._queue = stats, queue.SimpleQueue()
        self._start = time.perf_counter()
        self._thread = threading.Thread(
            target=self._watch, name="berta-jax-device-clock", daemon=True
        )
        self._thread.start()

    def dispatched(self, out: jax.Array) -> None:
        self._queue.put((time.perf_counter(), out))

    def _watch(self) -> None:
        last_ready = 0.0
        while (item := self._queue.get()) is not None:
            sent, out = item
            try:
                jax.block_until_ready(out)
            except Exception:  # noqa: BLE001
                return  # a failed batch: `run` raises the same error when it takes the result
            ready = time.perf_counter()
            self.stats.device_seconds += ready - max(sent, last_ready)
            self.stats.batches, last_ready = self.stats.batches + 1, ready

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.stats.wall_seconds += time.perf_counter() - self._start


@contextlib.contextmanager
def counting_cache_hits() -> Iterator[collections.Counter]:
    """Count persistent-cache hits per thread while the block runs (the listener exists only during
    the block; JAX reports a hit in the thread that compiles, so programs compiled side by side are
    told apart)."""
    hits: collections.Counter = collections.Counter()

    def listener(event: str, **_) -> None:
        if event == _CACHE_HIT:
            hits[threading.get_ident()] += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield hits
    finally:
        jax.monitoring.unregister_event_listener(listener)
