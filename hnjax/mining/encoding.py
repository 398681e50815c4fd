"""Encoding a corpus (or a query set) for mining: batches, padding to one compiled shape, this process's share.

Data comes in two forms: an array, or a dict of arrays, with a leading dimension N (cut into ``batch_size`` slices,
the last one padded by repeating its final row so a jitted encoder compiles once), or a sequence of ready batches.
Vectors come back to the host batch by batch (device memory is bounded by one batch).

Several processes: each process encodes its contiguous share of the rows (or of the batches), and
:func:`encode_sharded` concatenates the shares on every process (``hnjax.distributed.allgather_rows``), so every
process sees the whole corpus's vectors while doing 1/P of the encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import tqdm

from hnjax import distributed
from hnjax.data import batching


def num_rows(data) -> int | None:
    """N for an array or a dict of arrays with a common leading dimension; ``None`` for a sequence of batches."""
    if isinstance(data, dict):
        sizes = {int(np.shape(v)[0]) for v in data.values()}
        if len(sizes) != 1:
            raise ValueError(f"data: dict values must share the leading dimension N, got sizes {sorted(sizes)}")
        return sizes.pop()
    if hasattr(data, "shape"):
        return int(data.shape[0])
    return None


def count_rows(data) -> int:
    """Rows of ``data`` in either form, without encoding anything (a batch's rows: its first array's leading size)."""
    n = num_rows(data)
    if n is not None:
        return n
    total = 0
    for batch in data:
        leaves = jax.tree.leaves(batch)
        if not leaves:
            raise ValueError("data: a batch holds no arrays")
        total += int(np.shape(leaves[0])[0])
    return total


def _take(data, rows: range):
    """Rows ``rows`` of array data, or batches ``rows`` of a sequence of batches."""
    if num_rows(data) is None:
        return [data[i] for i in rows]
    if isinstance(data, dict):
        return {k: np.asarray(v)[rows.start : rows.stop] for k, v in data.items()}
    return np.asarray(data)[rows.start : rows.stop]


def iter_batches(data, batch_size: int) -> Iterator[tuple[Any, int | None]]:
    """Yields ``(batch, n_real)``: fixed-size slices (the last padded by repeating its first row) or given batches
    (``n_real`` None: all rows are real)."""
    n = num_rows(data)
    if n is None:
        for batch in data:
            yield batch, None
        return
    for take, n_real in batching.padded_batches(n, batch_size):  # the last batch padded: one compiled shape
        if isinstance(data, dict):
            yield {k: np.asarray(v)[take] for k, v in data.items()}, n_real
        else:
            yield np.asarray(data)[take], n_real


def encode(encode_fn: Callable, params, data, *, batch_size: int = 256, desc: str = "encode", progress: bool = True):
    """Encodes ``data`` batch by batch and gathers the vectors on the host.

    Args:
      encode_fn: ``encode_fn(params, batch) -> vectors [b, D]`` or ``(vectors [b, n, D], mask [b, n])``.
      params: the parameters passed to ``encode_fn``.
      data: a sequence of ready batches, or an array / dict of arrays with leading dimension N that is cut into
        ``batch_size`` slices (the last slice is padded to full size so a jitted ``encode_fn`` compiles once).
      batch_size: slice size for array data.
      desc: progress-bar label.
      progress: show a tqdm progress bar.

    Returns:
      float ``[N, D]`` NumPy array, or ``(tokens [N, n, D], mask [N, n])`` for multi-vector encoders.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = num_rows(data)
    total = None if n is None else -(-n // batch_size)
    vecs, masks = [], []
    for batch, n_real in tqdm.tqdm(iter_batches(data, batch_size), total=total, desc=desc, disable=not progress):
        out = encode_fn(params, batch)
        if isinstance(out, tuple | list):
            v, m = (np.asarray(jax.device_get(x)) for x in out)
            masks.append(m[:n_real])
        else:
            v = np.asarray(jax.device_get(out))
        vecs.append(v[:n_real])
    if not vecs:
        raise ValueError(f"{desc}: no data to encode (empty corpus or query set)")
    if masks:
        return np.concatenate(vecs), np.concatenate(masks).astype(bool)
    return np.concatenate(vecs)


def shard(data) -> tuple[Any, range]:
    """This process's share of ``data`` (contiguous rows, or contiguous batches) and the share's range."""
    n = num_rows(data)
    if n is None:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            if jax.process_count() == 1:
                return data, range(0)
            raise ValueError("data: with several processes, give arrays or a list of batches (not an iterator)")
        n = len(data)
    rows = distributed.shard_range(n)
    return (data if jax.process_count() == 1 else _take(data, rows)), rows


def encode_sharded(encode_fn: Callable, params, data, *, batch_size: int = 256, desc: str = "encode",
                   progress: bool = True):  # fmt: skip
    """:func:`encode` of this process's share, concatenated over every process (:func:`encode` with one process).

    Every process must call it at the same point (the shares are all-gathered).
    """
    local, _ = shard(data)
    out = encode(encode_fn, params, local, batch_size=batch_size, desc=desc, progress=progress)
    return distributed.allgather_rows(out) if jax.process_count() > 1 else out
