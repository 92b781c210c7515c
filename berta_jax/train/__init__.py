"""Training sentence encoders in JAX: sentence-transformers' losses, sharded over every device,
resumable after any kill, a sentence-transformers folder out.

`TrainConfig` is the run (one TOML file plus dotted overrides); `train(config)` runs it. The CLI
(`berta-jax train`) is a thin client of these two.
"""
