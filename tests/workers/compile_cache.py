"""Embed the test texts with MODEL using compilation cache CACHE; print device count, compiled shapes, cache hits
and the embeddings as JSON.   usage: compile_cache.py MODEL CACHE"""

import json
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402

from berta_jax import Encoder  # noqa: E402
from tests.texts import ALL  # noqa: E402

encoder = Encoder.from_pretrained(sys.argv[1], compilation_cache=sys.argv[2])
embeddings = encoder.encode(ALL)
print(json.dumps(dict(devices=len(jax.local_devices()), shapes=encoder.compile_stats.count,
                      hits=encoder.compile_stats.cache_hits, emb=embeddings.tolist())))
