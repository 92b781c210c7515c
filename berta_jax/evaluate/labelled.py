"""Classification by logistic regression and clustering by k-means on the embeddings, as MTEB's
first evaluators define them (scikit-learn: `pip install 'berta-jax[eval]'`).

Classification (MTEB's `logRegClassificationEvaluator`): `LogisticRegression(random_state=42,
max_iter=100)` fitted on the train split's embeddings, scored on the test split's: `accuracy`, `f1`
(macro) and `f1_weighted`. Where MTEB differs: its classification task fits on a train split
undersampled to `samples_per_label` texts per label (8 unless the task sets it), ten times, and
averages the ten; here one fit on the whole train split, so the figure does not move between two
evaluations of the same weights. MTEB's `ap` (binary tasks) is not reported.

Clustering (MTEB's `ClusteringEvaluator`): `MiniBatchKMeans(n_clusters=<number of labels>,
batch_size=500, n_init="auto", random_state=42)` on the embeddings, `v_measure` (sklearn's
`v_measure_score`) of the labels against the clusters. Where MTEB differs: a task of several
cluster sets averages them (one file is one set here), and MTEB's later `ClusteringFast` tasks
subsample and bootstrap.

Input: jsonl, csv or Parquet rows with `text` and `label` (a string or an integer); classification
rows also carry `split`, `train` or `test`, so one file holds both. Labels of one class leave the
task undefined: an error naming the file and the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from berta_jax.errors import ConfigError, InputError
from berta_jax.evaluate.base import embed, finite
from berta_jax.evaluate.records import label_field, read_records, text_field

if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

SEED = 42  # MTEB's default seed
SPLITS = ("train", "test")


def require_sklearn(what: str) -> None:
    """Nothing if scikit-learn imports; else a ConfigError saying how to install it."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs scikit-learn: pip install 'berta-jax[eval]'") from None


def read_labelled(path: str, with_split: bool) -> dict[str, tuple[list[str], list[str]]]:
    """split -> (texts, labels); without `with_split` one split, "all"."""
    fields = ("text", "label", "split") if with_split else ("text", "label")
    out: dict[str, tuple[list[str], list[str]]] = {s: ([], []) for s in SPLITS} if with_split else {
        "all": ([], [])
    }
    for line, record in read_records(path, fields):
        split = record.get("split") if with_split else "all"
        if split not in out:
            raise InputError(f"{path}:{line}: 'split' is {split!r}; use 'train' or 'test'")
        out[split][0].append(text_field(path, line, record, "text"))
        out[split][1].append(label_field(path, line, record, "label"))
    for split, (_, labels) in out.items():
        where = f" of the {split} split" if with_split else ""
        if not labels:
            raise InputError(f"{path}: no rows{where}")
        if split != "test" and len(set(labels)) < 2:
            raise InputError(
                f"{path}: every 'label'{where} is {labels[0]!r}; "
                f"{'classification' if with_split else 'clustering'} needs at least 2 classes"
            )
    return out


def classification_scores_from_embeddings(
    train: np.ndarray, train_labels: Sequence[str], test: np.ndarray, test_labels: Sequence[str]
) -> dict[str, float]:
    """`accuracy`, `f1` (macro), `f1_weighted` of a logistic regression fitted on `train`."""
    require_sklearn("classification")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    model = LogisticRegression(random_state=SEED, max_iter=100)
    model.fit(np.asarray(train), list(train_labels))
    predicted = model.predict(np.asarray(test))
    metrics = {
        "accuracy": accuracy_score(test_labels, predicted),
        "f1": f1_score(test_labels, predicted, average="macro"),
        "f1_weighted": f1_score(test_labels, predicted, average="weighted"),
    }
    return finite(metrics, "classification")


def clustering_scores_from_embeddings(
    embeddings: np.ndarray, labels: Sequence[str]
) -> dict[str, float]:
    """`v_measure` of MiniBatchKMeans' clusters (one per label) against the labels."""
    require_sklearn("clustering")
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import v_measure_score

    kmeans = MiniBatchKMeans(
        n_clusters=len(set(labels)), batch_size=500, n_init="auto", random_state=SEED
    )
    assigned = kmeans.fit(np.asarray(embeddings)).labels_
    return finite({"v_measure": v_measure_score(list(labels), assigned)}, "clustering")


class ClassificationEvaluator:
    """Texts with labels, split train/test. `__call__(encoder)` -> `accuracy`, `f1`,
    `f1_weighted` (see the module docstring)."""

    primary_metric = "accuracy"
    metric_names = ("accuracy", "f1", "f1_weighted")

    def __init__(self, splits, *, prompt=None, batch_size=None, name="classification"):
        self.splits, self.prompt, self.batch_size, self.name = splits, prompt, batch_size, name

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        (train, y_train), (test, y_test) = self.splits["train"], self.splits["test"]
        x_train = embed(encoder, train, self.prompt, batch_size=self.batch_size)
        x_test = embed(encoder, test, self.prompt, batch_size=self.batch_size)
        return classification_scores_from_embeddings(x_train, y_train, x_test, y_test)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.splits["train"][0]), "test": len(self.splits["test"][0])}


class ClusteringEvaluator:
    """Texts with labels. `__call__(encoder)` -> `v_measure` (see the module docstring)."""

    primary_metric = "v_measure"
    metric_names = ("v_measure",)

    def __init__(self, texts, labels, *, prompt=None, batch_size=None, name="clustering"):
        self.texts, self.labels = list(texts), list(labels)
        self.prompt, self.batch_size, self.name = prompt, batch_size, name

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        x = embed(encoder, self.texts, self.prompt, batch_size=self.batch_size)
        return clustering_scores_from_embeddings(x, self.labels)

    def counts(self) -> dict[str, int]:
        return {"texts": len(self.texts)}
