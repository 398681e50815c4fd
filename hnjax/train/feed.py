"""Feeding the compiled step: the data order, the mining protocol, and this process's rows of each global batch.

Update ``t`` of a run takes the ``t``-th slice of ``A * B`` examples of epoch ``e``'s permutation
``numpy.random.default_rng([seed, e]).permutation(N)`` (:class:`DataOrder`). Every process draws the same order; the
global batch is padded to ``R = padded_size(B, devices) * A`` rows (the last, shorter batch of an epoch included, so
shapes never change) and split across the devices of the mesh in contiguous blocks, so each process owns one
contiguous block of rows ``[r0, r1)`` (:meth:`hnjax.parallel.DataParallel.local_rows`). :class:`BatchFeeder` builds
only those rows: it asks the miner for their candidates, calls the experiment's ``batch_fn`` on them, pads them with
``valid = False`` rows and places them on this process's devices. A process whose block holds no real example (the
padding of a short last batch) builds one template row and marks every row invalid.

``batch_fn`` may return arrays whose trailing shapes depend on the rows (e.g. token ids padded to the longest
sentence's bucket). Across processes the trailing shapes must agree, so with several processes the feeder pads every
array with zeros to the largest trailing shape over the processes (token id 0 and mask ``False``: padding); with one
process this is the batch-wide maximum already, so both give the same compiled shapes and the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np
from jax.experimental import multihost_utils

from hnjax import parallel
from hnjax.train import metrics as metrics_lib


@runtime_checkable
class MinerLike(Protocol):
    """What the training loop asks of a hard-negative miner (``hnjax.mining.Miner`` implements it).

    ``params`` given to ``maybe_refresh`` are valid only during the call (the next step donates their buffers): an
    asynchronous miner copies them before returning. Exact resume requires a synchronous miner (or one whose refreshes
    land at deterministic steps). In a multi-process run every process calls these methods at the same points with
    the same arguments, except ``candidates``, which each process calls for its own rows.
    """

    def maybe_refresh(self, params: Any, *, step: int, epoch: int) -> bool:
        """Refresh the negatives (synchronously or in a background thread) if the schedule says so."""

    def wait(self) -> None:
        """Block until a background refresh has finished."""

    def candidates(self, query_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Negative ids ``[b, K-1]`` (and log q ``[b, K-1]`` or ``None``) of the given queries."""

    def state_dict(self) -> dict:
        """Mining state for a checkpoint: NumPy arrays and JSON values."""

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""


class DataOrder:
    """Deterministic, resumable order of examples: one seeded permutation per epoch, sliced into updates.

    Args:
      num_examples: ``N``.
      per_step: examples per update (``A * B``).
      seed: data-order seed.

    Example:
      >>> order = DataOrder(10, 4, seed=0)
      >>> order.steps_per_epoch, order.position(5)
      (3, (1, 2))
      >>> len(order.indices(2))
      2
    """

    def __init__(self, num_examples: int, per_step: int, seed: int):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        self.num_examples, self.per_step, self.seed = num_examples, per_step, seed
        self.steps_per_epoch = math.ceil(num_examples / per_step)
        self._epoch, self._perm = -1, None

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, index of the batch within the epoch)`` of update ``step``."""
        return divmod(step, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """Example indices of update ``step`` (``per_step`` of them, fewer at the end of an epoch)."""
        epoch, index = self.position(step)
        return self.permutation(epoch)[index * self.per_step : (index + 1) * self.per_step]


def check_host_batch(batch: Any, rows: int, full_rows: int | None = None) -> dict[str, np.ndarray]:
    """``batch_fn``'s output as a dict of NumPy arrays with ``rows`` rows, or ``full_rows`` (a batch the experiment
    padded itself, with its own ``valid`` mask, e.g. packed rows); ``ValueError`` naming the key if not."""
    if not isinstance(batch, dict):
        raise ValueError(f"batch_fn must return a dict of arrays, got {type(batch).__name__}")
    out = {k: np.asarray(v) for k, v in batch.items()}
    leading = {v.shape[0] if v.ndim else None for v in out.values()}
    allowed = {rows} if full_rows is None else {rows, full_rows}
    if len(leading) != 1 or not leading <= allowed:
        shapes = {k: v.shape for k, v in out.items()}
        raise ValueError(
            f"batch_fn returned shapes {shapes}; expected one leading axis of "
            f"{' or '.join(map(str, sorted(allowed)))} rows"
        )
    if leading != {rows} and parallel.VALID_KEY not in out:
        raise ValueError(
            f"batch_fn returned {full_rows} rows for {rows} examples without a {parallel.VALID_KEY!r} mask"
        )
    return out


def agree_trailing_shapes(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zero-pad every array to the largest trailing shape over all processes (identity with one process).

    One small all-gather of the shapes per call; the keys and ranks must be the same on every process.
    """
    if jax.process_count() == 1:
        return batch
    keys = sorted(batch)
    rank = max(batch[k].ndim for k in keys)
    shapes = np.full((len(keys), rank + 1), -1, np.int64)  # [keys, 1 + rank]: ndim, then the trailing sizes
    for i, k in enumerate(keys):
        shapes[i, 0] = batch[k].ndim
        shapes[i, 1 : batch[k].ndim] = batch[k].shape[1:]
    everyone = np.asarray(multihost_utils.process_allgather(shapes))  # [P, keys, 1 + rank]
    if (everyone[:, :, 0] != shapes[None, :, 0]).any():
        raise ValueError(f"batch_fn returned arrays of different ranks on different processes (keys {keys})")
    largest = everyone.max(axis=0)
    out = {}
    for i, k in enumerate(keys):
        x = batch[k]
        pad = [(0, 0)] + [(0, int(largest[i, 1 + a]) - x.shape[1 + a]) for a in range(x.ndim - 1)]
        out[k] = np.pad(x, pad) if any(p[1] for p in pad) else x
    return out


