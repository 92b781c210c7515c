"""The splash attention kernel (Pallas interpreter on CPU) under the Runtime's row mesh, which runs it inside a
shard_map over the rows, vs the explicit kernel on the same devices (run with
XLA_FLAGS=--xla_force_host_platform_device_count=4).   usage: splash_rows.py MODEL"""

import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from berta_jax import Encoder  # noqa: E402
from berta_jax.runtime.compiled import Runtime  # noqa: E402
from tests.texts import MIXED  # noqa: E402

shard_maps = []  # the meshes the attention's shard_map calls ran over
_shard_map = jax.shard_map
jax.shard_map = lambda f, *, mesh, **kw: shard_maps.append(mesh.shape) or _shard_map(f, mesh=mesh, **kw)

encoder = Encoder.from_pretrained(sys.argv[1])
batches = encoder.prepare(MIXED, prompt=encoder.sentence.resolve_prompt(None, None)).batches
out = {"devices": len(jax.devices()), "packed": any(b.num_segments > 1 for b in batches)}
vectors = {}
for kernel in ("xla", "splash"):
    runtime = Runtime(encoder.model, attention=kernel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vectors[kernel] = np.concatenate([v for _, v in runtime.run(batches, pooling="mean", normalize=True)])
    out[f"{kernel}_warnings"] = sorted({str(w.message) for w in caught if w.category is RuntimeWarning})
    out[f"{kernel}_devices"] = runtime.num_devices
    out[f"{kernel}_shard_maps"] = [dict(m) for m in shard_maps]
    shard_maps.clear()
out["max_abs_diff"] = float(np.abs(vectors["splash"] - vectors["xla"]).max())
out["rows"] = len(vectors["xla"])
print(json.dumps(out))
