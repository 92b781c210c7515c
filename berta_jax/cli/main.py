"""The `berta-jax` entry point: one subcommand per module, errors as one line, interrupts as exit
130.

Commands import the heavy parts (JAX, transformers) only when they need them, so `--help`,
`--version` and a refused `encode` answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import signal
import sys

from berta_jax.cli import commands, encode, engines, evaluate_command, parity_command, train_command
from berta_jax.errors import BertaJaxError
from berta_jax.version import __version__

RENAMED = {
    "--chunk-rows": (
        "--split-size (bytes of text per split: the unit of work is now a split of the input)"
    )
}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


USAGE = """berta-jax: BERT sentence encoders (sergeyzh/BERTA first of all) in JAX.

  berta-jax demo [--model M]           the model card's prompt pairs and their cosines
  berta-jax convert SRC DST            HF / sentence-transformers folder -> berta-jax (Flax) folder
  berta-jax convert --to hf SRC DST    berta-jax folder -> HF folder (transformers,
                                       sentence-transformers)
  berta-jax parity --model M           stage-by-stage differences from PyTorch; non-zero exit
                                       above tolerance
  berta-jax encode IN... -o OUT --model M
                                       embed corpus files into .npy / .parquet / a dataset,
                                       resumable
  berta-jax beam IN... -o DIR --model M [-- BEAM_OPTIONS]
                                       the same on Apache Beam (Dataflow, in-process)
  berta-jax train CONFIG.toml [KEY=VALUE ...] [--resume]
                                       train or fine-tune (sentence-transformers' losses)
  berta-jax evaluate --model M [--retrieval DIR] [--sts F] [--classification F] [--clustering F]
                                       retrieval / STS / classification / clustering metrics,
                                       sentence-transformers' and MTEB's, as a table and JSON
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berta-jax", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"berta-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices
    commands.add_demo(sub)
    commands.add_convert(sub)
    parity_command.add_parity(sub)
    encode.add_encode(sub)
    engines.add_beam(sub)
    train_command.add_train(sub)
    evaluate_command.add_evaluate(sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; `beam` passes what follows `--`, and options it does not know, to the Beam
    pipeline."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    own, after_dashes = engines.split_pipeline_args(argv)
    _refuse_unknown_options(parser, own)
    args, unknown = parser.parse_known_args(own)
    if args.command != "beam":
        args = parser.parse_args(argv)
    else:
        args.pipeline_args = unknown + after_dashes
    check = getattr(args, "check", None)
    problem = check(args) if check is not None else None
    if problem:
        parser.commands[args.command].error(problem)
    return args


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An option the command does not know is named first (argparse would first complain of a
    missing required one: `--modle M` said "--model is required"), with the option it most
    resembles. `beam` hands Beam's pipeline options to Beam (after `--`, anything goes to Beam);
    before `--` any other option is refused: Beam would only log a typo such as `--id-feild` and
    run without it."""
    command = next((a for a in argv if not a.startswith("-")), None)
    sub = parser.commands.get(command)
    if sub is None:
        return
    known = [o for action in sub._actions for o in action.option_strings]
    for token in argv:
        name = token.split("=", 1)[0]
        # argparse takes prefixes
        if name.startswith("--") and not any(k.startswith(name) for k in known):
            if command == "beam" and engines.is_beam_option(name):
                continue
            like = RENAMED.get(name) or next(iter(difflib.get_close_matches(name, known, 1)), None)
            what = f"unknown option {name}"
            if command == "beam":
                what += ": neither this command's nor a Beam pipeline option"
            sub.error(what + (f"; did you mean {like}?" if like else ""))


def main(argv: list[str] | None = None) -> int:
    # SIGTERM is Ctrl-C from the very start: a scheduler's stop during start-up exits 130 cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = parse(argv)
    except KeyboardInterrupt:
        return 130
    try:
        return args.func(args)
    except BertaJaxError as e:
        print(f"berta-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"berta-jax {args.command}: interrupted; nothing more was committed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
