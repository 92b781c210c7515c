"""`berta-jax encode`: the batch job on the command line, with progress per batch and clean stops."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading
import time

from berta_jax.cli.commands import add_prompt_options, check_batch_tokens, command
from berta_jax.cli.signals import StopSignals
from berta_jax.job.outputs import PRECISIONS
from berta_jax.job.run import Cluster, JobOptions, JobSummary, wait_for_peers_to_leave

EXIT_INTERRUPTED, EXIT_PENDING = 130, 3


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class ProgressDisplay:
    """Per-batch progress: a tqdm bar on a terminal, else a line at the first batch and then every `log_every`
    seconds. Texts/s and tokens/s are over the same rows (those embedded by this run) and are measured from the
    end of the first batch, so the first program's compile time does not distort the rate or the ETA."""

    def __init__(self, total: int | None, *, log_every: float, stream=None):
        self.total, self.log_every, self.stream = total, log_every, stream or sys.stderr
        self.first: tuple[float, int, int] | None = None  # (time, rows, tokens) at the first batch
        self.last: float | None = None
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" texts", desc="embedding", dynamic_ncols=True, file=self.stream)

    def __call__(self, p: JobSummary) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, p.rows, p.tokens)
        elapsed = now - self.first[0]
        rate = (p.rows - self.first[1]) / elapsed if elapsed > 0 else 0.0
        tokens = (p.tokens - self.first[2]) / elapsed if elapsed > 0 else 0.0
        done = p.rows + p.rows_resumed
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{tokens:,.0f} tokens/s", refresh=False)
            return
        if self.last is not None and now - self.last < self.log_every:
            return
        self.last = now
        speed = f", {rate:.1f} texts/s, {tokens:,.0f} tokens/s" if rate > 0 else " (first batch)"
        left = self.total - done if self.total else None
        eta = f", ETA {left / rate:.0f} s" if left is not None and rate > 0 else ""
        print(f"embedded {done}{f'/{self.total}' if self.total else ''} texts ({p.rows_resumed} resumed){speed}{eta}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JaxCluster(Cluster):
    """The processes of a `jax.distributed` cluster; `agree` broadcasts process 0's answer to all."""

    def __init__(self):
        import jax

        self.index, self.count = jax.process_index(), jax.process_count()
        self._departure: concurrent.futures.Future | None = None

    def agree(self, fn) -> dict:
        import numpy as np
        from jax.experimental import multihost_utils

        payload = json.dumps(fn()).encode() if self.index == 0 else b""
        buffer = np.zeros(1 << 16, np.uint8)  # uint8: broadcast keeps the bytes exactly (no int64 narrowing)
        buffer[:4] = np.frombuffer(len(payload).to_bytes(4, "little"), np.uint8)
        buffer[4:4 + len(payload)] = np.frombuffer(payload, np.uint8)
        out = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8)
        outcome = json.loads(out[4:4 + int.from_bytes(out[:4].tobytes(), "little")].tobytes())
        if outcome.get("status") != "go":  # every process stops here: meet once more, so that all are past
            multihost_utils.sync_global_devices("berta-jax-stop")  # the collectives before anyone leaves
        return outcome

    def departure(self) -> concurrent.futures.Future:
        """JAX's "which tasks are alive" query is a barrier: it returns once every listed task has either asked too
        or disconnected. Only process 0 asks, so its answer comes when all the others have left."""
        if self._departure is None:
            from jax._src import distributed  # the client multihost_utils itself uses; JAX has no public accessor

            client, everyone = distributed.global_state.client, list(range(self.count))
            self._departure = concurrent.futures.Future()

            def ask() -> None:
                try:
                    self._departure.set_result(client.get_live_nodes(everyone))
                except BaseException as e:  # handed to the waiter, which raises it
                    self._departure.set_exception(e)

            threading.Thread(target=ask, name="berta-jax-departure", daemon=True).start()
        return self._departure

    def leave(self) -> None:
        """Disconnect from the coordination service. With recoverability on this waits for no one, and a process
        that has left is not stopped when the coordinator goes."""
        import jax

        jax.distributed.shutdown()


def _cluster(args: argparse.Namespace) -> Cluster:
    """Join JAX's multi-host runtime when asked (before any JAX array exists)."""
    if not (args.distributed or args.coordinator):
        return Cluster()
    import jax

    # A process that dies must not take the others down with it (JAX aborts them by default).
    jax.config.update("jax_enable_recoverability", True)
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    else:  # TPU pods, SLURM and similar: JAX finds the cluster itself
        jax.distributed.initialize()
    return JaxCluster()


def _loader(args: argparse.Namespace, model, stop: StopSignals):
    def load():
        with stop.held():  # native libraries start here: a signal now interrupts once the model is loaded
            from berta_jax.compile_cache import enable_compilation_cache
            from berta_jax.encoder import Encoder

            enable_compilation_cache()
            encoder = Encoder.from_folder(model, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens)
        stop.arm()
        return encoder

    return load


