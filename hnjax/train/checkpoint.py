"""orbax checkpoints with exact resume: train state, host state (data position, best metric) and mining state.

A checkpoint at update ``s`` holds everything the run needs to continue as if it had never stopped:

* ``state``: the :class:`~hnjax.train.state.TrainState` (params, optimizer state, step, RNG key) as a PyTree of
  NumPy arrays (saved from one device's copy; restored into the same structure, then placed on the devices);
* ``host``: JSON with the data-order position (epoch, batch index within the epoch), the best evaluation value,
  the non-array part of the miner's ``state_dict()`` and user ``extra`` values;
* ``miner``: the NumPy arrays of the miner's ``state_dict()`` (candidate tables, its RNG state), if any.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a process killed while saving
leaves the previous checkpoints intact. The latest ``keep`` checkpoints are kept under ``out/checkpoints``; the best
one by an evaluation metric under ``out/best``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


def _split_state_dict(state: dict) -> tuple[dict, dict]:
    """Separate NumPy arrays (saved by orbax) from JSON values (ints, floats, strings, lists)."""
    if not isinstance(state, dict):
        raise ValueError(f"miner.state_dict() must return a dict, got {type(state).__name__}")
    arrays, plain = {}, {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise ValueError(f"miner.state_dict() keys: expected strings, got {k!r}")
        if isinstance(v, np.ndarray | jax.Array):
            arrays[k] = np.asarray(v)
        elif isinstance(v, np.generic):
            plain[k] = v.item()
        else:
            plain[k] = v
    return arrays, plain


class Checkpointer:
    """Save and restore training checkpoints in a directory (a thin layer over ``ocp.CheckpointManager``).

    Args:
      directory: where the numbered checkpoints live.
      keep: number of checkpoints kept (oldest deleted first).
    """

    def __init__(self, directory: str, *, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep: expected >= 1, got {keep}")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, train_state: Any, *, host: dict, miner_state: dict | None = None) -> None:
        """Write checkpoint ``step``.

        Args:
          step: update count of ``train_state``.
          train_state: host (NumPy) copy of the state.
          host: JSON-serialisable dict (data position, best value, ...).
          miner_state: the miner's ``state_dict()`` or ``None``.
        """
        arrays, plain = _split_state_dict(miner_state or {})
        host = dict(host)
        host["miner"] = None if miner_state is None else plain
        host["miner_arrays"] = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items()}
        stored = {k: v for k, v in arrays.items() if v.size}  # empty arrays are rebuilt from their shape and dtype
        items = {"state": ocp.args.StandardSave(train_state), "host": ocp.args.JsonSave(host)}
        if stored:
            items["miner"] = ocp.args.StandardSave(stored)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, target_state: Any) -> tuple[Any, dict, dict | None]:
        """Read checkpoint ``step``.

        Args:
          step: a step listed by :meth:`all_steps`.
          target_state: a host state with the structure, shapes and dtypes to restore into.

        Returns:
          ``(train_state, host, miner_state)`` with NumPy leaves; ``miner_state`` is ``None`` if none was saved.
        """
        host = self._manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
        items = {"state": ocp.args.StandardRestore(jax.device_get(target_state))}
        specs = host.pop("miner_arrays", {})
        arrays = {k: np.zeros(shape, np.dtype(dtype)) for k, (shape, dtype) in specs.items()}
        template = {k: v for k, v in arrays.items() if v.size}
        if template:
            items["miner"] = ocp.args.StandardRestore(template)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        miner_plain = host.pop("miner", None)
        miner_state = None
        if miner_plain is not None:
            miner_state = dict(miner_plain)
            miner_state.update(arrays)
            if template:
                miner_state.update({k: np.asarray(v) for k, v in restored["miner"].items()})
        state = jax.tree.map(np.asarray, restored["state"])
        return state, host, miner_state

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
