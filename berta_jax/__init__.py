"""berta-jax: BERT sentence encoders (sergeyzh/BERTA first of all) in pure JAX/Flax, PyTorch-exact."""

from berta_jax.config import BertConfig
from berta_jax.encoder import EncodeResult, Encoder
from berta_jax.errors import BertaJaxError, CheckpointError, ConfigError, ModelNotFoundError, TruncationWarning
from berta_jax.model import BertModel
from berta_jax.pooling import embed, l2_normalize, make_embed_fn, make_hidden_fn, pool
from berta_jax.st_config import SentenceConfig
from berta_jax.tokenize import TextTokenizer, TokenizedTexts
from berta_jax.weights import build_model, flat_params, load_model, param_shapes

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertModel",
    "BertaJaxError",
    "CheckpointError",
    "ConfigError",
    "EncodeResult",
    "Encoder",
    "ModelNotFoundError",
    "SentenceConfig",
    "TextTokenizer",
    "TokenizedTexts",
    "TruncationWarning",
    "build_model",
    "embed",
    "flat_params",
    "l2_normalize",
    "load_model",
    "make_embed_fn",
    "make_hidden_fn",
    "param_shapes",
    "pool",
]
