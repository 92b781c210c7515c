"""The batch job (`berta-jax encode`): inputs, layout, state, chunks, outputs, and the run that ties them.

Import order goes one way: run -> chunks, finish -> state, outputs, layout -> inputs -> storage. None of these
modules imports JAX: the job plans, checks and refuses before the model is loaded.
"""
