"""The batch job (`berta-jax encode`): one split-based run over files, on one host or many.

`run` ties it together: `plan` (splits, fingerprint, per-field agreement) -> `settle` (process 0
under the `lock`: complete, refuse, clear or keep verified `parts`) -> the splits embedded and
committed -> `finish` (assemble or publish, verify, manifest); `cluster` holds the processes'
meetings, `layout` every path written. Planning imports no JAX: the job checks and refuses before
the model is loaded.
"""
