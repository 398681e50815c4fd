"""Data parallelism: device meshes, the two data-parallel step wrappers, padding of batches to the device count.

One pure per-device step function ``step(state, batch) -> (state, metrics)``, written with ``axis_name="data"``
collectives (``lax.pmean`` of gradients, :func:`hnjax.losses.gather_columns` of in-batch negatives), runs three ways
with the same numbers:

* ``"none"``: ``jax.jit(step, donate_argnums=0)`` on one device (the step is built with ``axis_name=None``);
* ``"shard_map"``: ``jax.jit(jax.shard_map(step, mesh, in_specs=(P(), P("data")), out_specs=P()))`` over a
  :func:`make_mesh` mesh: the state is replicated, the batch is split along its leading axis. This is the current
  JAX recommendation and the path to several hosts (:func:`initialize_distributed` first);
* ``"pmap"``: ``jax.pmap(step, axis_name="data")`` with the state replicated along a leading device axis and the batch
  reshaped to ``[n_devices, B / n_devices, ...]``.

Both parallel paths use the classic SPMD differentiation rule (``shard_map(..., check_vma=False)``, which is what
``pmap`` does): the gradient of a per-device loss is taken with respect to that device's copy of the parameters, and
``lax.pmean`` over ``"data"`` then gives the gradient of the global-batch loss, whether each device returns the global
mean loss (e.g. after gathering negatives, or ``psum(weighted sum) / psum(weight)``) or its local mean over an equal
share of the batch. ``tests/test_parallel.py`` checks loss, gradients and updated parameters against the single-device
step on the global batch on 8 host devices.

Batches whose size does not divide the device count are padded (:func:`pad_batch`) with a boolean ``valid`` mask;
losses weight examples by it, so padding never changes the loss or the gradient, and no example is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hnjax.data import batching

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
MODES = ("none", "pmap", "shard_map")
VALID_KEY = "valid"


def make_mesh(n_devices: int | None = None, *, axis_name: str = DATA_AXIS) -> jax.sharding.Mesh:
    """A one-dimensional device mesh with a data axis.

    Args:
      n_devices: number of devices, the first ``n_devices`` of ``jax.devices()``; ``None`` for all of them (every
        device of every process after :func:`initialize_distributed`).
      axis_name: name of the mesh axis.

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(n_devices,)``.

    Example:
      >>> mesh = make_mesh(1)
      >>> mesh.shape["data"]
      1
    """
    available = jax.device_count()
    n = available if n_devices is None else n_devices
    if not 1 <= n <= available:
        raise ValueError(f"n_devices: expected between 1 and the {available} available devices, got {n_devices}")
    return jax.make_mesh((n,), (axis_name,), devices=jax.devices()[:n])


def initialize_distributed(**kwargs: Any) -> None:
    """Start multi-host JAX (one call per process, before any other JAX call).

    A thin pass-through to ``jax.distributed.initialize(**kwargs)`` (coordinator address, process count and id, or
    auto-detection on managed clusters). Afterwards ``make_mesh()`` spans every device of every process and the
    ``"shard_map"`` mode runs unchanged; each process then feeds its own rows of the global batch.
    """
    jax.distributed.initialize(**kwargs)
    logger.info("distributed JAX: process %d of %d", jax.process_index(), jax.process_count())


def pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pad a host batch to ``size`` rows and add (or extend) its boolean ``valid`` mask.

    Padding rows repeat the first row (so that no loss meets all-zero inputs, e.g. a zero vector to normalise) and are
    marked ``valid = False``; losses weight by the mask, so the padded batch gives the loss and gradient of the
    unpadded one.

    Args:
      batch: dict of arrays with a common leading axis ``B <= size``; an existing ``"valid"`` entry ``[B]`` is kept.
      size: rows wanted.

    Returns:
      A new dict of arrays with leading axis ``size`` and ``"valid"`` ``[size]`` bool.
    """
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in batch.items()}
    rows = {s for s in sizes.values()}
    if len(rows) != 1 or None in rows:
        raise ValueError(f"batch arrays must share one leading axis, got leading sizes {sizes}")
    (b,) = rows
    if b == 0:
        raise ValueError("batch has no rows")
    if b > size:
        raise ValueError(f"size: expected at least the batch size {b}, got {size}")
    out = {k: np.asarray(v) for k, v in batch.items()}
    valid = np.asarray(out.pop(VALID_KEY, np.ones((b,), bool)), bool)
    if valid.shape != (b,):
        raise ValueError(f"batch['valid']: expected shape ({b},), got {valid.shape}")
    if size > b:
        index = batching.padded_index(b, size)
        out = {k: v[index] for k, v in out.items()}
        valid = valid[index] & (np.arange(size) < b)
    out[VALID_KEY] = valid
    return out


