"""The evaluators: equal to sentence-transformers' on the same embeddings (retrieval across corpus chunks and
through ties, STS), classification and clustering as MTEB defines them, the builder's table, the evaluate command
end to end on the tiny model, and a one-line error naming file, line and field for every bad input."""

from __future__ import annotations

import json
import re
import sys
import types

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)
from sentence_transformers.util import cos_sim

from berta_jax import Encoder
from berta_jax.cli import main
from berta_jax.cli.evaluate_command import spec_from_args
from berta_jax.cli.main import parse
from berta_jax.errors import ConfigError, InputError
from berta_jax.evaluate import (
    EvaluationError,
    build_evaluators,
    classification_scores_from_embeddings,
    clustering_scores_from_embeddings,
    metric_names,
    read_beir,
    retrieval_scores_from_embeddings,
    run_evaluators,
    sts_scores_from_embeddings,
)
from berta_jax.evaluate.base import embed
from berta_jax.evaluate.labelled import require_sklearn
from berta_jax.loading.sentence_config import SentenceConfig

ST_IR_NAMES = [f"cosine_{m}@{k}" for m, ks in (("accuracy", (1, 3, 5, 10)), ("precision", (1, 3, 5, 10)),
                                               ("recall", (1, 3, 5, 10)), ("ndcg", (10,)), ("mrr", (10,)),
                                               ("map", (100,))) for k in ks]


class LookupModel:
    """What sentence-transformers' evaluators call on a model, answering each text with a given embedding."""

    similarity_fn_name = "cosine"

    class model_card_data:
        @staticmethod
        def set_evaluation_metrics(*args, **kwargs):
            pass

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def similarity(self, a, b):
        return cos_sim(a, b)

    def encode(self, sentences, convert_to_tensor=False, **kwargs):
        x = np.stack([self.table[s] for s in sentences]).astype(np.float32)
        return torch.from_numpy(x) if convert_to_tensor else x

    encode_query = encode_document = encode


def st_retrieval(queries: np.ndarray, corpus: np.ndarray, corpus_ids, relevant, chunk: int) -> dict[str, float]:
    table = {f"Q{i}": q for i, q in enumerate(queries)} | {f"C{j}": c for j, c in enumerate(corpus)}
    evaluator = InformationRetrievalEvaluator(
        {f"q{i}": f"Q{i}" for i in range(len(queries))}, {c: f"C{j}" for j, c in enumerate(corpus_ids)},
        {f"q{i}": rel for i, rel in enumerate(relevant)}, corpus_chunk_size=chunk, write_csv=False,
    )
    return evaluator(LookupModel(table))


def assert_same(ours: dict[str, float], reference: dict[str, float]) -> None:
    assert list(ours) == list(reference)
    for name, value in reference.items():
        assert abs(ours[name] - value) <= 1e-6, (name, ours[name], value)


def test_retrieval_equals_sentence_transformers_across_corpus_chunks():
    rng = np.random.default_rng(0)
    n_queries, n_docs, dim = 40, 300, 24
    corpus = rng.normal(size=(n_docs, dim)).astype(np.float32)
    corpus_ids = [f"doc-{rng.integers(10**6)}-{j}" for j in range(n_docs)]  # file order is not id order
    relevant, queries = [], []
    for _ in range(n_queries):
        picks = rng.choice(n_docs, size=rng.integers(1, 6), replace=False)
        relevant.append({corpus_ids[j] for j in picks})
        queries.append(corpus[picks].mean(0) + rng.normal(scale=0.8, size=dim))  # near its documents
    queries = np.asarray(queries, np.float32) * rng.uniform(0.5, 3, size=(n_queries, 1)).astype(np.float32)
    reference = st_retrieval(queries, corpus, corpus_ids, relevant, chunk=37)
    assert list(reference) == ST_IR_NAMES
    assert 0.2 < reference["cosine_ndcg@10"] < 0.95  # neither trivial nor hopeless
    for chunk in (41, 300, 1000):  # several chunks, one, one larger than the corpus
        assert_same(retrieval_scores_from_embeddings(queries, corpus, corpus_ids, relevant, chunk_size=chunk),
                    reference)


