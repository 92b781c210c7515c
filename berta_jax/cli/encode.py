"""`berta-jax encode`: the batch job on the command line, with progress per batch and clean stops."""

from __future__ import annotations

import argparse
import re
import sys
import time

from berta_jax.cli.commands import add_prompt_options, check_batch_tokens, command
from berta_jax.cli.signals import StopSignals
from berta_jax.errors import BertaJaxError
from berta_jax.job.cluster import Cluster, join
from berta_jax.data.outputs import PRECISIONS
from berta_jax.job.plan import DEFAULT_SPLIT_BYTES, JobOptions
from berta_jax.job.run import JobSummary

EXIT_INTERRUPTED, EXIT_PENDING = 130, 3


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ProgressDisplay:
    """Per-batch progress: a tqdm bar on a terminal, else a line at the first batch and then every `log_every`
    seconds. Texts/s and tokens/s are over the same rows (those embedded by this run) and measured from the end of
    the first batch, so the first program's compile time does not distort them; the ETA comes from the share of
    this process's input bytes done, which needs no row count."""

    def __init__(self, *, log_every: float, stream=None):
        self.log_every, self.stream = log_every, stream or sys.stderr
        self.first: tuple[float, int, int, float] | None = (
            None  # (time, rows, tokens, fraction) at the first batch
        )
        self.last: float | None = None
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                unit="%",
                desc="embedding",
                dynamic_ncols=True,
                file=self.stream,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            )

    def __call__(self, p: JobSummary) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, p.rows, p.tokens, p.fraction)
        elapsed = now - self.first[0]
        rate = (p.rows - self.first[1]) / elapsed if elapsed > 0 else 0.0
        tokens = (p.tokens - self.first[2]) / elapsed if elapsed > 0 else 0.0
        moved = p.fraction - self.first[3]
        eta = f", ETA {elapsed / moved * (1 - p.fraction):.0f} s" if moved > 0 else ""
        done = p.rows + p.rows_resumed
        total = f"/{p.total_rows}" if p.total_rows is not None else ""
        if self.bar is not None:
            self.bar.update(100 * p.fraction - self.bar.n)
            self.bar.set_postfix_str(
                f"{done}{total} texts, {tokens:,.0f} tokens/s{eta}", refresh=False
            )
            return
        if self.last is not None and now - self.last < self.log_every:
            return
        self.last = now
        speed = f", {rate:.1f} texts/s, {tokens:,.0f} tokens/s" if rate > 0 else " (first batch)"
        print(
            f"embedded {done}{total} texts, {p.fraction:.0%} ({p.rows_resumed} resumed){speed}{eta}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loader(args: argparse.Namespace, model, stop: StopSignals):
    def load():
        with (
            stop.held()
        ):  # native libraries start here: a signal now interrupts once the model is loaded
            from berta_jax.runtime.compile_cache import enable_compilation_cache
            from berta_jax.runtime.encoder import Encoder

            enable_compilation_cache()
            encoder = Encoder.from_folder(
                model, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens
            )
        stop.arm()
        return encoder

    return load


def _report(summary: JobSummary, args: argparse.Namespace, context: int) -> int:
    if summary.already_complete:
        print(
            f"{summary.output} is already complete for these inputs, model, prompt and options "
            f"({plural(summary.output_rows, 'text')}, verified); nothing to do"
        )
        return 0
    if summary.interrupted:
        print(
            f"stopped: this run committed {plural(summary.splits_done, 'split')}; the split in flight is embedded "
            "again by a resume. Rerun the same command with --resume to finish",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.pending:
        were = "has" if len(summary.pending) == 1 else "have"
        print(
            f"{plural(len(summary.pending), 'split')} ({', '.join(map(str, summary.pending[:10]))}) {were} no part: "
            "a process of this run stopped. Run the same command with --resume (on any number of hosts) to finish",
            file=sys.stderr,
        )
        return EXIT_PENDING
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    speed = (
        f", {rate:.1f} texts/s, {summary.tokens / summary.seconds:,.0f} tokens/s"
        if summary.seconds
        else ""
    )
    if summary.process != 0:
        print(
            f"process {summary.process}: embedded {plural(summary.splits_done, 'split')} "
            f"({plural(summary.rows, 'text')}{speed}{_busy(summary)}); process 0 finishes {summary.output}"
        )
        return 0
    others = summary.output_rows - summary.rows - summary.skipped - summary.rows_resumed
    print(
        f"wrote {summary.output}: {plural(summary.output_rows, 'text')} ({summary.rows_resumed} resumed from "
        f"{plural(summary.splits_resumed, 'split')}{f', {others} embedded by other processes' if others else ''}), "
        f"{summary.skipped} skipped, {summary.truncated} truncated at {context} tokens{speed}{_busy(summary)}"
    )
    return 0


def _busy(summary: JobSummary) -> str:
    """How much of the embedding time the device computed (the rest it waited on the host)."""
    return (
        f", device busy {summary.device_busy:.0%} of {summary.embed_seconds:.1f} s"
        if summary.embed_seconds
        else ""
    )


def _run(args: argparse.Namespace, stop: StopSignals, cluster: Cluster) -> int:
    from berta_jax.loading.folder import ModelFolder
    from berta_jax.job.run import run_job

    model = ModelFolder.open(args.model)
    choice = _dtype_choice(args)
    try:
        check_batch_tokens(args.max_batch_tokens, model.sentence.max_seq_length)
        options = JobOptions(
            text_field=args.text_field,
            id_field=args.id_field,
            prompt=model.sentence.resolve_prompt(args.prompt_name, args.prompt),
            precision=args.precision,
            truncate_dim=args.truncate_dim,
            split_bytes=args.split_size,
            on_error=args.on_error,
            max_batch_tokens=args.max_batch_tokens,
            batch_size=args.batch_size,
        )
    except ValueError as e:
        print(f"berta-jax encode: error: {e}", file=sys.stderr)
        return 2
    display = None if args.quiet else ProgressDisplay(log_every=args.log_every)
    try:
        summary = run_job(
            _loader(args, model, stop),
            args.inputs,
            args.output,
            options,
            model=model,
            resume=args.resume,
            overwrite=args.overwrite,
            dataset=args.format == "dataset",
            truncation_report=args.truncation_report,
            compute_dtype=args.dtype,
            progress=display,
            stop=stop,
            cluster=cluster,
        )
    finally:
        if display is not None:
            display.close()
    try:
        code = _report(summary, args, model.sentence.max_seq_length)
        if choice is not None and not args.quiet:
            print(f"compute dtype {choice}")
    except (
        BrokenPipeError
    ):  # whoever read stdout left (`| head -c0`); the output is written and recorded all the same
        _silence_stdout()
        return 0 if not (summary.interrupted or summary.pending) else EXIT_INTERRUPTED
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dtype_choice(args: argparse.Namespace):
    """For --dtype auto: the dtype this machine's device gets (named in the job's fingerprint), and why."""
    if args.dtype != "auto":
        return None
    import jax

    from berta_jax.runtime.dtypes import choose_dtype

    choice = choose_dtype("auto", jax.default_backend())
    args.dtype = choice.name
    return choice


def _encode(args: argparse.Namespace) -> int:
    stop, cluster = StopSignals(), None
    try:
        cluster = join(
            args.coordinator,
            args.num_processes,
            args.process_id,
            detect=args.distributed,
            heartbeat_timeout=args.peer_timeout,
            stop=stop,
        )
        stop.install()  # after jax.distributed, whose preemption notifier takes SIGTERM for itself otherwise
        return _run(args, stop, cluster)
    except BertaJaxError:
        raise  # its own message names what is at fault
    except (
        OSError
    ) as e:  # disk full, read-only folder, ...: committed parts stay, temporary files are removed
        print(
            f"berta-jax encode: error: {e.filename or args.output}: {e.strerror or e}; parts committed so far "
            "are kept, rerun with --resume once fixed",
            file=sys.stderr,
        )
        return 2
    finally:
        stop.restore()
        if cluster is not None:
            sys.stdout.flush()
            try:
                cluster.leave()  # process 0 last: JAX stops every process still connected when it goes
            finally:
                if cluster.abandoned:  # stopped while JAX waited for a stalled peer
                    print(
                        "berta-jax encode: stopped while waiting for another process; parts committed so far "
                        "are kept, rerun with --resume",
                        file=sys.stderr,
                    )
                    stop.exit_now(130)


def split_size(text: str) -> int:
    """`4194304`, `4M`, `512K`, `1G` -> bytes."""
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (say 4M, 512K or a number of bytes)"
        )
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")


def add_encode(sub) -> None:
    enc = command(
        sub,
        "encode",
        help="embed corpus files into .npy / .parquet or a dataset of shards (resumable)",
        description="Embed every row of the inputs (.txt, .jsonl, .csv, .parquet, .txt.gz, .jsonl.gz; local "
        "paths, gs:// / s3:// URLs, globs, directories of shards) into OUTPUT: a .npy file (float rows in "
        "input order), a .parquet file (row, id, embedding), or a directory of Parquet shards (end OUTPUT "
        "with /). Work is committed split by split; after a crash, --resume continues and the result is "
        "identical to an uninterrupted run. Ctrl-C or SIGTERM stops after the current batch.\n\n"
        "examples:\n  berta-jax encode examples/sample.txt -o sample.npy --model sergeyzh/BERTA\n"
        "  berta-jax encode docs.jsonl.gz -o docs.parquet --model ./BERTA --text-field body --id-field id "
        "--prompt-name search_document\n"
        "  berta-jax encode a.csv b.csv -o out.npy --model ./BERTA --text-column text --on-error skip --resume\n"
        "  berta-jax encode 'gs://b/corpus/*.parquet' -o gs://b/emb/ --model gs://b/BERTA --distributed  "
        "# every host of a TPU pod",
    )
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
    enc.add_argument(
        "--format",
        choices=("file", "dataset"),
        default=None,
        help="dataset: a directory of Parquet shards (default: from OUTPUT: a trailing / means dataset)",
    )
    enc.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="stored precision; int8/uint8/binary/ubinary follow sentence-transformers' quantize_embeddings "
        "(int8/uint8 ranges from the whole output, single-file outputs only)",
    )
    enc.add_argument("--truncate-dim", type=int, help="keep the first N dimensions (Matryoshka)")
    enc.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default="float32",
        help="compute dtype: float32 (PyTorch parity), bfloat16 (the fast mode on accelerators and on CPUs "
        "with AMX / AVX512-BF16), auto (bfloat16 where the hardware has it, else float32)",
    )
    enc.add_argument(
        "--max-batch-tokens",
        type=int,
        help="padded tokens per batch (default: 2048 per CPU device; on "
        "accelerators what an eighth of the device memory holds, 8192-262144 per device)",
    )
    enc.add_argument("--batch-size", type=int, help="at most this many texts per batch")
    enc.add_argument(
        "--split-size",
        type=split_size,
        default=DEFAULT_SPLIT_BYTES,
        help="bytes of text per split, the "
        "unit of work and of a resume: one part per split (default 4M; Parquet splits are row groups, "
        ".gz and .csv files are one split each)",
    )
    enc.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="a bad row stops the job (default) or is skipped: a zero row, listed in OUTPUT.skipped.jsonl",
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
        type=float,
        default=10.0,
        help="seconds between progress lines when stderr is not a terminal (default 10)",
    )
    _add_cluster_options(
        enc.add_argument_group(
            "several hosts (jax.distributed): the splits are dealt over the processes"
        )
    )
    enc.set_defaults(func=_encode)


def _add_cluster_options(multi) -> None:
    multi.add_argument(
        "--distributed", action="store_true", help="join the cluster JAX detects (TPU pod, SLURM)"
    )
    multi.add_argument("--coordinator", help="HOST:PORT of process 0, for an explicit cluster")
    multi.add_argument("--num-processes", type=int, help="with --coordinator")
    multi.add_argument("--process-id", type=int, help="with --coordinator")
    multi.add_argument(
        "--peer-timeout",
        type=int,
        default=100,
        help="seconds without a heartbeat after which JAX "
        "takes a process for dead and the others stop waiting for it (default 100, JAX's)",
    )
