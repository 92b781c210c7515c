"""Write TARGET over and over until killed: alternately two versions, each written atomically.
usage: write_loop.py safetensors TARGET | write_loop.py copy TARGET SOURCE_A SOURCE_B"""

import sys

import numpy as np

from berta_jax.convert.safetensors_io import write_safetensors
from berta_jax.storage.stores import copy_file

kind, target = sys.argv[1], sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    i += 1
    if kind == "safetensors":
        write_safetensors(target, {"w": np.full((4_000_000,), i % 2, np.float32)}, {"format": "pt"})
    else:
        copy_file(sys.argv[3 + i % 2], target)
    if i == 1:
        print("wrote", flush=True)  # one whole version is in place
