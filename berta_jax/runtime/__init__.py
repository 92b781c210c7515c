"""The encoder and what runs it: `encoder` (Encoder: tokenize, plan, run, finish), `batching` and `packing`
(rows and batches of static shapes), `compiled` (every forward compiled once per shape and sharded over the
local devices), `dtypes` (the compute dtype a backend multiplies natively) and `compile_cache` (JAX's
persistent compilation cache)."""
