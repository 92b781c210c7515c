"""Stored precisions: a value float16 cannot hold is refused, naming its rows, never stored as inf."""

from __future__ import annotations

import io

import numpy as np
import pytest

from berta_jax import JobError
from berta_jax.data.outputs import ChunkRows, per_row, write_single_file


def test_float16_refuses_values_beyond_its_range_naming_the_rows():
    vectors = np.array([[0.5, -0.25], [1e5, 0.0], [0.1, -7e4]], np.float32)
    with pytest.raises(JobError, match=r"rows \[11, 12\] have embedding values beyond float16's range \(largest "
                                       r"\|value\| 1e\+05 > 65504\).*--precision float32"):
        per_row(vectors, "float16", np.array([10, 11, 12]))
    stored = per_row(vectors[:1], "float16")
    assert stored.dtype == np.float16 and np.isfinite(stored).all() and stored.tolist() == [[0.5, -0.25]]


def test_a_single_file_output_names_the_output_row_of_an_overflowing_value():
    chunks = [ChunkRows(0, np.zeros((3, 2), np.float32), [None] * 3),
              ChunkRows(3, np.array([[0.0, 0.0], [0.0, 9e4]], np.float32), [None] * 2)]
    with pytest.raises(JobError, match=r"rows \[4\]"):
        write_single_file(io.BytesIO(), "npy", lambda: iter(chunks), 5, 2, "float16", "out.npy")
    plain = io.BytesIO()
    write_single_file(plain, "npy", lambda: iter(chunks), 5, 2, "float32", "out.npy")
    assert np.load(io.BytesIO(plain.getvalue()))[4, 1] == np.float32(9e4)
