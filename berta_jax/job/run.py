"""The batch embedding job: corpus files in, one embeddings file or a sharded dataset out, resumable after any
crash, on local disk or object storage, from one process or many.

1. `plan_job` (no writes): expand the inputs, check their fields and every path the job may write, fingerprint
   inputs, model and options.
2. `start` (process 0, under the lock): answer "already complete" only for a verified output, refuse what
   must not be replaced, clear what --overwrite replaces, verify what a resume keeps.
3. `embed_all` (every process): stream the chunks; claim each unfinished one; embed it into segments (the next
   chunk is claimed and tokenized in a background thread while the device embeds this one).
4. `finish` (process 0): wait for the other processes' chunks, then assemble the file or publish the dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from berta_jax.errors import BertaJaxError, JobError
from berta_jax.folder import ModelFolder
from berta_jax.job import finish
from berta_jax.job.chunks import (Chunk, ChunkPlan, PendingSegment, Progress, embed_segments, plan_chunk, read_chunks,
                                  segment_record)
from berta_jax.job.inputs import InputFile, check_fields, expand_inputs
from berta_jax.job.layout import Layout, check_collisions, layout_for
from berta_jax.job.outputs import PRECISIONS, WHOLE_OUTPUT_PRECISIONS, npy_bytes, per_row, shard_bytes
from berta_jax.job.state import FORMAT_VERSION, Lease, Segment, WorkFolder, new_run_id, sha256
from berta_jax.storage import store_for

if TYPE_CHECKING:  # planning and refusals import no JAX; the encoder is loaded only when there is work
    from berta_jax.encoder import Encoder

LOCK_TTL = 60.0  # seconds a lock (or a process's heartbeat) stays valid without renewal
DEAD_PEER_GRACE = 5.0  # seconds process 0 still waits for the others to leave once one is known dead


@dataclasses.dataclass(frozen=True)
class JobOptions:
    text_field: str = "text"
    id_field: str | None = None
    prompt: str = ""
    precision: str = "float32"
    truncate_dim: int | None = None
    chunk_rows: int = 10_000
    on_error: str = "raise"
    max_batch_tokens: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
        for name in ("chunk_rows", "truncate_dim", "max_batch_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


@dataclasses.dataclass
class JobSummary(Progress):
    output: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    already_complete: bool = False
    pending: list[int] = dataclasses.field(default_factory=list)  # chunks left unfinished by stopped processes
    process: int = 0
    total_chunks: int = 0
    output_rows: int = 0  # rows of the finished output (all processes, resumed included)
    embed_seconds: float = 0.0  # this process's time embedding chunks, compiles excluded
    device_seconds: float = 0.0  # of which the device was computing (see runtime.RunStats)

    @property
    def device_busy(self) -> float:
        """The fraction of the embedding time the device was computing (below 1: it waited on the host)."""
        return min(self.device_seconds / self.embed_seconds, 1.0) if self.embed_seconds > 0 else 0.0


class Cluster:
    """The processes of one run. One process by default; `agree(fn)` runs `fn` on process 0 and gives every
    process its (JSON-serialisable) result."""

    index: int = 0
    count: int = 1
    peers_waited_for: bool = False  # process 0 has waited for the others to leave (see wait_for_peers_to_leave)

    def agree(self, fn: Callable[[], dict]) -> dict:
        return fn()

    def departure(self) -> concurrent.futures.Future:
        """Done once every other process has disconnected from the cluster (at once, for a single process)."""
        done = concurrent.futures.Future()
        done.set_result(None)
        return done


@dataclasses.dataclass
class Plan:
    inputs: list[InputFile]
    layout: Layout
    work: WorkFolder
    fingerprint: dict
    options: JobOptions
    dim: int  # dimensions of the stored vectors before packing (truncate_dim or the hidden size)

    @property
    def store(self):
        return self.work.store


def _input_identity(file: InputFile) -> dict:
    info = store_for(file.url).info(file.url)
    return {"url": file.url, "size": info.size, "version": info.version}


def plan_job(input_specs: list[str], output: str, options: JobOptions, model: ModelFolder, *, dataset: bool = False,
             report: str | None = None, compute_dtype: str = "float32") -> Plan:
    """Everything about a job that can be known without writing anything or loading the weights."""
    hidden = model.config.hidden_size
    if options.truncate_dim is not None and options.truncate_dim > hidden:
        raise JobError(f"--truncate-dim {options.truncate_dim} exceeds the model's {hidden} dimensions")
    layout = layout_for(output, dataset=dataset, report=report)
    if layout.dataset and options.precision in WHOLE_OUTPUT_PRECISIONS:
        raise JobError(f"--precision {options.precision} needs ranges over the whole output, which a dataset written "
                       "shard by shard cannot have; use float32, float16, binary or ubinary, or a .npy/.parquet output")
    store = store_for(layout.output)
    if not layout.dataset and store.exists(layout.output) and store.info(layout.output).kind == "directory":
        raise JobError(f"{layout.output} is a directory; give a file name ending in .npy or .parquet, or end the "
                       "output with / for a dataset directory")
    inputs = expand_inputs(input_specs)
    check_collisions(layout, inputs, input_specs, model.folder)
    for file in inputs:
        check_fields(file, options.text_field, options.id_field)
    sentence = {f.name: getattr(model.sentence, f.name) for f in dataclasses.fields(model.sentence)
                if f.name != "prompts"}  # the prompt itself is fingerprinted below
    fingerprint = {"version": FORMAT_VERSION, "inputs": [_input_identity(f) for f in inputs],
                   "model": {**model.identity(), "sentence": sentence, "dtype": compute_dtype},
                   "prompt": options.prompt, "options": {**dataclasses.asdict(options), "kind": layout.kind}}
    fingerprint["options"].pop("prompt")
    data_root = layout.output if layout.dataset else layout.state
    return Plan(inputs, layout, WorkFolder(store, layout.state, data_root), fingerprint, options,
                options.truncate_dim or model.sentence.truncate_dim or hidden)


def _changed(recorded: dict, expected: dict) -> list[str]:
    return [k for k in ("inputs", "model", "prompt", "options") if recorded.get(k) != expected.get(k)]


def _check_completed(plan: Plan, overwrite: bool) -> bool:
    """True when a verified completion record for this very job is there; else clear it (--overwrite) or refuse."""
    try:
        manifest = finish.read_manifest(plan.layout, plan.store)
    except JobError:
        if not overwrite:
            raise
        plan.store.delete(plan.layout.manifest)  # a damaged record lists nothing to trust: only it goes
        return False
    if manifest is None:
        return False
    changed = _changed(manifest["fingerprint"], plan.fingerprint)
    problem = None if changed else finish.verify_complete(plan.layout, plan.store, manifest)
    if not changed and problem is None:
        return True
    if not overwrite:
        why = f"an earlier run with different {', '.join(changed)} wrote it" if changed else problem
        raise JobError(f"{plan.layout.output}: {why}; pass --overwrite to embed it again")
    finish.remove_recorded(plan.layout, plan.store, manifest)
    return False


def _prepare_work(plan: Plan, resume: bool, overwrite: bool) -> None:
    """Refuse or clear an earlier unfinished run, or keep it for --resume; then create the work folder."""
    work, store, layout = plan.work, plan.store, plan.layout
    job = work.job()
    if job is not None:
        changed = _changed(job["fingerprint"], plan.fingerprint)
        if changed and not overwrite:
            raise JobError(f"{layout.output}: an earlier run with different {', '.join(changed)} wrote here; pass "
                           "--overwrite to start again")
        if not changed and not (resume or overwrite):
            raise JobError(f"{layout.output}: an unfinished run is there; pass --resume to continue it or --overwrite")
        if not changed and resume:
            _drop_unverified(plan)
            return
        _clear_work(plan)
    elif layout.dataset:  # the lock and work folder are the only underscore files; anything else is not ours
        foreign = [n for n in store.list(layout.output) if not n.startswith("_")]
        if foreign:
            raise JobError(f"{layout.output} holds files berta-jax did not write ({', '.join(foreign[:3])}); choose an "
                           "empty or new directory for a dataset output")
    elif store.exists(layout.output) and not overwrite:
        raise JobError(f"{layout.output} exists; pass --overwrite to replace it")
    work.create_job(plan.fingerprint)


def _clear_work(plan: Plan) -> None:
    """Remove an earlier run's work folder: its records and the data they name (nothing else)."""
    segments, _ = plan.work.segments()
    runs = plan.work.runs()
    for seg in segments:
        plan.store.delete(plan.work.data_path(seg.data))
    if plan.layout.dataset:
        for name in plan.store.list(plan.layout.output):
            match = finish.SHARD.match(name)
            if match and any(r.startswith(match.group(3)) for r in runs):
                plan.store.delete(plan.work.data_path(name))
    plan.work.remove([seg.data for seg in segments] if not plan.layout.dataset else [])