def padded_size(batch_size: int, n_devices: int) -> int:
    """Smallest multiple of ``n_devices`` that is at least ``batch_size``."""
    return -(-batch_size // n_devices) * n_devices


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a step runs over devices: ``mode`` is ``"none"``, ``"pmap"`` or ``"shard_map"``.

    The object places states and batches on the devices, compiles the per-device step, and brings results back, so a
    training loop is written once for all three modes.

    Attributes:
      mode: one of ``MODES``.
      n_devices: devices used (1 for ``"none"``); ``None`` means every device.

    Example:
      >>> dp = DataParallel("shard_map", 1)
      >>> dp.axis_name
      'data'
    """

    mode: str = "none"
    n_devices: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        available = jax.device_count() if self.mode == "shard_map" else jax.local_device_count()
        n = 1 if self.mode == "none" and self.n_devices is None else self.n_devices
        n = available if n is None else n
        if self.mode == "none" and n != 1:
            raise ValueError(f"n_devices: expected 1 when mode='none', got {n}; use mode 'pmap' or 'shard_map'")
        if not 1 <= n <= available:
            raise ValueError(f"n_devices: expected between 1 and the {available} available devices, got {n}")
        object.__setattr__(self, "n_devices", n)

    @property
    def axis_name(self) -> str | None:
        """The collective axis name the per-device step must be built with (``None`` on one device)."""
        return None if self.mode == "none" else DATA_AXIS

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return make_mesh(self.n_devices)

    @property
    def devices(self) -> Sequence[jax.Device]:
        return jax.local_devices()[: self.n_devices] if self.mode == "pmap" else jax.devices()[: self.n_devices]

    def compile(self, step: Callable, *, donate: bool = True) -> Callable:
        """Compile a per-device step ``(state, batch) -> (state, metrics)`` for this mode.

        Args:
          step: pure step built with ``axis_name=self.axis_name``.
          donate: donate the input state's buffers (the caller must not reuse the state it passed).

        Returns:
          A function of (placed state, placed batch) returning (placed state, metrics); in ``"pmap"`` mode the metrics
          carry a leading device axis (use :meth:`metrics_to_host`).
        """
        donate_argnums = (0,) if donate else ()
        if self.mode == "none":
            return jax.jit(step, donate_argnums=donate_argnums)
        if self.mode == "pmap":
            return jax.pmap(step, axis_name=DATA_AXIS, devices=self.devices, donate_argnums=donate_argnums)
        mapped = jax.shard_map(
            step, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()), check_vma=False
        )
        return jax.jit(mapped, donate_argnums=donate_argnums)

    def put_state(self, state: Any) -> Any:
        """Place a host (or single-device) state: replicated over the devices."""
        if self.mode == "none":
            return jax.device_put(state, self.devices[0])
        if self.mode == "pmap":
            # Host copies stacked along a leading device axis; the first pmap call transfers them once and its outputs
            # stay on the devices (``device_put_replicated`` is deprecated).
            host = jax.device_get(state)
            return jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.n_devices), host)
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def put_batch(self, batch: Any) -> Any:
        """Place a host batch whose leading axis divides ``n_devices`` (see :func:`pad_batch`)."""
        n = self.n_devices
        for leaf in jax.tree.leaves(batch):
            if np.shape(leaf)[0] % n:
                raise ValueError(f"batch leading axis {np.shape(leaf)[0]} is not divisible by n_devices={n}; pad it")
        if self.mode == "none":
            return jax.device_put(batch, self.devices[0])
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.reshape(x, (n, x.shape[0] // n) + x.shape[1:]), batch)
        return jax.device_put(batch, NamedSharding(self.mesh, P(DATA_AXIS)))

    def unreplicate(self, tree: Any) -> Any:
        """One device's copy of a replicated placed value (still on device; dispatch stays asynchronous)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
        return tree

    def state_to_host(self, state: Any) -> Any:
        """A NumPy copy of a placed state (blocks until it is computed)."""
        return jax.device_get(self.unreplicate(state))

    def metrics_to_host(self, metrics: Any) -> Any:
        """Python floats of a step's metrics (blocks until they are computed)."""
        return jax.tree.map(lambda x: float(np.asarray(x)), jax.device_get(self.unreplicate(metrics)))
