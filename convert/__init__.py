"""The converter between Hugging Face BERT checkpoints and berta-jax's Flax parameters.

Installed as `berta_jax.convert` (the source lives in the repository's top-level `convert/` folder, where
a newcomer looks for it). `mapping` holds the one name table; `safetensors_io` reads and writes files
strictly; `checkpoint` turns tensors into Flax parameters and back and validates them; `folders` converts
whole model folders in both directions.
"""