def _drop_unverified(plan: Plan) -> None:
    """Resume keeps only segments whose records parse and whose data matches them; the rest is embedded again."""
    segments, damaged = plan.work.segments()
    for name in damaged:
        plan.work.remove_record(name)
    for seg in segments:
        if finish.check_data(plan.work, seg) is not None:
            plan.work.remove_record(Segment.record_name(seg.chunk, seg.segment))
            plan.store.delete(plan.work.data_path(seg.data))


def start(plan: Plan, lease: Lease, *, resume: bool, overwrite: bool, processes: int) -> dict:
    """Process 0, before any other process works: take the lock and settle what is on disk."""
    lease.acquire(processes)
    try:
        _remove_stale_temporaries(plan)
        if _check_completed(plan, overwrite):
            lease.release()
            return {"status": "complete"}
        _prepare_work(plan, resume, overwrite)
    except BaseException:  # a refusal, or Ctrl-C / SIGTERM during start-up
        if plan.work.created and not plan.work.holds_work():
            plan.work.remove([])  # the work folder this run began: leave no files behind
        lease.release()
        raise
    lease.start_heartbeat(processes)
    return {"status": "go", "run": lease.run}


def _remove_stale_temporaries(plan: Plan) -> None:
    """Temporary files a killed writer of this output left next to it (`.NAME.XXXX.tmp`); never anything else."""
    if plan.store.remote:
        return
    for _, path in plan.layout.written():
        folder, name = plan.store.parent(path), plan.store.name(path)
        for entry in plan.store.list(folder):
            if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
                plan.store.delete(plan.store.join(folder, entry))
    for entry in plan.store.list(plan.layout.state):
        if entry.startswith(".") and entry.endswith(".tmp"):
            plan.store.delete(plan.store.join(plan.layout.state, entry))