def test_retrieval_ties_and_a_corpus_smaller_than_k_rank_as_sentence_transformers():
    """Embeddings of 0s and 1s in groups of 1, 4 or 16 (norms 1, 2, 4): every cosine is exact in float32 on both
    sides, so many scores tie exactly and the order among them is the tie rule's, (-score, id) with ids as
    strings ("d10" before "d2"). 60 documents < k=100: MAP@100 and the top lists are capped as ST caps them."""
    rng = np.random.default_rng(1)
    dim, n_docs, n_queries = 16, 60, 25

    def vectors(n):
        out = np.zeros((n, dim), np.float32)
        for row in out:
            row[rng.choice(dim, size=rng.choice([1, 4, 16]), replace=False)] = 1.0
        return out

    corpus, queries = vectors(n_docs), vectors(n_queries)
    corpus_ids = [f"d{j}" for j in rng.permutation(n_docs)]
    relevant = [set(rng.choice(corpus_ids, size=rng.integers(1, 8), replace=False)) for _ in range(n_queries)]
    scores = cos_sim(torch.from_numpy(queries), torch.from_numpy(corpus)).numpy()
    assert max(len(row) - len(set(row)) for row in scores.tolist()) > 20  # ties everywhere
    reference = st_retrieval(queries, corpus, corpus_ids, relevant, chunk=7)
    for chunk in (7, 60):
        assert_same(retrieval_scores_from_embeddings(queries, corpus, corpus_ids, relevant, chunk_size=chunk),
                    reference)


def test_sts_equals_sentence_transformers():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(2, 50, 12)).astype(np.float32)
    second = (first + rng.normal(scale=1.5, size=first.shape)).astype(np.float32)
    gold = np.round(rng.uniform(0, 5, size=50), 1).tolist()
    table = {f"a{i}": v for i, v in enumerate(first)} | {f"b{i}": v for i, v in enumerate(second)}
    evaluator = EmbeddingSimilarityEvaluator([f"a{i}" for i in range(50)], [f"b{i}" for i in range(50)], gold,
                                             write_csv=False)
    reference = evaluator(LookupModel(table))
    ours = sts_scores_from_embeddings(first, second, gold)
    assert_same(ours, reference)
    assert list(ours) == ["pearson_cosine", "spearman_cosine"]


def test_constant_cosines_are_an_error_not_nan():
    same = np.ones((4, 3), np.float32)
    with pytest.raises(EvaluationError, match="same cosine.*undefined"):
        sts_scores_from_embeddings(same, same, [1.0, 2.0, 3.0, 4.0])


def test_classification_and_clustering_as_mteb_defines_them():
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, v_measure_score

    rng = np.random.default_rng(3)
    centers = rng.normal(scale=2.0, size=(3, 8))
    labels = [str(i % 3) for i in range(90)]
    x = (centers[[int(y) for y in labels]] + rng.normal(size=(90, 8))).astype(np.float32)
    ours = classification_scores_from_embeddings(x[:60], labels[:60], x[60:], labels[60:])
    predicted = LogisticRegression(random_state=42, max_iter=100).fit(x[:60], labels[:60]).predict(x[60:])
    assert ours == {"accuracy": accuracy_score(labels[60:], predicted),
                    "f1": f1_score(labels[60:], predicted, average="macro"),
                    "f1_weighted": f1_score(labels[60:], predicted, average="weighted")}
    assert 0.5 < ours["accuracy"] <= 1.0
    clusters = MiniBatchKMeans(n_clusters=3, batch_size=500, n_init="auto", random_state=42).fit(x).labels_
    assert clustering_scores_from_embeddings(x, labels) == {"v_measure": v_measure_score(labels, clusters)}
    separated = (centers[[int(y) for y in labels]] * 100).astype(np.float32)
    assert clustering_scores_from_embeddings(separated, labels) == {"v_measure": 1.0}


