"""`berta-jax beam`: the corpus-to-Parquet pipeline on Apache Beam (the `[beam]` extra).

Everything after `--` is handed to Beam as pipeline options; before it, an option is either this
command's or one of Beam's pipeline options (a typo such as --id-feild is refused: Beam would only
log it and run without it). The same command runs in-process or on Dataflow:

    berta-jax beam 'gs://b/corpus/*.jsonl' -o gs://b/emb/ --model gs://b/BERTA \\
        -- --runner=DataflowRunner ...

With no `--runner`, the pipeline runs in this process on Beam's FnApiRunner. (Beam's default
DirectRunner first tries the Prism runner, which downloads a binary: that fails on a machine without
internet access.)
"""

from __future__ import annotations

import argparse
import logging

from berta_jax.cli.commands import add_prompt_options, check_batch_tokens, command
from berta_jax.cli.option_types import number_in, positive_int
from berta_jax.errors import BertaJaxError, JobError

DESCRIPTION = __doc__.split("\n\n", 1)[1]


def add_beam(sub) -> None:
    beam = command(
        sub,
        "beam",
        "embed corpus files into a Parquet dataset with an Apache Beam pipeline",
        DESCRIPTION,
    )
    _add_inputs(beam)
    _add_compute_options(beam)
    beam.set_defaults(func=run_beam, pipeline_args=[], check=check_beam_options)


def _add_inputs(beam: argparse.ArgumentParser) -> None:
    """What is embedded, into which dataset, with which model and prompt; what a bad row does."""
    beam.add_argument(
        "inputs",
        nargs="+",
        help="input files, globs, directories of shards or URLs (.txt, .jsonl, "
        ".csv, .parquet, .txt.gz, .jsonl.gz)",
    )
    beam.add_argument(
        "-o", "--output", required=True, help="the dataset folder to write (new or empty)"
    )
    beam.add_argument(
        "--model",
        required=True,
        help="model folder, storage URL or hub id (as every worker sees it)",
    )
    add_prompt_options(beam)
    beam.add_argument(
        "--text-field",
        "--text-column",
        dest="text_field",
        default="text",
        help="jsonl field / csv or parquet column with the text (default: text)",
    )
    beam.add_argument(
        "--id-field", "--id-column", dest="id_field", help="field / column with an id to keep"
    )
    beam.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="skip: a bad row becomes a zero row, listed with its reason in _skipped-*.jsonl",
    )


def _add_compute_options(beam: argparse.ArgumentParser) -> None:
    """The compute dtype, the vectors' size, the splits and the RunInference batches."""
    beam.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="compute dtype (float32: PyTorch parity; bfloat16: the fast mode on accelerators and "
        "on CPUs with AMX / AVX512-BF16; auto: chosen on each worker from its hardware)",
    )
    beam.add_argument(
        "--truncate-dim", type=positive_int, help="keep the first N dimensions (Matryoshka)"
    )
    beam.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        help="padded tokens per device batch (default: the Encoder's)",
    )
    beam.add_argument(
        "--split-mb",
        type=number_in(0.0, low_open=True),
        default=64.0,
        help="byte size of the splits of .txt / .jsonl files (default 64)",
    )
    beam.add_argument(
        "--min-batch-size",
        type=positive_int,
        default=256,
        help="fewest texts per RunInference batch",
    )
    beam.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=4096,
        help="most texts per RunInference batch",
    )
    beam.add_argument(
        "--large-model",
        action="store_true",
        help="one model per VM shared by the SDK processes (Beam's large_model)",
    )


def check_beam_options(args: argparse.Namespace) -> str | None:
    """What is wrong between options (each alone is checked by its type), or None."""
    if args.min_batch_size > args.max_batch_size:
        return (
            f"--min-batch-size {args.min_batch_size} is above --max-batch-size "
            f"{args.max_batch_size}"
        )
    return None


def run_beam(args: argparse.Namespace) -> int:
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise JobError("apache-beam is not installed: pip install 'berta-jax[beam]'") from None
    from berta_jax.beam import build_pipeline

    handler = _handler(args)
    folder = _folder(args)
    # Beam logs an element's exception with its traceback before raising it: a berta-jax error is
    # printed as one line by the command instead
    logging.getLogger("apache_beam.runners.common").addFilter(_drop_own_errors)
    options = PipelineOptions(args.pipeline_args)
    runner = None if _names_runner(args.pipeline_args) else _in_process_runner()
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        build_pipeline(
            pipeline,
            args.inputs,
            args.output,
            handler,
            dim=folder.embedding_dim,
            text_field=args.text_field,
            id_field=args.id_field,
            on_error=args.on_error,
            split_bytes=max(1, int(args.split_mb * 2**20)),
            model_folder=folder.folder,
        )
    print(f"berta-jax beam: wrote {args.output}")
    return 0


def _drop_own_errors(record: logging.LogRecord) -> bool:
    """A logging filter: False for a record of a berta-jax error (it names its file and line)."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, BertaJaxError)


def _handler(args: argparse.Namespace):
    from berta_jax.beam import BertaModelHandler

    try:
        return BertaModelHandler(
            args.model,
            prompt_name=args.prompt_name,
            prompt=args.prompt,
            dtype=args.dtype,
            truncate_dim=args.truncate_dim,
            max_batch_tokens=args.max_batch_tokens,
            on_error=args.on_error,
            min_batch_size=args.min_batch_size,
            max_batch_size=args.max_batch_size,
            large_model=args.large_model,
        )
    except ValueError as e:
        raise JobError(f"--model {args.model}: {e}") from None


def _folder(args: argparse.Namespace):
    """The model folder's configs (no weights, no JAX), with the prompt and batch budget checked
    against them."""
    from berta_jax.loading.folder import ModelFolder

    folder = ModelFolder.open(args.model, truncate_dim=args.truncate_dim)
    try:
        folder.sentence.resolve_prompt(args.prompt_name, args.prompt)
        check_batch_tokens(args.max_batch_tokens, folder.sentence.max_seq_length)
    except ValueError as e:
        raise JobError(f"--model {args.model}: {e}") from None
    return folder


def is_beam_option(name: str) -> bool:
    """Whether `--name` is one of Beam's pipeline options (Beam is imported only to answer; without
    it, `run_beam` says what to install)."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        return True
    return name.lstrip("-") in PipelineOptions([]).get_all_options()


def _names_runner(pipeline_args: list[str]) -> bool:
    return any(arg == "--runner" or arg.startswith("--runner=") for arg in pipeline_args)


def _in_process_runner():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def split_pipeline_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this command's arguments, the Beam pipeline options after `--`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []
