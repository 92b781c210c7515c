"""Run `berta-jax ARGS` in this process and print its peak resident memory: {"maxrss_kb": N}."""

import json
import resource
import sys

from berta_jax.cli import main

code = main(sys.argv[1:])
assert code == 0, code
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
