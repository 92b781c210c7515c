"""berta-jax in Apache Beam, run for real: Beam's FnApiRunner in this process (the default DirectRunner would
first try Prism, which downloads a binary), and Beam's bundle-based DirectRunner where a retried bundle is the
point (the FnApiRunner does not retry). Every embedding is compared with `Encoder.encode` of the same texts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

beam = pytest.importorskip("apache_beam")
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference  # noqa: E402
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

from berta_jax import Encoder, InputError  # noqa: E402
from berta_jax.beam import BertaModelHandler  # noqa: E402
from berta_jax.cli import main  # noqa: E402
from tests.test_inputs import TEXTS, write_inputs  # noqa: E402
from tests.texts import MIXED  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


_SEEN: list = []  # what `_keep` saw: the FnApiRunner runs in this process and finds the function by reference


def _keep(element) -> None:
    _SEEN.append(element)


def _collect(pcoll) -> list:
    """The list that holds the elements of `pcoll` once the pipeline has run."""
    _SEEN.clear()
    pcoll | beam.Map(_keep)
    return _SEEN


def _dataset(folder: Path):
    table = pads.dataset(str(folder), format="parquet").to_table().sort_by("row")
    return table, np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def test_run_inference_on_strings_gives_prediction_results_equal_to_encode(tiny_bert_dir, tiny):
    handler = BertaModelHandler(str(tiny_bert_dir), prompt_name="paraphrase", truncate_dim=8, min_batch_size=4,
                                max_batch_size=8)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        seen = _collect(p | beam.Create(MIXED) | RunInference(handler))
    assert sorted(r.example for r in seen) == sorted(MIXED)
    assert all(isinstance(r, PredictionResult) and r.inference.dtype == np.float32 and r.inference.shape == (8,)
               for r in seen)
    want = dict(zip(MIXED, tiny.encode(MIXED, prompt_name="paraphrase", truncate_dim=8)))
    assert max(np.abs(r.inference - want[r.example]).max() for r in seen) <= 1e-6


def test_keyed_handler_keeps_every_key_once(tiny_bert_dir, tiny):
    pairs = [(f"k{i}", t) for i, t in enumerate(MIXED * 3)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        seen = _collect(p | beam.Create(pairs) | RunInference(KeyedModelHandler(BertaModelHandler(str(tiny_bert_dir)))))
    assert sorted(k for k, _ in seen) == sorted(k for k, _ in pairs)
    want = dict(zip([k for k, _ in pairs], tiny.encode([t for _, t in pairs])))
    assert max(np.abs(result.inference - want[key]).max() for key, result in seen) <= 1e-6


@pytest.mark.parametrize("bad, named", [(None, "is NoneType, not a string"), (7, "is int, not a string"),
                                        ("a\ud800b", "holds a lone surrogate U+D800 at character 1")])
def test_a_bad_element_fails_naming_it_or_is_a_zero_row_with_skip(tiny_bert_dir, tiny, bad, named):
    texts = ["Кот", bad, "A dog."]
    match = r"element 1 of this batch \(.+\) " + re.escape(named)
    if isinstance(bad, str):  # Beam's coders refuse a lone surrogate between any two steps: the handler's own check
        with pytest.raises(InputError, match=match):
            BertaModelHandler(str(tiny_bert_dir)).run_inference(texts, tiny)
    else:
        with pytest.raises(Exception, match=match):
            with beam.Pipeline(runner=FnApiRunner()) as p:
                (p | beam.Create([json.dumps(texts)]) | beam.FlatMap(json.loads)
                 | RunInference(BertaModelHandler(str(tiny_bert_dir), min_batch_size=3, max_batch_size=3)))
    results = BertaModelHandler(str(tiny_bert_dir), on_error="skip").run_inference(texts, tiny)
    assert [r.example for r in results] == texts and not results[1].inference.any()
    good = np.stack([results[0].inference, results[2].inference])
    assert np.abs(good - tiny.encode(["Кот", "A dog."])).max() <= 1e-6
    assert named in BertaModelHandler(str(tiny_bert_dir), on_error="skip").spec.embed(tiny, texts)[1][1]


def _beam(*args: str) -> int:
    return main(["beam", *args])


def test_the_pipeline_writes_the_dataset_that_encode_writes(tmp_path, tiny_bert_dir):
    """jsonl (split into byte ranges), parquet (row groups) and csv (whole) in one run: the same rows, ids and
    embeddings as `berta-jax encode`'s dataset output, every row once."""
    files = write_inputs(tmp_path / "in")
    inputs = [str(files[f]) for f in ("jsonl", "parquet", "csv")]
    common = ["--model", str(tiny_bert_dir), "--text-field", "body", "--id-field", "id", "--prompt-name", "paraphrase"]
    assert _beam(*inputs, "-o", str(tmp_path / "beam"), *common, "--split-mb", "0.0005", "--min-batch-size", "4",
                 "--max-batch-size", "16") == 0
    assert main(["encode", *inputs, "-o", str(tmp_path / "cli") + "/", *common, "--quiet"]) == 0
    got, got_vectors = _dataset(tmp_path / "beam")
    want, want_vectors = _dataset(tmp_path / "cli")
    assert got.schema == want.schema
    assert got.column("row").to_pylist() == list(range(3 * len(TEXTS)))
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert np.abs(got_vectors - want_vectors).max() <= 1e-6


