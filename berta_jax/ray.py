"""berta-jax in Ray Data (the `[ray]` extra): a callable class for `Dataset.map_batches`.

```python
import ray
from berta_jax.ray import BertaEmbedder, embed_dataset
ds = ray.data.read_parquet("gs://bucket/corpus/")
ds = ds.map_batches(BertaEmbedder, fn_constructor_kwargs={"model": "sergeyzh/BERTA"},
                    batch_size=1024, compute=ray.data.ActorPoolStrategy(size=4),
                    num_gpus=1)   # or resources={"TPU": 4}
ds = embed_dataset(ray.data.read_parquet("gs://bucket/corpus/"), "sergeyzh/BERTA", concurrency=4,
                   num_gpus=1)
```

Ray builds the class in each actor of the pool, so the Encoder (and JAX, and the accelerator) is set
up in the actors only, never in the driver; each `__call__` embeds its whole batch in one
`Encoder.encode`. Ray Data retries the batches of an actor that dies on a new actor, so every row
comes out once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from berta_jax.engine import EncoderSpec
from berta_jax.errors import InputError

DEFAULT_BATCH_SIZE = 1024


class BertaEmbedder:
    """Adds `embedding_column` (float32 `[dim]` per row) to batches holding `text_column`; keeps
    every column.

    Options after `model` are `EncoderSpec`'s (prompt_name, prompt, dtype, truncate_dim, normalize,
    max_batch_tokens, pooling, max_seq_length, attention, compilation_cache, on_error). With
    `on_error="skip"` a bad text gets a zero vector and `error_column` says why (None for good
    rows).
    """

    def __init__(
        self,
        model: str,
        *,
        text_column: str = "text",
        embedding_column: str = "embedding",
        error_column: str = "embedding_error",
        **encoder_options: Any,
    ):
        self.spec = EncoderSpec(model, **encoder_options)
        self.text_column, self.embedding_column, self.error_column = (
            text_column,
            embedding_column,
            error_column,
        )
        self.encoder = self.spec.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise InputError(
                f"this batch has no column {self.text_column!r} (columns: {', '.join(batch)}); "
                "pass text_column= to BertaEmbedder"
            )
        vectors, problems = self.spec.embed(self.encoder, list(batch[self.text_column]))
        out = dict(batch)
        out[self.embedding_column] = vectors
        if self.spec.on_error == "skip":
            # typed string whatever the rows: a batch without a bad row would otherwise make a
            # null column, and files of one output with two schemas (pyarrow.dataset, pandas and
            # Spark take the schema from one file)
            out[self.error_column] = pa.array(problems, type=pa.string())
        return out


def embed_dataset(
    ds,
    model: str,
    *,
    text_column: str = "text",
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = 1,
    num_gpus: float | None = None,
    resources: dict | None = None,
    **options: Any,
):
    """`ds` with an embedding column, through an actor pool of `concurrency` BertaEmbedders (lazy,
    as Ray is).

    `num_gpus` / `resources` (e.g. `{"TPU": 4}`, one actor per TPU host) are each actor's; `options`
    go to `BertaEmbedder`.
    """
    import ray.data

    kwargs = {"model": model, "text_column": text_column, **options}
    EncoderSpec(
        model, **{k: v for k, v in options.items() if k not in ("embedding_column", "error_column")}
    )
    remote = {
        key: value
        for key, value in (("num_gpus", num_gpus), ("resources", resources))
        if value is not None
    }
    return ds.map_batches(
        BertaEmbedder,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        **remote,
    )
