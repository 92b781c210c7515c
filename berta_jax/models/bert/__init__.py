"""The BERT family (BERTA, FRIDA's encoder, MiniLM, ...): `config` (config.json, typed and checked),
`numerics` (the dtype policy), `model` (the Flax NNX encoder), `names` (the one table between
Hugging Face and Flax parameter names) and `params` (the per-layer view of the stacked
parameters)."""
