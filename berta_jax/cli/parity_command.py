"""The parity command: berta-jax against PyTorch, stage by stage, held to the bars of
`berta_jax.tolerances` (max-abs for float32, the cosine bound for 16-bit compute)."""

from __future__ import annotations

import argparse
import sys

from berta_jax.cli.commands import add_prompt_options, command
from berta_jax.cli.option_types import number_in
from berta_jax.runtime.dtypes import NAMES
from berta_jax.tolerances import EMBEDDING_TOLERANCE, HIDDEN_TOLERANCE, MIN_COSINE


def _parity(args: argparse.Namespace) -> int:
    from berta_jax.parity import DEFAULT_TEXTS, parity_report

    texts = read_lines(args.texts) if args.texts else list(DEFAULT_TEXTS)
    if not texts:
        print(
            f"berta-jax parity: error: {args.texts}: holds no lines; give at least one text",
            file=sys.stderr,
        )
        return 2
    try:
        report = parity_report(
            args.model, texts, prompt=args.prompt, prompt_name=args.prompt_name, dtype=args.dtype
        )
    except (RuntimeError, ValueError) as e:
        print(f"berta-jax parity: error: {e}", file=sys.stderr)
        return 2
    print(
        f"model: {args.model}; {len(texts)} texts; berta-jax {report.dtype_choice}"
        "; reference: transformers BertModel (eager), float32, CPU"
    )
    if report.truncated:
        print(
            f"  {report.truncated} of {len(texts)} texts are longer than the context: both sides "
            "compare their first tokens"
        )
    _print_stages(report, args)
    failure = report.first_failure(args.tolerance, args.embedding_tolerance, args.min_cosine)
    if failure is None:
        print("PASS")
        return 0
    print(
        f"FAIL: {failure}"
        if report.sixteen_bit
        else f"FAIL: first stage above tolerance: {failure}"
    )
    return 1


def _print_stages(report, args: argparse.Namespace) -> None:
    """Each stage's difference with the bar it is held to (16-bit compute: the cosine bound)."""
    limits = {"hidden": args.tolerance, "embedding": args.embedding_tolerance}
    for stage, diff, kind in report.stages():
        bar = (
            f"{report.dtype}: not held to float32's tolerance"
            if report.sixteen_bit
            else f"tolerance {limits[kind]:g}"
        )
        print(f"  {stage:<20} max abs diff {diff:.3e}  ({bar})")
    if report.pooled_max_abs is None:
        print(
            "  sentence-transformers is not installed: pooled and sentence embeddings not compared"
        )
        return
    bound = f" (bound {args.min_cosine:g})" if report.sixteen_bit else ""
    print(
        f"  sentence embeddings: cosine min {report.cosine_min:.7f} "
        f"mean {report.cosine_mean:.7f}{bound}"
    )


def _bar(low: float, high: float, what: str):
    """An argparse type: a finite number in [low, high] (NaN and infinities refused), named in the
    error."""
    return number_in(low, high, what=what)


def add_parity(sub) -> None:
    par = command(
        sub,
        "parity",
        help="compare berta-jax with PyTorch stage by stage",
        description="Run transformers (PyTorch, float32, CPU) and berta-jax on the same texts; "
        "print the max abs difference of the embeddings output and of every layer's hidden "
        "states, of the pooled vectors and of the sentence embeddings against "
        "sentence-transformers; exit 1 above the tolerances, naming the first stage that breaks "
        "(in bfloat16/float16: below the cosine bound, with the figure). "
        "Needs torch.\n\n"
        "examples:\n  berta-jax parity --model ./my-finetuned-bert\n"
        "  berta-jax parity --model sergeyzh/BERTA --texts sample.txt --prompt-name search_query\n"
        "  berta-jax parity --model sergeyzh/BERTA --dtype bfloat16",
    )
    par.add_argument("--model", required=True, help="model folder, URL or hub id")
    par.add_argument(
        "--texts", help="UTF-8 file, one text per line (default: a few built-in ru/en sentences)"
    )
    add_prompt_options(par)
    par.add_argument(
        "--tolerance",
        type=_bar(0.0, float("inf"), "a max abs difference"),
        default=HIDDEN_TOLERANCE,
        help=f"max abs diff of hidden states (default {HIDDEN_TOLERANCE:g})",
    )
    par.add_argument(
        "--embedding-tolerance",
        type=_bar(0.0, float("inf"), "a max abs difference"),
        default=EMBEDDING_TOLERANCE,
        help=f"max abs diff of pooled and sentence embeddings (default {EMBEDDING_TOLERANCE:g})",
    )
    par.add_argument(
        "--dtype",
        default="float32",
        choices=("auto", *NAMES),
        help="berta-jax's compute dtype (default float32). In bfloat16/float16 the max-abs "
        "tolerances do not apply: every sentence embedding's cosine to the float32 reference "
        "must reach --min-cosine",
    )
    par.add_argument(
        "--min-cosine",
        type=_bar(-1.0, 1.0, "a cosine"),
        default=MIN_COSINE,
        help=f"16-bit compute: the lowest cosine to float32 that passes (default {MIN_COSINE:g})",
    )
    par.set_defaults(func=_parity)


def read_lines(path: str) -> list[str]:
    """Texts of a .txt file, through the batch job's reader (one per line, file:line errors)."""
    from berta_jax.data.inputs import InputFile, read_rows

    return [row.text for row in read_rows(InputFile(path, ".txt"))]
