"""`berta-jax encode`: the batch job on the command line, with progress per batch and clean
stops."""

from __future__ import annotations

import argparse
import sys

from berta_jax.cli.commands import check_batch_tokens
from berta_jax.cli.encode_args import check_encode_options, encode_parser
from berta_jax.cli.progress import ProgressDisplay
from berta_jax.cli.signals import StopSignals
from berta_jax.errors import BertaJaxError
from berta_jax.job.cluster import Abandoned, Cluster, join
from berta_jax.job.plan import JobOptions
from berta_jax.job.split_size import format_size
from berta_jax.job.summary import JobSummary

__all__ = ["EXIT_INTERRUPTED", "EXIT_PENDING", "ProgressDisplay", "add_encode"]

EXIT_INTERRUPTED, EXIT_PENDING = 130, 3


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _loader(args: argparse.Namespace, model, stop: StopSignals):
    def load():
        # native libraries start here: a signal now interrupts once the model is loaded
        with stop.held():
            from berta_jax.runtime.compile_cache import enable_compilation_cache
            from berta_jax.runtime.encoder import Encoder

            enable_compilation_cache()
            encoder = Encoder.from_folder(
                model, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens
            )
        stop.arm()
        return encoder

    return load


def _why_pending(summary: JobSummary) -> str:
    stopped = "a process of this run stopped"
    misfits = len(summary.pending) - len(summary.absent)
    if not misfits:
        return stopped
    records = f"{plural(misfits, 'record')} did not fit {'its' if misfits == 1 else 'their'} split"
    return f"{records} (named above){'; ' + stopped if summary.absent else ''}"


