"""Training: the losses (`berta_jax.train.losses`), pure JAX functions of embeddings and labels."""
