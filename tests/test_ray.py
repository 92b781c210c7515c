"""berta-jax in Ray Data, run for real: one local Ray instance (`ray.init(num_cpus=2)`) for the module, actor
pools of BertaEmbedders, every embedding compared with `Encoder.encode` of the same texts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from berta_jax import Encoder  # noqa: E402
from berta_jax.ray import BertaEmbedder, embed_dataset  # noqa: E402
from tests.helpers import REPO, cli_env  # noqa: E402
from tests.texts import MIXED  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


def _rows(n: int) -> list[dict]:
    return [{"id": i, "text": MIXED[i % len(MIXED)], "lang": "ru" if i % 2 else "en"} for i in range(n)]


def test_embed_dataset_adds_embeddings_equal_to_encode_and_keeps_every_column_and_row(ray_cluster, tiny_bert_dir, tiny):
    rows = _rows(200)
    out = embed_dataset(ray.data.from_items(rows), str(tiny_bert_dir), batch_size=64, prompt_name="paraphrase",
                        truncate_dim=8).take_all()
    assert sorted(r["id"] for r in out) == list(range(200))
    by_id = {r["id"]: r for r in out}
    assert all(by_id[r["id"]]["lang"] == r["lang"] and by_id[r["id"]]["text"] == r["text"] for r in rows)
    got = np.stack([by_id[i]["embedding"] for i in range(200)])
    assert got.dtype == np.float32 and got.shape == (200, 8)
    assert np.abs(got - tiny.encode([r["text"] for r in rows], prompt_name="paraphrase", truncate_dim=8)).max() <= 1e-6


def test_map_batches_with_the_class_and_another_text_column(ray_cluster, tiny_bert_dir, tiny):
    ds = ray.data.from_items([{"body": t, "n": i} for i, t in enumerate(MIXED)])
    out = ds.map_batches(BertaEmbedder, fn_constructor_kwargs={"model": str(tiny_bert_dir), "text_column": "body"},
                         batch_size=8, compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    got = np.stack([r["embedding"] for r in sorted(out, key=lambda r: r["n"])])
    assert np.abs(got - tiny.encode(MIXED)).max() <= 1e-6


BAD = {1: (None, "is NoneType, not a string"), 2: (7, "is int, not a string"),
       3: ("a\ud800b", "holds a lone surrogate U+D800 at character 1")}


@pytest.mark.slow  # Ray's error path end to end (Beam's is in the default run)
def test_a_bad_element_fails_naming_it_or_is_a_zero_row_and_a_reason_with_skip(ray_cluster, tiny_bert_dir, tiny):
    texts = ["Кот", *(value for value, _ in BAD.values()), "A dog."]
    with pytest.raises(Exception, match=r"element 1 of this batch \(None\) is NoneType, not a string"):
        _embed_in_ray(tiny_bert_dir, texts, on_error="raise")
    out = _embed_in_ray(tiny_bert_dir, texts, on_error="skip")
    assert out[0]["embedding_error"] is None and out[4]["embedding_error"] is None
    assert all(named in out[i]["embedding_error"] and not out[i]["embedding"].any() for i, (_, named) in BAD.items())
    good = np.stack([out[0]["embedding"], out[4]["embedding"]])
    assert np.abs(good - tiny.encode(["Кот", "A dog."])).max() <= 1e-6


def _embed_in_ray(model: Path, texts: list, **options) -> list[dict]:
    ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=1)
    return sorted(embed_dataset(ds, str(model), batch_size=len(texts), **options).take_all(), key=lambda r: r["i"])


class DiesOnce(BertaEmbedder):
    """An embedder whose process is killed (SIGKILL) at its first batch, once per marker file."""

    def __init__(self, model: str, marker: str, **options):
        super().__init__(model, **options)
        self.marker = marker

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


@pytest.mark.slow  # Ray's own retry, checked end to end: in the slow tier
def test_a_killed_actor_is_replaced_and_every_row_comes_out_once(ray_cluster, tiny_bert_dir, tiny, tmp_path):
    rows = _rows(120)
    marker = tmp_path / "killed"
    ds = ray.data.from_items(rows).map_batches(
        DiesOnce, fn_constructor_kwargs={"model": str(tiny_bert_dir), "marker": str(marker)}, batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=1))
    out = ds.take_all()
    assert marker.exists()  # an actor did die
    assert sorted(r["id"] for r in out) == list(range(120))
    got = np.stack([r["embedding"] for r in sorted(out, key=lambda r: r["id"])])
    assert np.abs(got - tiny.encode([r["text"] for r in rows])).max() <= 1e-6


def test_the_driver_and_the_beam_launcher_never_import_jax(tiny_bert_dir):
    """Building the Ray stage and the Beam handler (what a driver and a launcher do) imports no JAX."""
    program = (
        "import sys, ray.data\n"
        "from berta_jax.ray import embed_dataset\n"
        "from berta_jax.beam import BertaModelHandler\n"
        f"handler = BertaModelHandler({str(tiny_bert_dir)!r}, prompt_name='paraphrase')\n"
        "assert handler.batch_elements_kwargs()['min_batch_size'] == 256\n"
        "print(sorted(m for m in ('jax', 'jaxlib', 'flax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, env=cli_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_batch_without_a_bad_row_still_types_the_error_column(tiny_bert_dir):
    """The embedder alone (in this process): the error column is a string column with or without bad rows, so
    Ray writes every block with one schema (end to end through write_parquet in the slow tier)."""
    import pyarrow as pa

    embedder = BertaEmbedder(str(tiny_bert_dir), on_error="skip")
    for texts in (["Кот", "A dog."], ["Кот", None]):
        column = embedder({"text": np.array(texts, dtype=object)})["embedding_error"]
        assert pa.array(column).type == pa.string()
    assert pa.array(column).to_pylist()[0] is None and "is NoneType" in pa.array(column).to_pylist()[1]


@pytest.mark.slow  # Ray end to end; its in-process twin is in the default run
def test_the_error_column_has_one_type_in_every_file_of_an_output(ray_cluster, tiny_bert_dir, tmp_path):
    """on_error="skip", then write_parquet (the README's recipe): a block without a bad row and a block with one
    write the same schema, so pyarrow.dataset reads the whole output."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    texts = ["Кот", "A dog.", None, "Дом"]  # blocks of two rows: the first has no bad row
    ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=2)
    embed_dataset(ds, str(tiny_bert_dir), batch_size=2, on_error="skip").write_parquet(str(tmp_path / "out"))
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 2
    table = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().sort_by("i")
    assert table.schema.field("embedding_error").type == pa.string()
    errors = table.column("embedding_error").to_pylist()
    assert errors[:2] == [None, None] and errors[3] is None and "is NoneType, not a string" in errors[2]
