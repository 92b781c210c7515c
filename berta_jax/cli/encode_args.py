"""The options of `berta-jax encode`, in the order its --help lists them."""

from __future__ import annotations

import argparse

from berta_jax.cli.commands import add_prompt_options, command
from berta_jax.cli.option_types import (
    byte_size,
    host_port,
    non_negative_int,
    number_in,
    positive_int,
)
from berta_jax.data.outputs import PRECISIONS

HELP = "embed corpus files into .npy / .parquet or a dataset of shards (resumable)"
DESCRIPTION = (
    "Embed every row of the inputs (.txt, .jsonl, .csv, .parquet, .txt.gz, .jsonl.gz; local paths, "
    "gs:// / s3:// URLs, globs, directories of shards) into OUTPUT: a .npy file (float rows in "
    "input order), a .parquet file (row, id, embedding), or a directory of Parquet shards (end "
    "OUTPUT with /). Work is committed split by split; after a crash, --resume continues and the "
    "result is identical to an uninterrupted run. Ctrl-C or SIGTERM stops after the current "
    "batch.\n\n"
    "examples:\n  berta-jax encode examples/sample.txt -o sample.npy --model sergeyzh/BERTA\n"
    "  berta-jax encode docs.jsonl.gz -o docs.parquet --model ./BERTA --text-field body "
    "--id-field id --prompt-name search_document\n"
    "  berta-jax encode a.csv b.csv -o out.npy --model ./BERTA --text-column text --on-error skip "
    "--resume\n"
    "  berta-jax encode 'gs://b/corpus/*.parquet' -o gs://b/emb/ --model gs://b/BERTA "
    "--distributed  # every host of a TPU pod"
)


def encode_parser(sub) -> argparse.ArgumentParser:
    """The `encode` subcommand with all its options (what runs it is set by the caller)."""
    enc = command(sub, "encode", help=HELP, description=DESCRIPTION)
    _add_inputs(enc)
    _add_output_options(enc)
    _add_compute_options(enc)
    _add_job_control(enc)
    _add_cluster_options(
        enc.add_argument_group(
            "several hosts (jax.distributed): the splits are dealt over the processes"
        )
    )
    return enc


def _add_inputs(enc: argparse.ArgumentParser) -> None:
    """What is embedded, into which output, with which model and prompt."""
    enc.add_argument("inputs", nargs="+", help="input files, globs, directories of shards or URLs")
    enc.add_argument(
        "-o",
        "--output",
        required=True,
        help="OUT.npy, OUT.parquet, or DIR/ for a dataset of shards",
    )
    enc.add_argument("--model", required=True, help="model folder, storage URL or hub id")
    add_prompt_options(enc)
    enc.add_argument(
        "--text-field",
        "--text-column",
        dest="text_field",
        default="text",
        help="jsonl field / csv or parquet column holding the text (default: text)",
    )
    enc.add_argument(
        "--id-field",
        "--id-column",
        dest="id_field",
        help="field or column carried to parquet outputs (strings, or integers; one kind per run)",
    )


def _add_output_options(enc: argparse.ArgumentParser) -> None:
    """How the vectors are stored."""
    enc.add_argument(
        "--format",
        choices=("file", "dataset"),
        default=None,
        help="dataset: a directory of Parquet shards (default: from OUTPUT: a trailing / means "
        "dataset)",
    )
    enc.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="stored precision; int8/uint8/binary/ubinary follow sentence-transformers' "
        "quantize_embeddings (int8/uint8 ranges from the whole output, single-file outputs only)",
    )
    enc.add_argument(
        "--truncate-dim", type=positive_int, help="keep the first N dimensions (Matryoshka)"
    )


def _add_compute_options(enc: argparse.ArgumentParser) -> None:
    """The compute dtype, the batches, and the splits that are the unit of work."""
    enc.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="compute dtype: float32 (PyTorch parity), bfloat16 (the fast mode on accelerators and "
        "on CPUs with AMX / AVX512-BF16), auto (bfloat16 where the hardware has it, else float32)",
    )
    enc.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        help="padded tokens per batch (default: 2048 per CPU device; on "
        "accelerators what an eighth of the device memory holds, 8192-262144 per device)",
    )
    enc.add_argument("--batch-size", type=positive_int, help="at most this many texts per batch")
    enc.add_argument(
        "--split-size",
        type=byte_size,
        help="bytes of text per split, the unit of work, of a resume and of what a stop can lose: "
        "one part per split (default: about a minute of work on this device, 16K-4M, e.g. 16K for "
        "a BERT-base model on a CPU and 4M on an accelerator; a resume keeps the earlier run's "
        "size; Parquet splits are row groups, .gz and .csv files are one split each)",
    )


def _add_job_control(enc: argparse.ArgumentParser) -> None:
    """Bad rows, reports, what an earlier run left, and progress output."""
    enc.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="a bad row stops the job (default) or is skipped: a zero row, listed in "
        "OUTPUT.skipped.jsonl",
    )
    enc.add_argument(
        "--truncation-report",
        help="also write the list of texts cut at the context (JSON lines: file, "
        "line) to this file (always kept beside the output when any text was cut)",
    )
    enc.add_argument("--resume", action="store_true", help="continue an interrupted run")
    enc.add_argument("--overwrite", action="store_true", help="replace an existing output")
    enc.add_argument(
        "--quiet",
        action="store_true",
        help="no progress output (the one-line result still goes to stdout, errors to stderr)",
    )
    enc.add_argument(
        "--log-every",
        type=number_in(0.0),
        default=10.0,
        help="seconds between progress lines when stderr is not a terminal (default 10)",
    )


def _add_cluster_options(multi) -> None:
    multi.add_argument(
        "--distributed", action="store_true", help="join the cluster JAX detects (TPU pod, SLURM)"
    )
    multi.add_argument(
        "--coordinator", type=host_port, help="HOST:PORT of process 0, for an explicit cluster"
    )
    multi.add_argument("--num-processes", type=positive_int, help="with --coordinator")
    multi.add_argument(
        "--process-id", type=non_negative_int, help="with --coordinator: 0 .. --num-processes - 1"
    )
    multi.add_argument(
        "--peer-timeout",
        type=positive_int,
        default=100,
        help="seconds without a heartbeat after which JAX "
        "takes a process for dead and the others stop waiting for it (default 100, JAX's)",
    )


def check_encode_options(args: argparse.Namespace) -> str | None:
    """What is wrong between options (each alone is checked by its type), or None."""
    if args.process_id is not None and args.num_processes is not None:
        if args.process_id >= args.num_processes:
            return (
                f"--process-id {args.process_id} is not below --num-processes "
                f"{args.num_processes}: the processes are numbered 0 to {args.num_processes - 1}"
            )
    if (args.num_processes is not None or args.process_id is not None) and not args.coordinator:
        return "--num-processes and --process-id go with --coordinator HOST:PORT"
    return None
