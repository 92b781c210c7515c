"""Turn on JAX's persistent compilation cache, so a second process reuses compiled programs.

The directory is, in order: the argument, `$BERTA_JAX_CACHE_DIR`, or
`~/.cache/berta_jax/xla`. A directory already configured in JAX (by the user)
is left alone. An unwritable directory gives a warning and no cache, never a
failure: compiling again is slow, not wrong.

JAX keys an entry by a hash of the program, its compile options and the backend, and runs an entry
found under a key as it is: nothing checks that the entry holds that program. An entry written by
someone else under the right key would give wrong rows (or, of another shape, a JaxRuntimeError).
So the cache is trusted like the code: berta-jax creates its directory private (0o700) and uses
none that another user owns or may write (group or others' write bit), warning instead.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

ENV_VAR = "BERTA_JAX_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "berta_jax" / "xla")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path`; returns the directory in use, or None."""
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        return Path(current)
    directory = Path(path) if path is not None else default_cache_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
        info = directory.stat()
    except OSError as e:
        warnings.warn(
            f"compilation cache directory {directory} is not writable ({e.strerror or e}); "
            "continuing without a persistent cache, so each process compiles again. "
            f"Set {ENV_VAR} to a writable directory.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        warnings.warn(
            f"compilation cache directory {directory} is owned by user {info.st_uid} or writable "
            f"by others (mode {info.st_mode & 0o777:o}); JAX runs a cache entry as it finds it, "
            "so such a cache could change the embeddings: continuing without it. Use a directory "
            f"of your own that only you can write (chmod go-w), or set {ENV_VAR}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    # a cache JAX initialised earlier without a directory would stay off
    compilation_cache.reset_cache()
    compilation_cache.set_cache_dir(str(directory))
    # Cache every program: a BERT forward on CPU can compile in under the default 1 s threshold.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