def _agree_on_start(plan: Plan, lease: Lease, cluster: Cluster, *, resume: bool, overwrite: bool) -> dict:
    def on_process_0() -> dict:
        try:
            return start(plan, lease, resume=resume, overwrite=overwrite, processes=cluster.count)
        except (BertaJaxError, OSError) as e:
            return {"status": "error", "message": str(e) if isinstance(e, BertaJaxError) else
                    f"{e.filename or plan.layout.output}: {e.strerror or e}"}

    outcome = cluster.agree(on_process_0)
    if outcome["status"] == "error":
        raise JobError(outcome["message"])
    return outcome


def _commit(plan: Plan, lease: Lease, chunk: Chunk, pending: PendingSegment, index: int, summary: JobSummary) -> None:
    import numpy as np

    order = np.argsort(pending.offsets, kind="stable")
    offsets = [pending.offsets[i] for i in order]
    vectors = np.concatenate(pending.vectors)[order]
    run = lease.run
    if plan.layout.dataset:
        name = f"part-{chunk.index:05d}-{index:02d}-{run[:8]}.parquet"
        rows = np.asarray(offsets, np.int64) + chunk.start
        data = shard_bytes(rows, [chunk.rows[i].id for i in offsets],
                           per_row(vectors, plan.options.precision, rows))
    else:
        name, data = plan.work.part_name(chunk.index, index, run), npy_bytes(vectors.astype(np.float32))
    pending = dataclasses.replace(pending, offsets=offsets)
    segment = segment_record(chunk, pending, index=index, run=run, data=name, data_bytes=data, sha=sha256(data))
    lease.check()
    plan.work.commit(segment, data)
    summary.rows += len(offsets)
    summary.tokens += pending.tokens
    summary.skipped += len(segment.skipped)
    summary.truncated += len(segment.truncated)