def test_missing_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigError, match=r"pip install 'berta-jax\[eval\]'"):
        require_sklearn("clustering")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def write_beir(folder, corpus=None, queries=None, qrels=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    write_jsonl(folder / "corpus.jsonl", corpus if corpus is not None else [
        {"_id": "d1", "title": "Москва", "text": "столица России"},
        {"_id": "d2", "title": "", "text": "Paris is the capital of France "},
        {"_id": "d3", "title": "Berlin", "text": "capital of Germany"},
        {"_id": "d4", "text": "a document without a title"},
    ])
    write_jsonl(folder / "queries.jsonl", queries if queries is not None else [
        {"_id": "q1", "text": "столица России"}, {"_id": "q2", "text": "capital of France"},
        {"_id": "q3", "text": "a train-split query"},
    ])
    rows = qrels if qrels is not None else [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d3", 0)]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{c}\t{s}\n" for q, c, s in rows))
    return folder


def test_beir_folder_joins_title_and_text_as_mteb_and_keeps_judged_queries(tmp_path):
    data = read_beir(str(write_beir(tmp_path / "beir")))
    assert data.corpus == {"d1": "Москва столица России", "d2": "Paris is the capital of France",
                           "d3": "Berlin capital of Germany", "d4": "a document without a title"}
    assert data.queries == {"q1": "столица России", "q2": "capital of France"}
    assert data.relevant == {"q1": {"d1"}, "q2": {"d2"}}  # a score of 0 is judged non-relevant
    assert data.unjudged_queries == 1


