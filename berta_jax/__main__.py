"""`python -m berta_jax ...` is the `berta-jax` command (the same program as
`python -m berta_jax.cli`)."""

import runpy

runpy.run_module("berta_jax.cli", run_name="__main__", alter_sys=True)
