"""The one forward path: the model's pure functions, compiled once per shape, sharded over local devices.

Parameters are replicated and each batch is split along its rows over a one-axis `Mesh` ("data") of the
local devices, so one process uses all chips of a TPU host or all GPUs of a machine. Each (output, shape)
is compiled ahead of time (`jit(...).lower(...).compile()`) once, so compile time is measured apart from
run time and the set of compiled shapes is known. With JAX's persistent compilation cache on (see
`compile_cache`), a second process loads these programs instead of compiling them.

Outputs: sentence vectors of batches (`embed`, `run`: what `Encoder.encode` uses), and hidden states of
caller-made token ids (`hidden`: what `Encoder.token_embeddings` and the parity report use).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from berta_jax.runtime.batching import Batch
from berta_jax.models.attention import EXPLICIT, AttentionKernel, kernel_named
from berta_jax.models.pooling import embed_rows, make_hidden_fn

DATA_AXIS = "data"
IN_FLIGHT = 1  # batches dispatched ahead of the one whose results the host is taking
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileStats:
    """Per compiled program (output, options..., shape): seconds to get it, and whether the persistent
    compilation cache supplied it."""

    seconds: dict[tuple, float] = dataclasses.field(default_factory=dict)
    from_cache: dict[tuple, bool] = dataclasses.field(default_factory=dict)
    wall_seconds: float = (
        0.0  # time spent waiting for compiles (programs compiled side by side count once)
    )
    attention: str = "xla"  # the attention kernel of the sentence-embedding programs (see attention.select_kernel)
    dtype: str = "float32"  # the compute dtype and what chose it (see dtypes.choose_dtype)

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def cache_hits(self) -> int:
        return sum(self.from_cache.values())


@dataclasses.dataclass
class RunStats:
    """How busy the device was while batches ran: `device_seconds` is the time at least one dispatched batch was
    computing (from its dispatch, or the previous batch's end, to its result being ready), `wall_seconds` the time
    from each run's first dispatch to its last result handed back. Their ratio is the device-busy fraction: below 1
    the device waited on the host (tokenizing, packing, copying, writing)."""

    batches: int = 0
    device_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def busy_fraction(self) -> float:
        return self.device_seconds / self.wall_seconds if self.wall_seconds else 0.0


class _DeviceClock:
    """Times each dispatched batch to its ready point in a watcher thread (results are ready in dispatch order)."""

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
            except Exception:  # noqa: BLE001 - a failed batch: `run` raises the same error when it takes the result
                return
            ready = time.perf_counter()
            self.stats.device_seconds += ready - max(sent, last_ready)
            self.stats.batches, last_ready = self.stats.batches + 1, ready

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.stats.wall_seconds += time.perf_counter() - self._start


@contextlib.contextmanager
def _counting_cache_hits() -> Iterator[collections.Counter]:
    """Count persistent-cache hits per thread while the block runs (the listener exists only during the block;
    JAX reports a hit in the thread that compiles, so programs compiled side by side are told apart)."""
    hits: collections.Counter = collections.Counter()

    def listener(event: str, **_) -> None:
        if event == _CACHE_HIT:
            hits[threading.get_ident()] += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield hits
    finally:
        jax.monitoring.unregister_event_listener(listener)


def _embed_fn(
    graphdef: nnx.GraphDef,
    pooling: str,
    normalize: bool,
    num_segments: int,
    kernel: AttentionKernel,
) -> Callable:
    def fn(params, input_ids, token_type_ids, segment_ids, positions, pool_mask):
        out = embed_rows(
            nnx.merge(graphdef, params),
            input_ids,
            token_type_ids,
            segment_ids,
            positions,
            pool_mask,
            num_segments=num_segments,
            pooling=pooling,
            normalize=normalize,
            attention_kernel=kernel,
        )
        return out.reshape(-1, out.shape[-1])  # [B * S, D]: a batch's slots index this

    return fn


def matmul_copy(params: nnx.State, dtype) -> nnx.State:
    """The parameters as the compiled forwards take them: with 16-bit compute, every matmul kernel cast to the
    compute dtype here, once, instead of in every call of every layer (on a bf16 CPU a 12-layer forward spent
    about a seventh of its time converting kernels). The result is bit-identical: the forward casts a kernel to
    the same dtype itself. Embeddings, biases and LayerNorm parameters stay as stored."""
    if jnp.dtype(dtype) == jnp.float32:
        return params

    def cast(path, leaf):
        is_kernel = any(getattr(key, "key", None) == "kernel" for key in path)
        return (
            leaf.astype(dtype) if is_kernel and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
        )

    return jax.tree_util.tree_map_with_path(cast, params)


def _batch_args(batch: Batch) -> tuple[np.ndarray, ...]:
    """The arrays a compiled embedding program takes, in its order."""
    return (
        batch.input_ids,
        batch.token_type_ids,
        batch.segment_ids,
        batch.positions,
        batch.pool_mask,
    )


class Runtime:
    """Compiled, sharded forwards of one model on `devices` (default: every local device)."""

    def __init__(
        self,
        model: nnx.Module,
        *,
        devices: Sequence[jax.Device] | None = None,
        chunk_tokens: int | None = None,
        stats: CompileStats | None = None,
        attention: str | AttentionKernel = EXPLICIT,
        fallback: bool = False,
        compute_dtype=jnp.float32,
    ):
        devices = list(devices) if devices is not None else jax.local_devices()
        self.model = model  # the one source of the weights: `params` follows edits to it
        self.graphdef = nnx.graphdef(model)
        self.mesh = Mesh(np.array(devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.rows_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.compute_dtype = compute_dtype
        self._placed: tuple[list, nnx.State] | None = (
            None  # (the model's leaves, their device copy)
        )
        self.chunk_tokens = chunk_tokens
        self.stats = stats if stats is not None else CompileStats()
        self.run_stats = RunStats()
        self.kernel = kernel_named(attention)
        self.stats.attention = self.kernel.name
        self.fallback = (
            fallback  # a fused kernel that fails to compile falls back to "xla", saying so
        )
        self._compiled: dict[tuple, jax.stages.Compiled] = {}
        self._lock = threading.Lock()

    @property
    def params(self) -> nnx.State:
        """The model's parameters on the mesh (replicated, matmul kernels in the compute dtype), placed again
        only when the model's arrays changed since the last call."""
        state = nnx.state(self.model)
        leaves = jax.tree.leaves(state)
        placed = self._placed
        if (
            placed is None
            or len(placed[0]) != len(leaves)
            or any(a is not b for a, b in zip(placed[0], leaves))
        ):
            placed = self._placed = (
                leaves,
                jax.device_put(matmul_copy(state, self.compute_dtype), self.replicated),
            )
        return placed[1]

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _program(
        self, key: tuple, make: Callable[[], Callable], args: Sequence[np.ndarray], out_sharding
    ):
        """The compiled program for `key`, compiling it (or loading it from the persistent cache) once."""
        if key not in self._compiled:
            start = time.perf_counter()
            with _counting_cache_hits() as hits:
                self._compile(key, make, args, out_sharding, hits)
            self.stats.wall_seconds += time.perf_counter() - start
        return self._compiled[key]

    def _compile(
        self,
        key: tuple,
        make: Callable[[], Callable],
        args: Sequence[np.ndarray],
        out_sharding,
        hits: collections.Counter,
    ) -> None:
        start, before = time.perf_counter(), hits[threading.get_ident()]
        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.rows_sharding) for a in args]
        jitted = jax.jit(
            make(),
            in_shardings=(self.replicated, *(self.rows_sharding,) * len(args)),
            out_shardings=out_sharding,
        )
        with jax.set_mesh(self.mesh) if self.kernel.needs_mesh else contextlib.nullcontext():
            compiled = jitted.lower(self.params, *specs).compile()
        with self._lock:
            self._compiled[key] = compiled
            self.stats.seconds[key] = time.perf_counter() - start
            self.stats.from_cache[key] = hits[threading.get_ident()] > before

    def precompile(self, batches: Sequence[Batch], *, pooling: str, normalize: bool) -> None:
        """Compile the programs of every batch shape not compiled yet before any batch runs, so no compile competes
        with a running batch; the first settles the attention kernel (and a fallback), the rest compile side by
        side in threads, one per host core (on the 2-core CPU machine that is no faster than one after another;
        it is meant for many-core accelerator hosts, where it is not measured yet)."""
        todo = list(
            {
                b.shape: b
                for b in batches
                if self._embed_key(b, pooling, normalize) not in self._compiled
            }.values()
        )
        if not todo:
            return
        self.embed_program(todo[0], pooling=pooling, normalize=normalize)
        if len(todo) > 1:
            start = time.perf_counter()
            with (
                _counting_cache_hits() as hits,
                ThreadPoolExecutor(min(len(todo) - 1, os.cpu_count() or 1)) as pool,
            ):
                jobs = [
                    pool.submit(
                        self._compile,
                        self._embed_key(b, pooling, normalize),
                        self._embed_maker(b, pooling, normalize),
                        _batch_args(b),
                        self.rows_sharding,
                        hits,
                    )
                    for b in todo[1:]
                ]
                for job in jobs:
                    job.result()
            self.stats.wall_seconds += time.perf_counter() - start

    def embed(self, batch: Batch, *, pooling: str, normalize: bool) -> jax.Array:
        """Start the forward of one batch (asynchronously): `[rows * segments, hidden]`, sharded by rows."""
        program = self.embed_program(batch, pooling=pooling, normalize=normalize)
        return program(
            self.params, *(jax.device_put(a, self.rows_sharding) for a in _batch_args(batch))
        )

    def _embed_key(self, batch: Batch, pooling: str, normalize: bool) -> tuple:
        return ("embed", self.kernel.name, pooling, normalize, *batch.shape)

    def _embed_maker(self, batch: Batch, pooling: str, normalize: bool) -> Callable[[], Callable]:
        kernel = self.kernel
        return lambda: _embed_fn(self.graphdef, pooling, normalize, batch.num_segments, kernel)

    def embed_program(self, batch: Batch, *, pooling: str, normalize: bool) -> jax.stages.Compiled:
        """The program for this batch's shape; an automatic fused-kernel choice that fails to compile falls back."""
        kernel = self.kernel
        try:
            return self._program(
                self._embed_key(batch, pooling, normalize),
                self._embed_maker(batch, pooling, normalize),
                _batch_args(batch),
                self.rows_sharding,
            )
        except Exception as e:  # noqa: BLE001 - only an automatic fused-kernel choice falls back, and says why
            if kernel is EXPLICIT or not self.fallback:
                raise
            warnings.warn(
                f"the {kernel.name} attention kernel did not compile here ({type(e).__name__}: {str(e)[:200]}); "
                "using the xla kernel (pass attention='xla' to skip the attempt)",
                RuntimeWarning,
                stacklevel=3,
            )
            self.kernel, self.stats.attention, self.fallback = (
                EXPLICIT,
                f"xla ({kernel.name} unavailable)",
                False,
            )
            return self.embed_program(batch, pooling=pooling, normalize=normalize)

    def run(
        self, batches: Iterable[Batch], *, pooling: str, normalize: bool
    ) -> Iterator[tuple[Batch, np.ndarray]]:
        """(batch, vectors of its texts in `batch.texts` order), keeping `IN_FLIGHT` batches dispatched while the
        host takes the results of earlier ones; `run_stats` accumulates how busy the device was."""
        batches = list(batches)
        self.precompile(batches, pooling=pooling, normalize=normalize)
        pending: deque[tuple[Batch, jax.Array]] = deque()
        clock = _DeviceClock(self.run_stats)
        try:
            for batch in batches:
                out = self.embed(batch, pooling=pooling, normalize=normalize)
                clock.dispatched(out)
                pending.append((batch, out))
                if len(pending) > IN_FLIGHT:
                    done, out = pending.popleft()
                    yield done, np.asarray(out)[done.slots]
            while pending:
                done, out = pending.popleft()
                yield done, np.asarray(out)[done.slots]
        finally:
            clock.close()

    def hidden(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray,
        *,
        all_layers: bool = False,
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Last hidden state `[b, L, D]` (or the embeddings output and every layer's, with `all_layers`) of
        caller-made token ids; rows are padded to a multiple of the device count and cut back."""
        rows = input_ids.shape[0]
        padded = -(-rows // self.num_devices) * self.num_devices
        args = [
            np.pad(a.astype(np.int32), ((0, padded - rows), (0, 0)))
            for a in (input_ids, attention_mask, token_type_ids)
        ]
        key = ("hidden", all_layers, *args[0].shape)
        make = lambda: make_hidden_fn(
            self.graphdef, chunk_tokens=self.chunk_tokens, all_layers=all_layers
        )  # noqa: E731
        program = self._program(key, make, args, None)
        out = program(self.params, *(jax.device_put(a, self.rows_sharding) for a in args))
        return tuple(h[:rows] for h in out) if all_layers else out[:rows]
