"""berta-jax in Apache Beam (the `[beam]` extra): a RunInference model handler and a file-to-Parquet
pipeline.

```python
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from berta_jax.beam import BertaModelHandler
vectors = texts | RunInference(BertaModelHandler("sergeyzh/BERTA", prompt_name="search_document"))
keyed = pairs | RunInference(KeyedModelHandler(BertaModelHandler("sergeyzh/BERTA")))
```
"""

from berta_jax.beam.handler import BertaModelHandler
from berta_jax.beam.pipeline import EmbedFiles, build_pipeline

__all__ = ["BertaModelHandler", "EmbedFiles", "build_pipeline"]
