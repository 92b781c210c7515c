"""One optimizer step as one compiled program: embed every column, the loss, gradients, AdamW.

The batch is one global array sharded over the mesh's `data` axis (every device of every host);
the loss is computed on the global embeddings, so in-batch negatives come from every device (the
compiler all-gathers the candidates, gradients included) and the loss equals one device's over
the same global batch. With `gather_across_devices` off, each device's rows form their own loss
(sentence-transformers' default under DDP), the mean of those is the loss.

The cached loss (GradCache) embeds each device's rows in chunks of `mini_batch_size` under
`lax.scan(jax.checkpoint(...))`: the backward pass recomputes one chunk's activations at a time,
so memory is bounded by the chunk, and the loss and gradients are the plain form's. Gradient
accumulation scans the micro-batches of a step and averages their gradients, as the Hugging Face
Trainer does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from berta_jax.models.pooling import make_embed_fn

DATA = "data"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the step program is specialised to (all static)."""

    graphdef: nnx.GraphDef
    loss: Callable  # the loss object: (embeddings, labels, aux) -> scalar
    pooling: str
    normalize: bool
    dropout: bool  # any dropout rate above 0: the step takes dropout keys
    mesh: Mesh
    gather: bool  # negatives from every device
    chunk_rows: int | None  # rows per device per chunk (the cached loss), None: one pass

    @property
    def devices(self) -> int:
        return self.mesh.devices.size


def _constrain(spec: StepSpec, x: jax.Array) -> jax.Array:
    """Rows of `x` split over the data axis (each device keeps its own rows)."""
    if spec.devices == 1:
        return x
    rest = (None,) * (x.ndim - 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(spec.mesh, P(DATA, *rest)))


def _embed_column(spec: StepSpec, params, column: dict, key) -> jax.Array:
    """One text column `[B, L]` -> `[B, D]`, in one pass or in per-device chunks."""
    embed = make_embed_fn(spec.graphdef, pooling=spec.pooling, normalize=spec.normalize)
    inputs = (
        column["input_ids"],
        column["attention_mask"],
        column["token_type_ids"],
        column["pool_mask"],
    )
    if spec.chunk_rows is None:
        return embed(params, *inputs, dropout_key=key)
    rows, length = inputs[0].shape
    devices, chunk = spec.devices, spec.chunk_rows
    n = rows // devices // chunk

    def to_chunks(x):  # [B, L] -> [n, devices * chunk, L], each chunk's rows on their device
        x = x.reshape(devices, n, chunk, length).transpose(1, 0, 2, 3)
        return x.reshape(n, devices * chunk, length)

    @jax.checkpoint
    def embed_chunk(p, xs, index):
        xs = tuple(_constrain(spec, x) for x in xs)
        chunk_key = None if key is None else jax.random.fold_in(key, index)
        return embed(p, *xs, dropout_key=chunk_key)

    def body(carry, xs):
        return carry, embed_chunk(params, xs[:-1], xs[-1])

    chunks = (*(to_chunks(x) for x in inputs), jnp.arange(n))
    _, out = jax.lax.scan(body, None, chunks)  # [n, devices * chunk, D]
    dim = out.shape[-1]
    return out.reshape(n, devices, chunk, dim).transpose(1, 0, 2, 3).reshape(rows, dim)


def embed_columns(spec: StepSpec, params, batch: dict, key) -> jax.Array:
    """Every text column of a micro-batch, `[C, B, L]` -> `[C, B, D]`: one forward mapped over the
    columns (one program body, however many columns), each column its own dropout key."""
    names = ("input_ids", "attention_mask", "token_type_ids", "pool_mask")
    inputs = tuple(batch[name] for name in names)
    if key is None:
        return jax.vmap(lambda *xs: _embed_column(spec, params, dict(zip(names, xs)), None))(
            *inputs
        )
    keys = jax.random.split(key, inputs[0].shape[0])
    return jax.vmap(lambda *xs: _embed_column(spec, params, dict(zip(names, xs[:-1])), xs[-1]))(
        *inputs, keys
    )


def batch_loss(spec: StepSpec, trainable: dict, batch: dict, key) -> jax.Array:
    """The loss of one micro-batch (`batch` arrays `[C, B, ...]`, labels `[B, ...]`)."""
    stacked = embed_columns(spec, trainable["params"], batch, key)
    embeddings = [stacked[c] for c in range(stacked.shape[0])]
    labels, aux = batch["labels"], trainable.get("aux") or None
    if spec.gather or spec.devices == 1:
        return spec.loss(embeddings, labels, aux)

    def block(x):  # [B, ...] -> [devices, B / devices, ...]
        return x.reshape(spec.devices, x.shape[0] // spec.devices, *x.shape[1:])

    per_device = jax.vmap(lambda e, y: spec.loss(list(e), y, aux))
    return jnp.mean(per_device(tuple(block(e) for e in embeddings), block(labels)))


def make_step(spec: StepSpec, tx: optax.GradientTransformation, rate: optax.Schedule):
    """`step(state, batch, key) -> (state, metrics)`; batch arrays carry a leading
    micro-batch axis `[A, ...]`, whose gradients are averaged."""
    grad_fn = jax.value_and_grad(lambda t, b, k: batch_loss(spec, t, b, k))

    def step(state: dict, batch: dict, key) -> tuple[dict, dict]:
        trainable = {"params": state["params"], "aux": state["aux"]}
        micro = batch["input_ids"].shape[0]

        def one(i):
            micro_key = jax.random.fold_in(key, i) if spec.dropout else None
            return grad_fn(trainable, jax.tree.map(lambda x: x[i], batch), micro_key)

        if micro == 1:
            loss, grads = one(0)
        else:

            def accumulate(carry, i):
                loss, grads = one(i)
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, trainable))
            total, _ = jax.lax.scan(accumulate, zeros, jnp.arange(micro))
            loss, grads = jax.tree.map(lambda x: x / micro, total)
        updates, opt = tx.update(grads, state["opt"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": rate(state["step"])}
        new = {**trainable, "opt": opt, "step": state["step"] + 1}
        return new, metrics

    return step


def state_sharding(mesh: Mesh, tree: Any, fsdp: bool) -> Any:
    """Replicated (data parallel) or, with `fsdp`, each array split over `data` along its largest
    axis that divides evenly (small or indivisible arrays stay replicated)."""
    devices = mesh.devices.size

    def place(x) -> NamedSharding:
        shape = getattr(x, "shape", ())
        if not fsdp or devices == 1 or not shape:
            return NamedSharding(mesh, P())
        axes = sorted(range(len(shape)), key=lambda a: -shape[a])
        axis = next((a for a in axes if shape[a] % devices == 0 and shape[a] >= devices), None)
        if axis is None:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(*(DATA if a == axis else None for a in range(len(shape)))))

    return jax.tree.map(place, tree)


def batch_sharding(mesh: Mesh, batch: dict) -> dict:
    """Batch arrays `[A, C, B, L]` and labels `[A, B, ...]`: rows over `data`."""

    def place(name, x) -> NamedSharding:
        row_axis = 1 if name == "labels" else 2
        spec = [None] * x.ndim
        spec[row_axis] = DATA
        return NamedSharding(mesh, P(*spec))

    return {name: place(name, x) for name, x in batch.items()}