class BatchFeeder:
    """Builds the placed batch of an update for this process: candidates → ``batch_fn`` → pad → devices.

    Args:
      order: the run's :class:`DataOrder`.
      batch_fn: ``batch_fn(indices [b], candidates) -> dict of arrays [b, ...]`` (host NumPy).
      dp: the run's :class:`hnjax.parallel.DataParallel`.
      global_rows: ``R``, rows of the padded global batch.
      miner: a :class:`MinerLike` or ``None``.
      timer: the run's :class:`hnjax.train.metrics.TimeSplit` (``mining`` and ``data`` phases).
    """

    def __init__(
        self,
        order: DataOrder,
        batch_fn: Callable[[np.ndarray, tuple | None], dict],
        dp: parallel.DataParallel,
        global_rows: int,
        miner: MinerLike | None,
        timer: metrics_lib.TimeSplit,
    ):
        if global_rows < order.per_step:
            raise ValueError(f"global_rows={global_rows} is below the {order.per_step} examples of an update")
        self.order, self.batch_fn, self.dp, self.miner, self.timer = order, batch_fn, dp, miner, timer
        self.global_rows = global_rows
        self.rows = dp.local_rows(global_rows)  # this process's block [r0, r1) of the global batch

    def local_indices(self, step: int) -> tuple[np.ndarray, int]:
        """This process's real example indices of update ``step`` and how many padding rows follow them.

        A block without any real example gets one template index (the update's first example, marked invalid).
        """
        indices = self.order.indices(step)
        start, stop = self.rows.start, self.rows.stop
        local = indices[min(start, len(indices)) : min(stop, len(indices))]
        return local, (stop - start) - len(local)

    def __call__(self, step: int, params: Any) -> Any:
        """The placed batch of update ``step``; ``params`` (placed) are given to the miner's ``maybe_refresh``."""
        epoch, _ = self.order.position(step)
        local, n_pad = self.local_indices(step)
        n_real = len(local)
        indices = local if n_real else self.order.indices(step)[:1]
        candidates = None
        if self.miner is not None:
            with self.timer.phase("mining"):
                self.miner.maybe_refresh(self.dp.unreplicate(params), step=step, epoch=epoch)
                candidates = self.miner.candidates(indices)
        with self.timer.phase("data"):
            full = self.rows.stop - self.rows.start
            host = check_host_batch(self.batch_fn(indices, candidates), len(indices), full)
            if not n_real:
                host[parallel.VALID_KEY] = np.zeros((1,), bool)
            host = parallel.pad_batch(host, self.rows.stop - self.rows.start)
            host = agree_trailing_shapes(host)
            return self.dp.put_local_batch(host, self.global_rows)


LAYOUTS = ("packed", "padded")


def choose_layout(requested: str | None, *, grad_cache: bool = False) -> str:
    """The batch layout of a training script: ``requested``, or by default ``"packed"`` where the feed supports it.

    Packed rows are built for the whole batch on one process: with several processes the feeder pads each process's
    block of rows with ``valid = False`` rows, which a packed stream cannot take, and GradCache chunks padded rows.
    Both therefore default to ``"padded"`` and refuse an explicit ``"packed"``.

    Raises:
      ValueError: ``"packed"`` requested with several processes or with GradCache, or an unknown layout.
    """
    if requested is not None and requested not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {requested!r}")
    reasons = [why for why, applies in (("GradCache chunks padded rows", grad_cache),
                                        (f"{jax.process_count()} processes feed padded blocks of rows",
                                         jax.process_count() > 1)) if applies]  # fmt: skip
    if requested == "packed" and reasons:
        raise ValueError(f"layout: 'packed' is not available here ({'; '.join(reasons)}); use 'padded'")
    return requested or ("padded" if reasons else "packed")