def _embed_chunk(plan: Plan, encoder: Encoder, lease: Lease, work: ChunkPlan, existing: list[Segment],
                 summary: JobSummary, progress, stop) -> bool:
    """Embed what the planned chunk still lacks; True when it is complete (False: a stop came first)."""
    chunk, before = work.chunk, summary.rows
    next_index = max((seg.segment for seg in existing), default=-1) + 1

    def after_batch(pending: PendingSegment) -> bool:
        if progress:
            progress(dataclasses.replace(summary, rows=summary.rows + len(pending.offsets),
                                         tokens=summary.tokens + pending.tokens))
        return bool(stop and stop())

    embed_segments(encoder, work, after_batch=after_batch,
                   commit=lambda pending: _commit(plan, lease, chunk, pending, next_index, summary))
    return len(work.covered) + summary.rows - before == len(chunk.rows)


@dataclasses.dataclass(frozen=True)
class _End:
    """The inputs are read to the end: `chunks` chunks holding `rows` rows."""

    chunks: int
    rows: int


_STOPPED = object()  # a stop was asked for while work remained


def _claimed_chunks(plan: Plan, encoder: Encoder, lease: Lease, cluster: Cluster, existing: dict[int, list[Segment]],
                    summary: JobSummary, stop) -> Iterator[ChunkPlan | _End | object]:
    """Each unfinished chunk this process claims, planned for the device; then `_End` (or `_STOPPED`)."""
    total = rows = 0
    o = plan.options
    batching = {"max_batch_tokens": o.max_batch_tokens, "batch_size": o.batch_size}
    for chunk in read_chunks(plan.inputs, chunk_rows=o.chunk_rows, text_field=o.text_field, id_field=o.id_field,
                             on_error=o.on_error):
        total, rows = chunk.index + 1, chunk.start + len(chunk.rows)
        done = existing.get(chunk.index, [])
        if done and done[0].input_sha256 != chunk.digest:
            raise JobError(f"{chunk.rows[0].source}: the rows of chunk {chunk.index} (lines {chunk.rows[0].line}-"
                           f"{chunk.rows[-1].line}) changed since they were embedded; pass --overwrite to start again")
        covered = {r for seg in done for r in seg.rows}
        if len(covered) == len(chunk.rows):
            summary.rows_resumed += len(chunk.rows)
            summary.chunks_resumed += 1
            continue
        if stop and stop():
            yield _STOPPED  # leave the rest to a resume
            return
        if plan.work.claim(lease.run, chunk.index, cluster.index):  # else another process of this run has it
            yield plan_chunk(encoder, chunk, covered, prompt=o.prompt, batching=batching, truncate_dim=o.truncate_dim)
    yield _End(total, rows)


