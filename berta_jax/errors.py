"""The exceptions berta-jax raises on purpose.

Each one carries a message that names the file, key, field, line or index at fault and says what to
do; callers catch the family through `BertaJaxError`.
"""


class BertaJaxError(Exception):
    """Base class of every error berta-jax raises on purpose."""


class ConfigError(BertaJaxError, ValueError):
    """A config file is missing, malformed, or asks for something not implemented."""


class CheckpointError(BertaJaxError, ValueError):
    """A weights file is missing, corrupt, or does not match the model config."""


class ModelNotFoundError(BertaJaxError, FileNotFoundError):
    """Neither a local folder nor a reachable (or cached) hub repository."""


class StorageError(BertaJaxError, OSError):
    """A local path or storage URL cannot be read or written (missing package, bucket,
    credentials...)."""


class InputError(BertaJaxError, ValueError):
    """A corpus file or row that cannot be read: names the file, the line (or row, or byte) and the
    problem."""


class JobError(BertaJaxError, RuntimeError):
    """The batch job cannot start or continue (existing output, changed inputs, a held lock...)."""


class NonFiniteError(BertaJaxError, FloatingPointError):
    """The model produced NaN or Inf for some texts (finite but extreme weights overflow float32).

    `indices` are the positions of those texts in the call, so a caller can name its own rows."""

    def __init__(self, message: str, indices: list[int]):
        super().__init__(message)
        self.indices = indices


class TruncationWarning(UserWarning):
    """Some texts were longer than the context and were cut to max_seq_length tokens."""


class TrainError(BertaJaxError, RuntimeError):
    """A training run cannot start or continue (a held output folder, a changed config on resume,
    a loss that became NaN...): names the key, file, step or checkpoint at fault."""