def test_skip_gives_zero_rows_and_their_reasons_and_raise_names_the_line(tmp_path, tiny_bert_dir, tiny, capsys):
    path = tmp_path / "in.jsonl"
    rows = [{"text": "Кот"}, {"text": None}, {"text": "a\ud800"}, {"text": 5}, {"text": "A dog."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    assert _beam(str(path), "-o", str(tmp_path / "skip"), "--model", str(tiny_bert_dir), "--on-error", "skip") == 0
    table, vectors = _dataset(tmp_path / "skip")
    assert table.column("row").to_pylist() == list(range(6))
    assert not vectors[[1, 2, 3, 5]].any() and np.abs(vectors[[0, 4]] - tiny.encode(["Кот", "A dog."])).max() <= 1e-6
    skipped = [json.loads(line) for f in sorted((tmp_path / "skip").glob("_skipped*.jsonl"))
               for line in f.read_text().splitlines()]
    reasons = {r["row"]: r["error"] for r in skipped}
    assert sorted(reasons) == [1, 2, 3, 5]
    assert f"{path}:3: 'text' holds a lone surrogate U+D800" in reasons[2] and "not valid JSON" in reasons[5]
    capsys.readouterr()
    assert _beam(str(path), "-o", str(tmp_path / "raise"), "--model", str(tiny_bert_dir)) == 2
    assert f"{path}:2: 'text' is missing or null" in capsys.readouterr().err


def test_the_pipeline_refuses_a_folder_with_files_in_it_before_any_work(tmp_path, tiny_bert_dir, capsys):
    files = write_inputs(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"keep me")
    assert _beam(str(files["txt"]), "-o", str(tmp_path / "out"), "--model", str(tiny_bert_dir)) == 2
    assert "the folder is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "old.parquet").read_bytes() == b"keep me"


class FailsOnce(BertaModelHandler):
    """A handler whose first batch raises (once per marker file): a worker that fails mid-bundle."""

    def __init__(self, model: str, marker: str, **options):
        super().__init__(model, **options)
        self.marker = marker

    def run_inference(self, batch, model, inference_args=None):
        if not Path(self.marker).exists():
            Path(self.marker).write_text("failed once")
            raise RuntimeError("a worker failure in the middle of a bundle")
        return super().run_inference(batch, model, inference_args)


def test_a_bundle_that_fails_once_is_retried_and_every_row_is_written_once(tmp_path, tiny_bert_dir, tiny):
    from berta_jax.beam import build_pipeline

    files = write_inputs(tmp_path / "in")
    marker = tmp_path / "failed"
    handler = FailsOnce(str(tiny_bert_dir), str(marker), min_batch_size=4, max_batch_size=4)
    with beam.Pipeline(runner=BundleBasedDirectRunner()) as p:
        build_pipeline(p, [str(files["txt"])], str(tmp_path / "out"), handler, dim=16, split_bytes=200)
    assert marker.exists()
    table, vectors = _dataset(tmp_path / "out")
    assert table.column("row").to_pylist() == list(range(len(TEXTS)))
    assert np.abs(vectors - tiny.encode(TEXTS)).max() <= 1e-6


def test_the_pipeline_refuses_an_output_in_the_model_folder_or_among_the_inputs(tmp_path, tiny_bert_dir, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "part-0.txt").write_text("Кот\n")
    before = sorted(p.name for p in model.iterdir())
    for output, named in ((model / "emb", "is inside the model folder"),
                          (corpus / "emb", "is inside the input directory")):
        assert _beam(str(corpus), "-o", str(output), "--model", str(model)) == 2
        assert named in capsys.readouterr().err and not output.exists()
    assert sorted(p.name for p in model.iterdir()) == before


def test_the_id_kind_is_the_runs_not_each_splits(tmp_path, tiny_bert_dir, capsys, caplog):
    """Integer ids in one file and string ids in another: each split alone has one kind, but the run has two;
    the launcher plans the run's kind (its first id's) as `encode` does, so the other kind is a bad row."""
    (tmp_path / "a.jsonl").write_text('{"text": "a", "id": 1}\n{"text": "b", "id": 2}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "c", "id": "1"}\n')
    inputs = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    common = ["--model", str(tiny_bert_dir), "--id-field", "id"]
    assert _beam(*inputs, "-o", str(tmp_path / "raise"), *common) == 2
    assert "b.jsonl:1: id is a string but earlier ids are integers" in capsys.readouterr().err
    # one line: Beam's log of the same error, with its traceback, is left out
    assert not [r for r in caplog.records if r.exc_info and "earlier ids" in r.getMessage()]
    assert _beam(*inputs, "-o", str(tmp_path / "skip"), *common, "--on-error", "skip") == 0
    table, vectors = _dataset(tmp_path / "skip")
    assert table.column("id").to_pylist() == ["1", "2", None] and not vectors[2].any()