def embed_all(plan: Plan, encoder: Encoder, lease: Lease, cluster: Cluster, summary: JobSummary, progress,
              stop) -> int | None:
    """Embed every unfinished chunk this process can claim; the number of chunks, or None when stopped.

    The next chunk is read, claimed, tokenized and planned in a background thread while the device embeds the
    current one, so a process holds at most two claims and the device does not wait for the host between chunks."""
    segments, _ = plan.work.segments()
    existing: dict[int, list[Segment]] = {}
    for seg in segments:
        existing.setdefault(seg.chunk, []).append(seg)
    feed = _claimed_chunks(plan, encoder, lease, cluster, existing, summary, stop)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="berta-jax-prepare") as ahead:
        upcoming = ahead.submit(next, feed)
        try:
            while isinstance(work := upcoming.result(), ChunkPlan):
                upcoming = ahead.submit(next, feed)
                if (stop and stop()) or not _embed_chunk(plan, encoder, lease, work, existing.get(work.chunk.index, []),
                                                         summary, progress, stop):
                    return None
                summary.chunks_done += 1
                if progress:
                    progress(summary)
        finally:
            upcoming.cancel()
            concurrent.futures.wait([upcoming])
            feed.close()
    if work is _STOPPED:
        return None
    plan.work.record_end(work.chunks, work.rows)
    return work.chunks


def _wait_for_chunks(plan: Plan, lease: Lease, total: int, cluster: Cluster) -> tuple[dict, list[int]]:
    """Process 0: (complete chunks, chunks left by processes that stopped) once no live process is still working.

    The records are read again after the holders were seen gone: a process commits its last chunk before its
    heartbeat goes, so one that finished between the first read and its liveness check is counted complete,
    not reported as stopped."""
    while True:
        complete = finish.complete_chunks(plan.work.segments()[0])
        working = []
        for c in (c for c in range(total) if c not in complete):
            holder = plan.work.claim_holder(lease.run, c)
            if holder and plan.work.peer_alive(lease.run, holder.get("process", -1), LOCK_TTL):
                working.append(c)
        if not working:
            complete = finish.complete_chunks(plan.work.segments()[0])
            return complete, [c for c in range(total) if c not in complete]
        time.sleep(0.2)


def _inputs_unchanged(plan: Plan) -> None:
    for file, before in zip(plan.inputs, plan.fingerprint["inputs"]):
        if _input_identity(file) != before:
            raise JobError(f"{file.url} changed while it was being embedded; rerun with --overwrite")


def _finish(plan: Plan, lease: Lease, total: int, cluster: Cluster, summary: JobSummary) -> None:
    complete, missing = _wait_for_chunks(plan, lease, total, cluster)
    if missing:
        summary.pending = missing
        return
    _inputs_unchanged(plan)
    if plan.layout.dataset:
        manifest = finish.publish(plan.layout, plan.work, complete, total, plan.fingerprint)
        plan.work.remove([])
    else:
        manifest = finish.assemble(plan.layout, plan.work, complete, total, plan.options.precision, plan.dim,
                                   plan.fingerprint)
        plan.work.remove([seg.data for segs in complete.values() for seg in segs])
    summary.output_rows = manifest["rows"]


def run_job(encoder: Encoder | Callable[[], Encoder], inputs: list[str], output: str, options: JobOptions, *,
            model: ModelFolder | None = None, resume: bool = False, overwrite: bool = False, dataset: bool = False,
            truncation_report: str | None = None, compute_dtype: str = "float32", progress=None, stop=None,
            cluster: Cluster | None = None, lock_ttl: float = LOCK_TTL) -> JobSummary:
    """Embed every row of `inputs` into `output` (see the module). `encoder` may be a loader called only when
    there is work (then `model` gives the folder for the up-front checks)."""
    cluster = cluster or Cluster()
    if model is None:
        model = ModelFolder.open(encoder.folder, pooling=encoder.sentence.pooling,
                                 max_seq_length=encoder.sentence.max_seq_length)
    plan = plan_job([str(p) for p in inputs], str(output), options, model, dataset=dataset, report=truncation_report,
                    compute_dtype=compute_dtype)
    summary = JobSummary(output=plan.layout.output, process=cluster.index)
    lease = Lease(plan.store, plan.layout.lock, new_run_id(), lock_ttl)
    try:  # from here on, whatever happens (an error, Ctrl-C during start-up), process 0 leaves no lock behind
        outcome = _agree_on_start(plan, lease, cluster, resume=resume, overwrite=overwrite)
        if outcome["status"] == "complete":
            manifest = finish.read_manifest(plan.layout, plan.store)
            summary.output_rows, summary.already_complete = manifest["rows"], True
            if cluster.index == 0:
                finish.write_report(plan.layout, plan.store, manifest)
            return summary
        lease.run = outcome["run"]
        return _run(plan, encoder, lease, cluster, summary, progress, stop)
    finally:
        if cluster.index == 0:  # the lock is held until the others are gone: they check it to their last step
            wait_for_peers_to_leave(cluster, lambda process: plan.work.peer_dead(lease.run, process, LOCK_TTL))
        if cluster.index == 0 and lease.held:
            if not plan.work.holds_work():
                plan.work.remove([])  # nothing was committed: leave no files behind
            lease.release()


