"""The converter between Hugging Face BERT checkpoints and berta-jax's Flax parameter tree.

`mapping` holds the one name table; `safetensors_io` reads and writes files
strictly; `checkpoint` turns tensors into Flax parameters and back; `folders`
converts whole model folders in both directions.
"""