def _total_rows(args: argparse.Namespace) -> int | None:
    from berta_jax.job.inputs import count_rows, expand_inputs

    counts = [count_rows(f) for f in expand_inputs(args.inputs)]
    return None if None in counts else sum(counts)


def _report(summary: JobSummary, args: argparse.Namespace, context: int) -> int:
    if summary.already_complete:
        print(f"{summary.output} is already complete for these inputs, model, prompt and options "
              f"({plural(summary.output_rows, 'text')}, verified); nothing to do")
        return 0
    if summary.interrupted:
        print(f"stopped: this run committed {plural(summary.rows, 'text')} ({plural(summary.chunks_done, 'whole chunk')}"
              f" and the batches done of the last); rerun the same command with --resume to finish", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.pending:
        were = "was" if len(summary.pending) == 1 else "were"
        print(f"{plural(len(summary.pending), 'chunk')} ({', '.join(map(str, summary.pending[:10]))}) {were} claimed "
              "by processes that stopped; run the same command with --resume (on any hosts) to finish", file=sys.stderr)
        return EXIT_PENDING
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    if summary.process != 0:
        print(f"process {summary.process}: embedded {plural(summary.chunks_done, 'chunk')} "
              f"({plural(summary.rows, 'text')}{_busy(summary)}); process 0 finishes {summary.output}")
        return 0
    others = summary.output_rows - summary.rows - summary.rows_resumed
    print(f"wrote {summary.output}: {plural(summary.output_rows, 'text')} ({summary.rows_resumed} resumed from "
          f"{plural(summary.chunks_resumed, 'chunk')}{f', {others} embedded by other processes' if others else ''}), "
          f"{summary.skipped} skipped, {summary.truncated} truncated at {context} tokens, {rate:.1f} texts/s"
          f"{_busy(summary)}")
    return 0


def _busy(summary: JobSummary) -> str:
    """How much of the embedding time the device computed (the rest it waited on the host)."""
    return f", device busy {summary.device_busy:.0%} of {summary.embed_seconds:.1f} s" if summary.embed_seconds else ""


def _run(args: argparse.Namespace, stop: StopSignals, cluster: Cluster) -> int:
    from berta_jax.folder import ModelFolder
    from berta_jax.job.run import run_job

    model = ModelFolder.open(args.model)
    choice = _dtype_choice(args)
    try:
        check_batch_tokens(args.max_batch_tokens, model.sentence.max_seq_length)
        options = JobOptions(text_field=args.text_field, id_field=args.id_field,
                             prompt=model.sentence.resolve_prompt(args.prompt_name, args.prompt),
                             precision=args.precision, truncate_dim=args.truncate_dim, chunk_rows=args.chunk_rows,
                             on_error=args.on_error, max_batch_tokens=args.max_batch_tokens, batch_size=args.batch_size)
    except ValueError as e:
        print(f"berta-jax encode: error: {e}", file=sys.stderr)
        return 2
    display = None if args.quiet else ProgressDisplay(_total_rows(args), log_every=args.log_every)
    try:
        summary = run_job(_loader(args, model, stop), args.inputs, args.output, options, model=model,
                          resume=args.resume, overwrite=args.overwrite, dataset=args.format == "dataset",
                          truncation_report=args.truncation_report, compute_dtype=args.dtype, progress=display,
                          stop=stop, cluster=cluster)
    finally:
        if display is not None:
            display.close()
    try:
        code = _report(summary, args, model.sentence.max_seq_length)
        if choice is not None and not args.quiet:
            print(f"compute dtype {choice}")
    except BrokenPipeError:  # whoever read stdout left (`| head -c0`); the output is written and recorded all the same
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

    from berta_jax.dtypes import choose_dtype

    choice = choose_dtype("auto", jax.default_backend())
    args.dtype = choice.name
    return choice


def _encode(args: argparse.Namespace) -> int:
    stop = StopSignals().install()
    cluster, code = None, 2
    try:
        cluster = _cluster(args)
        code = _run(args, stop, cluster)
        return code
    except OSError as e:  # disk full, read-only folder, ...: committed chunks stay, temporary files are removed
        print(f"berta-jax encode: error: {e.filename or args.output}: {e.strerror or e}; chunks committed so far "
              "are kept, rerun with --resume once fixed", file=sys.stderr)
        return 2
    finally:
        stop.restore()
        if cluster is not None and cluster.count > 1:
            _leave_cluster(cluster, code, sys.exc_info()[1])


def _leave_cluster(cluster: Cluster, code: int, error: BaseException | None) -> None:
    """End this process of a jax.distributed run now. JAX aborts every process still connected when the coordinator
    goes, and its exit handshake would wait for a peer that died: the others disconnect and leave at once, process 0
    waits until they have disconnected (or died) and leaves last."""
    import traceback

    from berta_jax.errors import BertaJaxError

    if isinstance(error, BertaJaxError):
        print(f"berta-jax encode: error: {error}", file=sys.stderr)
        code = 2
    elif isinstance(error, KeyboardInterrupt):
        print("berta-jax encode: interrupted; nothing more was committed", file=sys.stderr)
        code = 130
    elif error is not None:
        traceback.print_exception(error)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if cluster.index == 0 and not cluster.peers_waited_for:  # an error before run_job: everyone is leaving now
        wait_for_peers_to_leave(cluster, timeout=10.0)
    elif cluster.index != 0:
        cluster.leave()
    os._exit(code)


def add_encode(sub) -> None:
    enc = command(sub, "encode", help="embed corpus files into .npy / .parquet or a dataset of shards (resumable)",
                  description="Embed every row of the inputs (.txt, .jsonl, .csv, .parquet, .txt.gz, .jsonl.gz; local "
                  "paths, gs:// / s3:// URLs, globs, directories of shards) into OUTPUT: a .npy file (float rows in "
                  "input order), a .parquet file (row, id, embedding), or a directory of Parquet shards (end OUTPUT "
                  "with /). Work is committed chunk by chunk; after a crash, --resume continues and the result is "
                  "identical to an uninterrupted run. Ctrl-C or SIGTERM stops after the current batch.\n\n"
                  "examples:\n  berta-jax encode examples/sample.txt -o sample.npy --model sergeyzh/BERTA\n"
                  "  berta-jax encode docs.jsonl.gz -o docs.parquet --model ./BERTA --text-field body --id-field id "
                  "--prompt-name search_document\n"
                  "  berta-jax encode a.csv b.csv -o out.npy --model ./BERTA --text-column text --on-error skip --resume\n"
                  "  berta-jax encode 'gs://b/corpus/*.parquet' -o gs://b/emb/ --model gs://b/BERTA --distributed  "
                  "# every host of a TPU pod")
    enc.add_argument("inputs", nargs="+", help="input files, globs, directories of shards or URLs")
    enc.add_argument("-o", "--output", required=True, help="OUT.npy, OUT.parquet, or DIR/ for a dataset of shards")
    enc.add_argument("--model", required=True, help="model folder, storage URL or hub id")
    add_prompt_options(enc)
    enc.add_argument("--text-field", "--text-column", dest="text_field", default="text",
                     help="jsonl field / csv or parquet column holding the text (default: text)")
    enc.add_argument("--id-field", "--id-column", dest="id_field",
                     help="field or column carried to parquet outputs (strings, or integers; one kind per run)")
    enc.add_argument("--format", choices=("file", "dataset"), default=None,
                     help="dataset: a directory of Parquet shards (default: from OUTPUT: a trailing / means dataset)")
    enc.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="stored precision; int8/uint8/binary/ubinary follow sentence-transformers' quantize_embeddings "
                     "(int8/uint8 ranges from the whole output, single-file outputs only)")
    enc.add_argument("--truncate-dim", type=int, help="keep the first N dimensions (Matryoshka)")
    enc.add_argument("--dtype", choices=("float32", "bfloat16", "auto"), default="float32",
                     help="compute dtype: float32 (PyTorch parity), bfloat16 (the fast mode on accelerators and on CPUs "
                          "with AMX / AVX512-BF16), auto (bfloat16 where the hardware has it, else float32)")
    enc.add_argument("--max-batch-tokens", type=int, help="padded tokens per batch (default: 2048 per CPU device; on "
                     "accelerators what an eighth of the device memory holds, 8192-262144 per device)")
    enc.add_argument("--batch-size", type=int, help="at most this many texts per batch")
    enc.add_argument("--chunk-rows", type=int, default=10_000, help="rows per committed chunk (default 10000)")
    enc.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                     help="a bad row stops the job (default) or is skipped: a zero row, listed in OUTPUT.skipped.jsonl")
    enc.add_argument("--truncation-report", help="also write the list of texts cut at the context (JSON lines: file, "
                     "line) to this file (always kept beside the output when any text was cut)")
    enc.add_argument("--resume", action="store_true", help="continue an interrupted run")
    enc.add_argument("--overwrite", action="store_true", help="replace an existing output")
    enc.add_argument("--quiet", action="store_true", help="no progress output")
    enc.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines when stderr is not "
                     "a terminal (default 10)")
    multi = enc.add_argument_group("several hosts (jax.distributed): processes claim chunks as they go")
    multi.add_argument("--distributed", action="store_true", help="join the cluster JAX detects (TPU pod, SLURM)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0, for an explicit cluster")
    multi.add_argument("--num-processes", type=int, help="with --coordinator")
    multi.add_argument("--process-id", type=int, help="with --coordinator")
    enc.set_defaults(func=_encode)
