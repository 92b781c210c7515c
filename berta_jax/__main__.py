"""`python -m berta_jax ...` is the `berta-jax` command."""

import sys

try:
    from berta_jax.cli.main import main

    code = main()
except KeyboardInterrupt:  # before the command's own handling began
    print("berta-jax: interrupted during start-up; nothing was written", file=sys.stderr)
    code = 130
sys.exit(code)
