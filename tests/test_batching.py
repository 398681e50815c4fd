"""hnjax.data.batching: fixed-size batches whose last one is padded with a real row."""

import numpy as np
import pytest

from hnjax.data import batching


@pytest.mark.parametrize("n,size", [(1, 1), (3, 3), (1, 4), (5, 8)])
def test_padded_index(n, size):
    index = batching.padded_index(n, size)
    assert index.dtype == np.int64 and index.shape == (size,)
    assert index[:n].tolist() == list(range(n)) and set(index[n:].tolist()) <= {0}


def test_padded_index_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n: expected 1 <= n <= size"):
        batching.padded_index(0, 4)
    with pytest.raises(ValueError, match="n: expected 1 <= n <= size"):
        batching.padded_index(5, 4)


@pytest.mark.parametrize("n,batch_size", [(0, 3), (1, 3), (6, 3), (7, 3), (10, 4), (4, 10)])
def test_padded_batches_cover_every_row_once_with_one_shape(n, batch_size):
    batches = list(batching.padded_batches(n, batch_size))
    assert len(batches) == -(-n // batch_size)
    assert all(index.shape == (batch_size,) for index, _ in batches)
    real = [index[:n_real] for index, n_real in batches]
    assert (np.concatenate(real).tolist() if real else []) == list(range(n))
    for index, n_real in batches:  # padding repeats the batch's first (real) row
        assert set(index[n_real:].tolist()) <= {index[0]}
    with pytest.raises(ValueError, match="batch_size"):
        list(batching.padded_batches(3, 0))
