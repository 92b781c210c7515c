"""`python -m berta_jax ...` is the `berta-jax` command."""

import sys

from berta_jax.cli.main import main

sys.exit(main())