def _report(summary: JobSummary, args: argparse.Namespace, context: int) -> int:
    for note in summary.dropped:  # a part record that did not fit its split
        print(note, file=sys.stderr)
    if summary.already_complete:
        print(
            f"{summary.output} is already complete for these inputs, model, prompt and options "
            f"({plural(summary.output_rows, 'text')}, verified); nothing to do"
        )
        return 0
    if summary.interrupted:
        smaller = (
            f" (a split is {format_size(summary.split_bytes)} of text here; --split-size sets it)"
            if summary.committed == 0 and summary.split_bytes
            else ""
        )
        print(
            f"stopped: {summary.kept()}{smaller}. Rerun the same command with --resume to finish",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary.pending:
        were = "has" if len(summary.pending) == 1 else "have"
        print(
            f"{plural(len(summary.pending), 'split')} "
            f"({', '.join(map(str, summary.pending[:10]))}) {were} no part that verifies: "
            f"{_why_pending(summary)}. Run the same command with --resume (on any number of "
            "hosts) to finish",
            file=sys.stderr,
        )
        return EXIT_PENDING
    speed = _speed(summary)
    if summary.process != 0:
        print(
            f"process {summary.process}: embedded {plural(summary.splits_done, 'split')} "
            f"({plural(summary.rows, 'text')}{speed}{_busy(summary)}); process 0 finishes "
            f"{summary.output}"
        )
        return 0
    others = summary.output_rows - summary.rows - summary.skipped - summary.rows_resumed
    by_others = f", {others} embedded by other processes" if others else ""
    print(
        f"wrote {summary.output}: {plural(summary.output_rows, 'text')} "
        f"({summary.rows_resumed} resumed from {plural(summary.splits_resumed, 'split')}"
        f"{by_others}), {summary.skipped} skipped, {summary.truncated} truncated at {context} "
        f"tokens{speed}{_busy(summary)}"
    )
    return 0


def _speed(summary: JobSummary) -> str:
    """The embedding rate (start-up excluded, as on the progress bar) and the start-up cost."""
    if not summary.embed_seconds:
        return ""
    return (
        f", {summary.texts_per_second:.1f} texts/s, {summary.tokens_per_second:,.0f} tokens/s "
        f"over {summary.embed_seconds:.1f} s of embedding (start-up "
        f"{summary.load_seconds + summary.compile_seconds:.1f} s: loading "
        f"{summary.load_seconds:.1f} s, compiling {summary.compile_seconds:.1f} s)"
    )


def _busy(summary: JobSummary) -> str:
    """How much of the embedding time the device computed (the rest it waited on the host)."""
    return (
        f", device busy {summary.device_busy:.0%}"
        if summary.embed_seconds
        else ""
    )


def _run(args: argparse.Namespace, stop: StopSignals, cluster: Cluster) -> int:
    from berta_jax.job.run import run_job
    from berta_jax.loading.folder import ModelFolder

    model = ModelFolder.open(args.model)
    choice = _dtype_choice(args)
    try:
        check_batch_tokens(args.max_batch_tokens, model.sentence.max_seq_length)
        options = _job_options(args, model)
    except ValueError as e:
        print(f"berta-jax encode: error: {e}", file=sys.stderr)
        return 2
    display = None if args.quiet else ProgressDisplay(log_every=args.log_every)

    def progress(summary: JobSummary) -> None:
        stop.describe = summary.kept  # what a signal's message says a stop keeps
        if display is not None:
            display(summary)
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
            progress=progress,
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
    except BrokenPipeError:
        # whoever read stdout left (`| head -c0`); the output is written and recorded all the same
        _silence_stdout()
        return 0 if not (summary.interrupted or summary.pending) else EXIT_INTERRUPTED
    return code


def _job_options(args: argparse.Namespace, model) -> JobOptions:
    """The job's options from the command's (a ValueError names one that is out of range)."""
    return JobOptions(
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe
    again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dtype_choice(args: argparse.Namespace):
    """For --dtype auto: the dtype this machine's device gets (named in the job's fingerprint), and
    why."""
    if args.dtype != "auto":
        return None
    import jax

    from berta_jax.runtime.dtypes import choose_dtype

    choice = choose_dtype("auto", jax.default_backend())
    args.dtype = choice.name
    return choice


def _encode(args: argparse.Namespace) -> int:
    # a signal counts from the start: JAX's start-up waits in a helper thread, polling it
    stop, cluster = StopSignals().install(), None
    try:
        cluster = _join(args, stop)
        # again after jax.distributed, whose preemption notifier takes SIGTERM for itself
        stop.install()
        return _run(args, stop, cluster)
    except BertaJaxError:
        raise  # its own message names what is at fault
    except OSError as e:
        # disk full, read-only folder, ...: committed parts stay, temporary files are removed
        print(
            f"berta-jax encode: error: {e.filename or args.output}: {e.strerror or e}; parts "
            "committed so far are kept, rerun with --resume once fixed",
            file=sys.stderr,
        )
        return 2
    finally:
        stop.restore()
        if cluster is not None:
            sys.stdout.flush()
            try:
                # process 0 last: JAX stops every process still connected when it goes
                cluster.leave()
            finally:
                if cluster.abandoned:  # stopped while JAX waited for a stalled peer
                    print(
                        "berta-jax encode: stopped while waiting for another process; parts "
                        "committed so far are kept, rerun with --resume",
                        file=sys.stderr,
                    )
                    stop.exit_now(130)


def _join(args: argparse.Namespace, stop: StopSignals) -> Cluster:
    """The run's processes (JAX's start-up, which may wait minutes for the others, honours a stop:
    exit 130 at once, nothing written)."""
    try:
        return join(
            args.coordinator,
            args.num_processes,
            args.process_id,
            detect=args.distributed,
            heartbeat_timeout=args.peer_timeout,
            stop=stop,
        )
    except Abandoned:
        print(
            "berta-jax encode: interrupted while the processes of the run were meeting "
            "(jax.distributed start-up); nothing was written",
            file=sys.stderr,
        )
        stop.exit_now(EXIT_INTERRUPTED)
        raise


def add_encode(sub) -> None:
    """The `encode` subcommand: its options (see `encode_args`), run by `_encode`."""
    encode_parser(sub).set_defaults(func=_encode, check=check_encode_options)
