"""Fixed-size batches on the host: one compiled shape for every batch, the last one padded.

A jitted function compiles once per input shape, so every loop that feeds one (encoding a corpus, scoring queries
in blocks, sampling negatives in chunks, splitting a batch over devices) cuts its rows into batches of one size and
pads the last, shorter batch with copies of a real row; the outputs of the copies are dropped. The row indices of
those batches come from here.

Example:
  >>> [(idx.tolist(), n) for idx, n in padded_batches(5, 2)]
  [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def padded_index(n: int, size: int) -> np.ndarray:
    """Row indices ``0 .. n-1`` followed by ``size - n`` copies of row 0: ``n`` rows padded to ``size``.

    Args:
      n: real rows, 1 <= n <= size.
      size: rows wanted.

    Returns:
      [size] int64.

    Example:
      >>> padded_index(2, 4).tolist()
      [0, 1, 0, 0]
    """
    if not 1 <= n <= size:
        raise ValueError(f"n: expected 1 <= n <= size = {size}, got {n}")
    index = np.arange(size, dtype=np.int64)
    index[n:] = 0
    return index


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Consecutive batches of rows ``0 .. n-1``, each exactly ``batch_size`` rows, the last padded with its first row.

    Args:
      n: rows to cover, n >= 0 (no batch when 0).
      batch_size: rows per batch, >= 1.

    Yields:
      ``(index [batch_size] int64, n_real)``: the rows of the batch (take ``x[index]``) and how many of them are real
      (keep ``out[:n_real]``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        n_real = min(batch_size, n - start)
        yield start + padded_index(n_real, batch_size), n_real
