"""The encoder and what runs it: `encoder` (Encoder: its constructors and calls) on `encoder_base`
(its parts and the steps of one call: tokenize and plan, run, finish), `input_checks` (what callers
hand it), `batching` and `packing` (rows and batches of static shapes), `budget` (tokens per batch),
`compiled` (every forward compiled once per shape and sharded over the local devices; the programs
in `programs`, the measurements in `stats`), `dtypes` (the compute dtype a backend multiplies
natively) and `compile_cache` (JAX's persistent compilation cache)."""
