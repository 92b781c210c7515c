"""`berta-jax ARGS`, but this process reports its result SECONDS late: the moment at which, in a jax.distributed
run, a process has finished its share and process 0 may already be done.   usage: slow_leaver.py SECONDS ARGS..."""

import sys
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import berta_jax.cli.encode as encode  # noqa: E402
from berta_jax.cli import main  # noqa: E402

delay = float(sys.argv[1])
report = encode._report


def late_report(*args, **kwargs):
    time.sleep(delay)
    return report(*args, **kwargs)


encode._report = late_report
sys.exit(main(sys.argv[2:]))
