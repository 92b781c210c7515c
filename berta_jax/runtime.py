"""Run the pure forward over batches: compiled once per shape, sharded over every local device.

The parameters are replicated and each batch is split along its rows over a
one-axis `Mesh` ("data") of the local devices, so one process uses all chips of
a TPU host or all GPUs of a machine. Each batch shape is compiled ahead of time
(`jit(...).lower(...).compile()`) once, so compile time is measured apart from
run time and the set of compiled shapes is known. With JAX's persistent
compilation cache on (see `compile_cache`), a second process loads these
programs instead of compiling them.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from berta_jax.batching import Batch
from berta_jax.pooling import make_embed_fn

DATA_AXIS = "data"


_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_cache_counts = {"hits": 0, "misses": 0}


def _count_cache_event(event: str, **_) -> None:
    if event in _CACHE_EVENTS:
        _cache_counts[_CACHE_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count_cache_event)


@dataclasses.dataclass
class CompileStats:
    """Per compiled (pooling, normalize, rows, length) program: seconds to get it, and whether the
    persistent compilation cache supplied it."""

    seconds: dict[tuple, float] = dataclasses.field(default_factory=dict)
    from_cache: dict[tuple, bool] = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def cache_hits(self) -> int:
        return sum(self.from_cache.values())


class ShardedForward:
    """`embed_fn` over padded batches on a data-parallel mesh of `devices` (default: all local devices)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        pooling: str,
        normalize: bool,
        devices: Sequence[jax.Device] | None = None,
        stats: CompileStats | None = None,
    ):
        devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.array(devices), (DATA_AXIS,))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.rows_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.params = jax.device_put(params, replicated)
        self._jitted = jax.jit(
            make_embed_fn(graphdef, pooling=pooling, normalize=normalize),
            in_shardings=(replicated, *(self.rows_sharding,) * 4),
            out_shardings=self.rows_sharding,
        )
        self._compiled: dict[tuple, jax.stages.Compiled] = {}
        self.key = (pooling, normalize)
        self.stats = stats if stats is not None else CompileStats()

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _program(self, batch: Batch) -> jax.stages.Compiled:
        shape = batch.shape
        if shape not in self._compiled:
            start, hits = time.perf_counter(), _cache_counts["hits"]
            args = (batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.pool_mask)
            specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.rows_sharding) for a in args]
            self._compiled[shape] = self._jitted.lower(self.params, *specs).compile()
            self.stats.seconds[(*self.key, *shape)] = time.perf_counter() - start
            self.stats.from_cache[(*self.key, *shape)] = _cache_counts["hits"] > hits
        return self._compiled[shape]

    def dispatch(self, batch: Batch) -> jax.Array:
        """Start the forward of one batch (asynchronously); returns the sharded `[rows, hidden]` result."""
        args = (batch.input_ids, batch.attention_mask, batch.token_type_ids, batch.pool_mask)
        placed = [jax.device_put(a, self.rows_sharding) for a in args]
        return self._program(batch)(self.params, *placed)

    def run(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, np.ndarray]]:
        """(batch, embeddings of its real rows) in order, keeping one batch in flight while the next is padded."""
        pending: deque[tuple[Batch, jax.Array]] = deque()
        for batch in batches:
            pending.append((batch, self.dispatch(batch)))
            if len(pending) > 1:
                done, out = pending.popleft()
                yield done, np.asarray(out)[: len(done.rows)]
        while pending:
            done, out = pending.popleft()
            yield done, np.asarray(out)[: len(done.rows)]
