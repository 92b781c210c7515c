"""The converter between Hugging Face BERT checkpoints and berta-jax's Flax parameters.

Installed as `berta_jax.convert` (the source lives in the repository's top-level `convert/` folder,
where a newcomer looks for it). The name table it follows is the model family's
(`berta_jax.models.bert.names`); `safetensors_io` reads and writes files strictly; `checkpoint`
turns tensors into Flax parameters and back and validates them; `folders` converts whole model
folders in both directions.
"""