def test_evaluate_command_end_to_end(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    original = Encoder.from_folder
    beir = write_beir(tmp_path / "beir")
    sts = tmp_path / "sts.csv"
    sts.write_text("sentence1,sentence2,score\nкот спит,кошка спит,4.5\nкот спит,курс валют,0.5\n"
                   "dog runs,a dog is running,4.0\nrain today,stock prices,1.0\n")
    texts = ["good film", "great movie", "bad film", "awful movie", "nice plot", "boring plot"]
    labelled = [{"text": t, "label": i % 2, "split": "train" if i < 4 else "test"} for i, t in enumerate(texts)]
    classification = write_jsonl(tmp_path / "cls.jsonl", labelled)
    clustering = write_jsonl(tmp_path / "clu.jsonl", [{"text": t, "label": ["a", "b"][i % 2]}
                                                      for i, t in enumerate(texts)])
    out = tmp_path / "results.json"
    made = []
    monkeypatch.setattr(Encoder, "from_folder", classmethod(
        lambda cls, *a, **k: made.append(original(*a, **k)) or made[-1]))
    code = main(["evaluate", "--model", str(tiny_bert_dir), "--retrieval", str(beir), "--sts", str(sts),
                 "--classification", str(classification), "--clustering", str(clustering),
                 "--query-prompt", "search_query", "--corpus-prompt", "search_document: ", "--prompt", "paraphrase",
                 "--corpus-chunk-size", "3", "--max-batch-tokens", "32", "-o", str(out)])  # one shape to compile
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert list(metrics) == ([f"retrieval/{n}" for n in ST_IR_NAMES] + ["sts/pearson_cosine", "sts/spearman_cosine",
                             "classification/accuracy", "classification/f1", "classification/f1_weighted",
                             "clustering/v_measure"])
    assert result["counts"]["retrieval"] == {"queries": 2, "corpus": 4, "queries_without_qrels": 1}
    assert re.search(rf"\nretrieval/cosine_ndcg@10 +{metrics['retrieval/cosine_ndcg@10']:.6f}\n", printed)
    # the same figures from the encoder's own embeddings: prompt names and literal prompts reach the encoder
    encoder = made[0]  # the command's own encoder
    data = read_beir(str(beir))
    ids = list(data.corpus)
    expected = retrieval_scores_from_embeddings(
        encoder.encode(list(data.queries.values()), prompt_name="search_query"),
        encoder.encode([data.corpus[c] for c in ids], prompt="search_document: "), ids,
        [data.relevant[q] for q in data.queries])
    assert_same({n.removeprefix("retrieval/"): v for n, v in metrics.items() if n.startswith("retrieval/")},
                expected)
    lines = sts.read_text().splitlines()[1:]
    first, second, gold = zip(*(line.rsplit(",", 2) for line in lines))
    sts_expected = sts_scores_from_embeddings(encoder.encode(list(first), prompt_name="paraphrase"),
                                              encoder.encode(list(second), prompt_name="paraphrase"),
                                              [float(g) for g in gold])
    assert abs(metrics["sts/spearman_cosine"] - sts_expected["spearman_cosine"]) <= 1e-6
    # the trainer's path: the same table, the same figures, under the names known before the run
    spec = {"retrieval": "beir", "query_prompt": "search_query", "corpus_prompt": "search_document: "}
    evaluators = build_evaluators(spec, tmp_path)
    assert metric_names(evaluators) == [f"retrieval/{n}" for n in ST_IR_NAMES]
    assert_same({n.removeprefix("retrieval/"): v for n, v in run_evaluators(evaluators, encoder).items()}, expected)
    # no prompts given: the model's own query and document prompts, as encode_query / encode_document
    defaults = build_evaluators({"retrieval": "beir"}, tmp_path)
    assert_same({n.removeprefix("retrieval/"): v for n, v in run_evaluators(defaults, encoder).items()},
                retrieval_scores_from_embeddings(
                    encoder.encode_query(list(data.queries.values())),
                    encoder.encode_document([data.corpus[c] for c in ids]), ids,
                    [data.relevant[q] for q in data.queries]))


@pytest.mark.parametrize("spec, message", [
    ({"retreival": "x"}, "unknown key 'retreival'; did you mean 'retrieval'?"),
    ({"sts": "a.csv", "batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"sts": "a.csv", "corpus_chunk_size": True}, "corpus_chunk_size must be a positive integer"),
    ({"sts": 3}, "sts must be a string, got 3"),
    ({"prompt": "x"}, "no data to evaluate on"),
])
def test_builder_refuses_a_bad_table(spec, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        build_evaluators(spec)


def test_evaluate_options_are_checked_at_the_door(tmp_path, capsys):
    sts = tmp_path / "sts.csv"
    sts.write_text("sentence1,sentence2,score\n")
    for argv, message in [
        (["--sts", str(tmp_path / "none.csv")], "none.csv: no such file"),
        (["--retrieval", str(tmp_path)], None),  # a folder: passes the door, then its corpus is missing
        (["--sts", str(sts), "--batch-size", "0"], "'0': must be a positive integer"),
        (["--retrieval", str(tmp_path / "f.csv")], "no such folder"),
        (["--sts", str(sts), "-o", str(tmp_path)], "is a folder; give a file name"),
    ]:
        with pytest.raises(SystemExit) if message else pytest.raises(InputError, match="corpus.jsonl: no such file"):
            build_evaluators(spec_from_args(parse(["evaluate", "--model", "m", *argv])))
        if message:
            assert message in capsys.readouterr().err


def test_sts_scores_of_one_value_and_single_class_labels_are_refused(tmp_path):
    sts = write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "score": 3}] * 3)
    with pytest.raises(InputError, match=r"sts.jsonl: every 'score' is 3; a correlation .* undefined"):
        build_evaluators({"sts": str(sts)})
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}])
    with pytest.raises(InputError, match=r"one.jsonl: every 'label' is 'x'; clustering needs at least 2 classes"):
        build_evaluators({"clustering": str(one)})
    cls = write_jsonl(tmp_path / "cls.jsonl", [{"text": "a", "label": 1, "split": "train"},
                                               {"text": "b", "label": 2, "split": "test"}])
    with pytest.raises(InputError, match=r"cls.jsonl: every 'label' of the train split is '1'; classification"):
        build_evaluators({"classification": str(cls)})


@pytest.mark.parametrize("kind, records, message", [
    ("sts", [{"sentence1": "a", "score": 1}], r"sts.jsonl:1: no field 'sentence2'"),
    ("sts", [{"sentence1": "a", "sentence2": "b", "score": 1}, {"sentence1": "a", "sentence2": "c", "score": "high"}],
     r"sts.jsonl:2: 'score' is 'high', not a finite number"),
    ("sts", [{"sentence1": "a", "sentence2": None, "score": 1}], r"sts.jsonl:1: 'sentence2' is missing or null"),
    ("classification", [{"text": "a", "label": 1, "split": "dev"}], r"cls.jsonl:1: 'split' is 'dev'"),
    ("classification", [{"text": "a", "label": 1, "split": "train"}, {"text": "b", "label": 2, "split": "train"}],
     r"cls.jsonl: no rows of the test split"),
    ("clustering", [{"text": "a", "label": 1.5}], r"clu.jsonl:1: 'label' is 1.5; labels are non-empty strings or integers"),
])
def test_bad_rows_are_named_by_file_line_and_field(tmp_path, kind, records, message):
    name = {"sts": "sts.jsonl", "classification": "cls.jsonl", "clustering": "clu.jsonl"}[kind]
    with pytest.raises(InputError, match=message):
        build_evaluators({kind: str(write_jsonl(tmp_path / name, records))})