def _run(plan: Plan, encoder, lease: Lease, cluster: Cluster, summary: JobSummary, progress, stop) -> JobSummary:
    start_time = time.perf_counter()
    beat = None
    try:
        beat = _Heartbeat(plan.work, lease.run, cluster.index)
        encoder = encoder if hasattr(encoder, "prepare") else encoder()  # loaded only now that there is work
        total = _timed(embed_all, encoder, summary)(plan, encoder, lease, cluster, summary, progress, stop)
        summary.interrupted = total is None
        if total is not None:
            summary.total_chunks = total
            if cluster.index == 0:
                _finish(plan, lease, total, cluster, summary)
    finally:
        if beat is not None:
            beat.stop()
        summary.seconds = time.perf_counter() - start_time
    return summary


def _timed(embed: Callable, encoder: Encoder, summary: JobSummary) -> Callable:
    """`embed`, adding its time (compiles excluded) and the device's busy time to `summary`."""
    def timed(*args, **kwargs):
        start, compiled, busy = time.perf_counter(), encoder.compile_stats.wall_seconds, encoder.run_stats.device_seconds
        try:
            return embed(*args, **kwargs)
        finally:
            summary.embed_seconds += time.perf_counter() - start - (encoder.compile_stats.wall_seconds - compiled)
            summary.device_seconds += encoder.run_stats.device_seconds - busy

    return timed


def wait_for_peers_to_leave(cluster: Cluster, dead: Callable[[int], bool] = lambda process: False,
                            timeout: float = LOCK_TTL) -> None:
    """Process 0 leaves last: JAX aborts every process still connected when the coordinator (process 0) goes.
    Waits until the others have disconnected or are all `dead`, at most `timeout` seconds, and only a few more once
    one of them is dead (a killed process stays "connected" until JAX's heartbeat timeout, 100 s by default)."""
    departure = cluster.departure()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            departure.result(timeout=0.05)
            break
        except concurrent.futures.TimeoutError:
            gone = [dead(p) for p in range(1, cluster.count)]
            if all(gone):
                break
            if any(gone):
                deadline = min(deadline, time.monotonic() + DEAD_PEER_GRACE)
    cluster.peers_waited_for = True


class _Heartbeat:
    """This process's heartbeat in the work folder, renewed in the background while it works."""

    def __init__(self, work: WorkFolder, run: str, process: int):
        import threading

        self._stop = threading.Event()
        self.work, self.run, self.process = work, run, process
        work.heartbeat(run, process)

        def beat() -> None:
            while not self._stop.wait(LOCK_TTL / 4):
                try:
                    work.heartbeat(run, process)
                except OSError:
                    pass  # retried at the next beat

        self._thread = threading.Thread(target=beat, name="berta-jax-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the record: process 0 waits for the others' records to go before it exits."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.work.store.delete(self.work.path("heartbeats", f"{self.run}-{self.process}.json"))


def summary_dict(summary: JobSummary) -> dict[str, Any]:
    return dataclasses.asdict(summary)
