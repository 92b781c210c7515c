"""`berta-jax train CONFIG.toml [KEY=VALUE ...]`: a thin client of `berta_jax.train`."""

from __future__ import annotations

import argparse
import sys

from berta_jax.cli.commands import command
from berta_jax.cli.signals import StopSignals
from berta_jax.job.cluster import join

DESCRIPTION = """Train a sentence encoder (sentence-transformers' losses, in JAX) from a TOML file.

  berta-jax train run.toml                          the settings of run.toml
  berta-jax train run.toml optim.lr=2e-5 steps=2000  any key overridden with a dotted name
  berta-jax train run.toml --resume                 continue the run in its output_dir
  berta-jax train run.toml --export 500             the checkpoint of step 500 as a
                                                    sentence-transformers folder
  berta-jax train --keys                            every setting, its default and meaning

The finished model is OUTPUT_DIR/model/ (a sentence-transformers folder); every logged step is a
line of OUTPUT_DIR/metrics.jsonl and a TensorBoard point under OUTPUT_DIR/tensorboard/. Ctrl-C or
SIGTERM saves a checkpoint at the current step and exits 130: --resume continues from it.
"""


def add_train(sub) -> None:
    parser = command(sub, "train", "train or fine-tune a sentence encoder", DESCRIPTION)
    parser.add_argument("config", nargs="?", help="the run's TOML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    parser.add_argument(
        "--export",
        type=_step,
        metavar="STEP",
        help="write the checkpoint of STEP as OUTPUT_DIR/model-STEP/",
    )
    parser.add_argument("--keys", action="store_true", help="list every setting and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    multi = parser.add_argument_group("several processes (jax.distributed)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=_step, help="with --coordinator")
    multi.add_argument("--process-id", type=int, help="with --coordinator")
    multi.add_argument(
        "--distributed", action="store_true", help="join the cluster JAX detects (TPU pods, SLURM)"
    )
    parser.set_defaults(func=_train)


def _step(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def _list_keys() -> int:
    from berta_jax.train.config import KEYS, REQUIRED

    for key, spec in KEYS.items():
        default = "(required)" if spec.default is REQUIRED else repr(spec.default)
        print(f"{key:44} {spec.kind:6} {default:14} {spec.doc}")
    print("prompts.COLUMN, prompts.DATASET.COLUMN, teacher.prompts.COLUMN: a prompt name or string")
    print("loss.OPTION: the loss's own options (scale, similarity, mini_batch_size, ...)")
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.keys:
        return _list_keys()
    if not args.config:
        print("berta-jax train: error: a CONFIG.toml is required", file=sys.stderr)
        return 2
    from berta_jax.train.config import TrainConfig

    cfg = TrainConfig.from_toml(args.config, args.overrides)
    stop = StopSignals()
    join(
        args.coordinator,
        args.num_processes,
        args.process_id,
        detect=args.distributed,
        heartbeat_timeout=100,
        stop=stop,
    )
    stop.install()
    from berta_jax.train.trainer import export_checkpoint, train

    if args.export:
        print(export_checkpoint(cfg, args.export))
        return 0
    print(cfg.to_json(), file=sys.stderr)
    result = train(
        cfg,
        resume=args.resume,
        progress=not args.quiet,
        stop=stop,
        log=lambda m: print(m, file=sys.stderr),
    )
    if result.stopped_at is not None:
        print(
            f"berta-jax train: stopped at step {result.stopped_at}; its checkpoint is saved: "
            "the same command with --resume continues",
            file=sys.stderr,
        )
        return 130
    print(result.model_dir)
    return 0
