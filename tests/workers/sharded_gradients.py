"""Embeddings and contrastive-loss gradients with parameters replicated vs sharded on their last axis over the
local devices (run with XLA_FLAGS=--xla_force_host_platform_device_count=4).   usage: sharded_gradients.py MODEL"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from berta_jax import Encoder, make_embed_fn  # noqa: E402
from tests.test_training import DOCUMENTS, QUERIES, contrastive_jax, padded  # noqa: E402

encoder = Encoder.from_pretrained(sys.argv[1])
mesh = Mesh(np.array(jax.devices()), ("model",))


def spec(x):  # the last (hidden / output) axis split over the devices where it divides, else replicated
    n = len(jax.devices())
    return NamedSharding(mesh, P(*([None] * (x.ndim - 1)), "model") if x.shape[-1] % n == 0 else P())


sharded = jax.tree_util.tree_map(lambda x: jax.device_put(x, spec(x)), encoder.params)
n_sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(sharded))
fn = make_embed_fn(encoder.graphdef)
q, qm = padded(encoder, QUERIES, "search_query: ")
d, dm = padded(encoder, DOCUMENTS, "search_document: ")


def loss(p):
    return contrastive_jax(fn(p, q, qm), fn(p, d, dm))


out = {}
for name, params in (("plain", encoder.params), ("sharded", sharded)):
    e = jax.jit(fn)(params, q, qm)
    g = jax.jit(jax.grad(loss))(params)
    out[name] = (np.asarray(e), [np.asarray(x) for x in jax.tree_util.tree_leaves(g)])
emb = float(np.abs(out["plain"][0] - out["sharded"][0]).max())
floor = 1e-3 * np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in out["plain"][1]))
grad = max(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), floor)) for a, b in zip(out["plain"][1], out["sharded"][1]))
print(json.dumps(dict(devices=len(jax.devices()), n_sharded=n_sharded, emb=emb, grad=grad)))