def test_a_csv_without_a_column_is_named(tmp_path):
    sts = tmp_path / "sts.csv"
    sts.write_text("sentence1,sentence2,similarity\na,b,1\n")
    with pytest.raises(InputError, match=r"sts.csv:1: no column 'score' \(columns: sentence1, sentence2, similarity\)"):
        build_evaluators({"sts": str(sts)})


@pytest.mark.parametrize("change, message", [
    (dict(qrels=[("q1", "d9", 1)]), r"qrels/test.tsv:2: 'corpus-id' 'd9' is not in corpus.jsonl"),
    (dict(qrels=[("q1", "d1", 1), ("q7", "d1", 1)]), r"qrels/test.tsv:3: 'query-id' 'q7' is not in queries.jsonl"),
    (dict(qrels=[("q1", "d1", 0)]), r"qrels/test.tsv: no judgement with a score above 0"),
    (dict(qrels=[("q1", "d1", "yes")]), r"qrels/test.tsv:2: 'score' is 'yes', not an integer"),
    (dict(corpus=[]), r"corpus.jsonl: the corpus holds no documents"),
    (dict(corpus=[{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]),
     r"corpus.jsonl:2: '_id' 'd1' is a duplicate \(first on line 1\)"),
    (dict(queries=[{"_id": "q1"}]), r"queries.jsonl:1: no field 'text'"),
    (dict(corpus=[{"_id": "d1", "title": 5, "text": "a"}]), r"corpus.jsonl:1: 'title' is int, not a string"),
])
def test_bad_beir_folders_are_named_by_file_line_and_field(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        build_evaluators({"retrieval": str(write_beir(tmp_path / "beir", **change))})


def test_a_qrels_file_without_its_header_is_refused(tmp_path):
    beir = write_beir(tmp_path / "beir")
    (beir / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(InputError, match=r"test.tsv:1: the header must be 'query-id\\tcorpus-id\\tscore'"):
        build_evaluators({"retrieval": str(beir)})


def test_a_model_with_prompts_but_none_for_queries_names_the_option_to_give():
    encoder = types.SimpleNamespace(sentence=SentenceConfig(prompts={"paraphrase": "paraphrase: "}))
    with pytest.raises(ConfigError, match=r"defines no query prompt.*\(evaluation: give query_prompt"):
        embed(encoder, ["a question"], None, role="query")


def test_labelled_sets_read_from_csv_and_parquet_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {"text": ["a", "b", "c", "d"], "label": ["1", "2", "1", "2"], "split": ["train", "train", "test", "test"]}
    pq.write_table(pa.table(rows), tmp_path / "cls.parquet")
    (tmp_path / "cls.csv").write_text("text,label,split\n" + "".join(
        f"{t},{y},{s}\n" for t, y, s in zip(*rows.values())))
    expected = {"train": (["a", "b"], ["1", "2"]), "test": (["c", "d"], ["1", "2"])}
    for name in ("cls.parquet", "cls.csv"):
        assert build_evaluators({"classification": str(tmp_path / name)})[0].splits == expected


def test_a_bad_input_ends_the_command_in_one_line_before_the_model_loads(tmp_path, capsys):
    beir = write_beir(tmp_path / "beir", qrels=[("q1", "d9", 1)])
    assert main(["evaluate", "--model", str(tmp_path / "no-model"), "--retrieval", str(beir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "berta-jax evaluate: error: " in err and "test.tsv:2: 'corpus-id' 'd9' is not in corpus.jsonl" in err


def test_evaluate_help_shows_examples_and_a_small_batch_budget_is_one_line(tmp_path, tiny_bert_dir, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "examples:" in capsys.readouterr().out
    beir = write_beir(tmp_path / "beir")
    assert main(["evaluate", "--model", str(tiny_bert_dir), "--retrieval", str(beir), "--max-batch-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-batch-tokens 8 is smaller than the model's max_seq_length 32" in err
