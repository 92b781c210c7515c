"""The `berta-jax` command line (`main.USAGE` lists the commands): a thin layer over the library."""

from berta_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
