"""The one forward path: the model's pure functions, compiled once per shape, sharded over local
devices.

Parameters are replicated and each batch is split along its rows over a one-axis `Mesh` ("data") of
the local devices, so one process uses all chips of a TPU host or all GPUs of a machine. Each
(output, shape) is compiled ahead of time (`jit(...).lower(...).compile()`) once, so compile time is
measured apart from run time and the set of compiled shapes is known. With JAX's persistent
compilation cache on (see `compile_cache`), a second process loads these programs instead of
compiling them. The functions compiled are in `programs`; what is measured (`CompileStats`,
`RunStats`), in `stats`.

Outputs: sentence vectors of batches (`embed`, `run`: what `Encoder.encode` uses), and hidden states
of caller-made token ids (`hidden`: what `Encoder.token_embeddings` and the parity report use).
"""

from __future__ import annotations

import collections
import contextlib
import os
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

from berta_jax.models.attention import EXPLICIT, AttentionKernel, kernel_named
from berta_jax.models.pooling import make_hidden_fn
from berta_jax.runtime.batching import Batch
from berta_jax.runtime.programs import batch_args, batch_embed_fn, matmul_copy
from berta_jax.runtime.stats import CompileStats, DeviceClock, RunStats, counting_cache_hits

DATA_AXIS = "data"
IN_FLIGHT = 1  # batches dispatched ahead of the one whose results the host is taking


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
        # (the model's leaves, their device copy)
        self._placed: tuple[list, nnx.State] | None = None
        self.chunk_tokens = chunk_tokens
        self.stats = stats if stats is not None else CompileStats()
        self.run_stats = RunStats()
        self.kernel = kernel_named(attention)
        self.stats.attention = self.kernel.name
        # a fused kernel that fails to compile falls back to "xla", saying so
        self.fallback = fallback
        self._compiled: dict[tuple, jax.stages.Compiled] = {}
        self._lock = threading.Lock()

    @property
    def params(self) -> nnx.State:
        """The model's parameters on the mesh (replicated, matmul kernels in the compute dtype),
        placed again only when the model's arrays changed since the last call."""
        state = nnx.state(self.model)
        leaves = jax.tree.leaves(state)
        placed = self._placed
        changed = placed is None or len(placed[0]) != len(leaves)
        if changed or any(a is not b for a, b in zip(placed[0], leaves)):
            copy = jax.device_put(matmul_copy(state, self.compute_dtype), self.replicated)
            placed = self._placed = (leaves, copy)
        return placed[1]

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _program(
        self, key: tuple, make: Callable[[], Callable], args: Sequence[np.ndarray], out_sharding
    ):
        """The compiled program for `key`, compiled (or loaded from the persistent cache) once."""
        if key not in self._compiled:
            start = time.perf_counter()
            with counting_cache_hits() as hits:
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
        """Compile the programs of every batch shape not compiled yet before any batch runs, so no
        compile competes with a running batch; the first settles the attention kernel (and a
        fallback), the rest compile side by side in threads, one per host core (on the 2-core CPU
        machine that is no faster than one after another; it is meant for many-core accelerator
        hosts, where it is not measured yet)."""
        new = [b for b in batches if self._embed_key(b, pooling, normalize) not in self._compiled]
        todo = list({b.shape: b for b in new}.values())  # one batch of each shape
        if not todo:
            return
        self.embed_program(todo[0], pooling=pooling, normalize=normalize)
        if len(todo) > 1:
            start = time.perf_counter()
            with (
                counting_cache_hits() as hits,
                ThreadPoolExecutor(min(len(todo) - 1, os.cpu_count() or 1)) as pool,
            ):
                jobs = [
                    pool.submit(
                        self._compile,
                        self._embed_key(b, pooling, normalize),
                        self._embed_maker(b, pooling, normalize),
                        batch_args(b),
                        self.rows_sharding,
                        hits,
                    )
                    for b in todo[1:]
                ]
                for job in jobs:
                    job.result()
            self.stats.wall_seconds += time.perf_counter() - start

    def embed(
        self, batch: Batch, *, pooling: str, normalize: bool, params: nnx.State | None = None
    ) -> jax.Array:
        """Start the forward of one batch (asynchronously): `[rows * segments, hidden]`, sharded by
        rows; `params` as `self.params` gave them (`run` reads them once per call)."""
        program = self.embed_program(batch, pooling=pooling, normalize=normalize)
        params = self.params if params is None else params
        return program(params, *(jax.device_put(a, self.rows_sharding) for a in batch_args(batch)))

    def _embed_key(self, batch: Batch, pooling: str, normalize: bool) -> tuple:
        return ("embed", self.kernel.name, pooling, normalize, *batch.shape)

    def _embed_maker(self, batch: Batch, pooling: str, normalize: bool) -> Callable[[], Callable]:
        kernel = self.kernel
        return lambda: batch_embed_fn(self.graphdef, pooling, normalize, batch.num_segments, kernel)

    def embed_program(self, batch: Batch, *, pooling: str, normalize: bool) -> jax.stages.Compiled:
        """The program for this batch's shape; an automatic fused-kernel choice that fails to
        compile falls back."""
        kernel = self.kernel
        try:
            return self._program(
                self._embed_key(batch, pooling, normalize),
                self._embed_maker(batch, pooling, normalize),
                batch_args(batch),
                self.rows_sharding,
            )
        except Exception as e:  # noqa: BLE001
            # only an automatic fused-kernel choice falls back, and says why
            if kernel is EXPLICIT or not self.fallback:
                raise
            warnings.warn(
                f"the {kernel.name} attention kernel did not compile here "
                f"({type(e).__name__}: {str(e)[:200]}); "
                "using the xla kernel (pass attention='xla' to skip the attempt)",
                RuntimeWarning,
                stacklevel=3,
            )
            self.kernel, self.fallback = EXPLICIT, False
            self.stats.attention = f"xla ({kernel.name} unavailable)"
            return self.embed_program(batch, pooling=pooling, normalize=normalize)

    def run(
        self, batches: Iterable[Batch], *, pooling: str, normalize: bool
    ) -> Iterator[tuple[Batch, np.ndarray]]:
        """(batch, vectors of its texts in `batch.texts` order), keeping `IN_FLIGHT` batches
        dispatched while the host takes the results of earlier ones; `run_stats` accumulates how
        busy the device was."""
        batches = list(batches)
        self.precompile(batches, pooling=pooling, normalize=normalize)
        pending: deque[tuple[Batch, jax.Array]] = deque()
        clock, params = DeviceClock(self.run_stats), self.params  # the model's weights, once a call
        try:
            for batch in batches:
                out = self.embed(batch, pooling=pooling, normalize=normalize, params=params)
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
        """Last hidden state `[b, L, D]` (or the embeddings output and every layer's, with
        `all_layers`) of caller-made token ids; rows are padded to a multiple of the device count
        and cut back."""
        rows = input_ids.shape[0]
        padded = -(-rows // self.num_devices) * self.num_devices
        args = [
            np.pad(a.astype(np.int32), ((0, padded - rows), (0, 0)))
            for a in (input_ids, attention_mask, token_type_ids)
        ]
        key = ("hidden", all_layers, *args[0].shape)
        make = lambda: make_hidden_fn(  # noqa: E731
            self.graphdef, chunk_tokens=self.chunk_tokens, all_layers=all_layers
        )
        program = self._program(key, make, args, None)
        out = program(self.params, *(jax.device_put(a, self.rows_sharding) for a in args))
        return tuple(h[:rows] for h in out) if all_layers else out[:rows]
