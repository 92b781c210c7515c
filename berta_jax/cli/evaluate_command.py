"""The evaluate command: a model measured on retrieval (a BEIR folder), STS, classification and
clustering files; a table on stdout and, with -o, the metrics as JSON (written atomically)."""

from __future__ import annotations

import argparse
import json
import os

from berta_jax.cli.commands import check_batch_tokens, command
from berta_jax.errors import ConfigError
from berta_jax.storage.stores import is_url, store_for


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive integer")
    return value


def _existing(kind: str):
    """An argparse type: a local path that is a `kind` ("folder" or "file"); URLs pass as given."""

    def check(text: str) -> str:
        if is_url(text):
            return text
        if not os.path.exists(text):
            raise argparse.ArgumentTypeError(f"{text}: no such {kind}")
        if (kind == "folder") != os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text}: not a {kind}")
        return text

    return check


def _output(text: str) -> str:
    """-o: a JSON file whose folder exists (local), not a folder itself."""
    if not is_url(text):
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name (.json)")
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(f"{text}: the folder {folder} does not exist")
    return text


# (option, argparse type, help): every option but --model and -o, in --help's order
OPTIONS = (
    (
        "--retrieval",
        _existing("folder"),
        "a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv",
    ),
    ("--qrels-split", str, "the qrels file in qrels/ (default: test)"),
    ("--sts", _existing("file"), "jsonl/csv/parquet: sentence1, sentence2, score"),
    (
        "--classification",
        _existing("file"),
        "jsonl/csv/parquet: text, label, split (train or test)",
    ),
    ("--clustering", _existing("file"), "jsonl/csv/parquet: text, label"),
    (
        "--query-prompt",
        str,
        "queries' prompt: a model prompt name or text (default: the model's query prompt)",
    ),
    ("--corpus-prompt", str, "documents' prompt (default: the model's document prompt)"),
    (
        "--prompt",
        str,
        "STS, classification and clustering texts' prompt (default: the model's default)",
    ),
    ("--batch-size", _positive_int, "at most this many texts a batch"),
    (
        "--corpus-chunk-size",
        _positive_int,
        "documents embedded and ranked at a time (default 50000)",
    ),
    ("--max-batch-tokens", _positive_int, "padded tokens a batch (default: sized to the device)"),
)


def spec_from_args(args: argparse.Namespace) -> dict:
    """The options as `build_evaluators`' table (options not given are left out)."""
    names = [option[2:].replace("-", "_") for option, _, _ in OPTIONS]
    return {
        name: getattr(args, name)
        for name in names
        if name != "max_batch_tokens" and getattr(args, name) is not None
    }


def _evaluate(args: argparse.Namespace) -> int:
    from berta_jax.evaluate import build_evaluators, run_evaluators
    from berta_jax.loading.folder import ModelFolder
    from berta_jax.runtime.encoder import Encoder

    evaluators = build_evaluators(spec_from_args(args))  # data read and checked before the model
    folder = ModelFolder.open(args.model)
    try:
        check_batch_tokens(args.max_batch_tokens, folder.sentence.max_seq_length)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    encoder = Encoder.from_folder(folder, max_batch_tokens=args.max_batch_tokens)
    metrics = run_evaluators(evaluators, encoder)
    counts = {e.name: e.counts() for e in evaluators}
    print(f"model: {args.model}")
    for name, sizes in counts.items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    width = max(len(name) for name in metrics)
    print(f"{'metric':<{width}}  value")
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.6f}")
    if args.output:
        result = {"model": args.model, "metrics": metrics, "counts": counts}
        store_for(args.output).write(args.output, (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {args.output}")
    return 0


def add_evaluate(sub) -> None:
    ev = command(
        sub,
        "evaluate",
        help="measure a model on retrieval, STS, classification and clustering sets",
        description="Embed evaluation sets with the model and print each metric under "
        "sentence-transformers' names (retrieval: cosine_ndcg@10, cosine_mrr@10, "
        "cosine_map@100, cosine_accuracy@k, cosine_precision@k, cosine_recall@k; STS: "
        "pearson_cosine, spearman_cosine) and MTEB's (classification: accuracy, f1, "
        "f1_weighted; clustering: v_measure), each prefixed by its set ('retrieval/...').\n\n"
        "examples:\n  berta-jax evaluate --model sergeyzh/BERTA --retrieval ./scifact "
        "-o results.json\n  berta-jax evaluate --model ./ckpt --sts sts.jsonl "
        "--classification reviews.csv --prompt categorize_sentiment",
    )
    ev.add_argument("--model", required=True, help="model folder, URL or hub id")
    for option, kind, text in OPTIONS:
        ev.add_argument(option, type=kind, help=text)
    ev.add_argument("-o", "--output", type=_output, help="write the metrics here as JSON")
    ev.set_defaults(func=_evaluate)
