"""`BertaModelHandler`: berta-jax as a model of Beam's RunInference.

RunInference batches elements (`BatchElements`), loads the model once per worker process through a
shared handle (once per VM with `large_model=True`, which Beam serves from one process to the
others) and calls `run_inference` per batch. Each batch goes to one `Encoder.encode`, so the Encoder
packs the whole batch into its few compiled shapes: batches default to 256-4,096 texts, enough to
pack well without holding a worker's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from berta_jax.engine import EncoderSpec

# imported on the workers only, by EncoderSpec.load: the launcher never initialises JAX
if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

MIN_BATCH_SIZE = 256
MAX_BATCH_SIZE = 4096


class BertaModelHandler(ModelHandler[str, PredictionResult, "Encoder"]):
    """RunInference on `str` elements -> `PredictionResult(example=text, inference=float32 [dim])`.

    Wrap it in `KeyedModelHandler` for `(key, text)` elements. Arguments after `model` are
    `EncoderSpec`'s (prompt, dtype, truncate_dim, normalize, max_batch_tokens, pooling,
    max_seq_length, attention, compilation_cache, on_error) and Beam's own batching and sharing
    options.
    """

    def __init__(
        self,
        model: str,
        *,
        min_batch_size: int = MIN_BATCH_SIZE,
        max_batch_size: int = MAX_BATCH_SIZE,
        large_model: bool = False,
        model_copies: int | None = None,
        **encoder_options: Any,
    ):
        self.spec = EncoderSpec(model, **encoder_options)
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            model_copies=model_copies,
        )

    def load_model(self) -> Encoder:
        return self.spec.load()

    def run_inference(
        self, batch: Sequence[str], model: Encoder, inference_args: Mapping[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        vectors, problems = self.spec.embed(model, batch)
        if skipped := sum(problem is not None for problem in problems):
            Metrics.counter(self.get_metrics_namespace(), "skipped_elements").inc(skipped)
        return [
            PredictionResult(text, vector, self.spec.model) for text, vector in zip(batch, vectors)
        ]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        return sum(len(t.encode("utf-8", "replace")) if isinstance(t, str) else 0 for t in batch)

    def get_metrics_namespace(self) -> str:
        return "berta_jax"

    def validate_inference_args(self, inference_args: Mapping[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"BertaModelHandler takes no inference_args (got {sorted(inference_args)}); give "
                "prompt, truncate_dim and the rest to the handler itself"
            )
