"""Multi-process runs on JAX's distributed runtime: start-up, each process's share of the work, gathers, logging.

JAX runs one process per host (a TPU v4-32 is four hosts; a GPU node usually runs one process per GPU or per node).
Every process runs the same script; ``jax.distributed.initialize`` connects them through a coordinator (process 0),
after which ``jax.devices()`` lists every device of every process and a mesh over them (``hnjax.parallel.make_mesh``)
spans the whole job, while each process feeds and reads only its own (addressable) devices. Collectives run over
gloo on CPU, NCCL on GPU and ICI/DCN on TPU; nothing here reimplements them.

This module is the thin host-side layer a training script needs on top of that:

* :func:`add_distributed_arguments` / :func:`initialize_from_args`: ``--coordinator-address HOST:PORT
  --num-processes N --process-id I`` (or the ``HNJAX_*`` / ``JAX_COORDINATOR_ADDRESS`` environment variables that
  ``python -m hnjax.launch`` sets), or JAX's own cluster auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes) with
  ``--num-processes auto`` or when a multi-task SLURM / Open MPI job is detected. One process and no flags: nothing
  is started, and the script runs exactly as before.
* :func:`shard_range`: this process's contiguous share of N items (corpus encoding, evaluation);
  :func:`allgather_rows` / :func:`allgather_objects`: concatenate every process's share, in process order, on every
  process (a device all-gather through the runtime, so all processes must call it at the same point);
  :func:`map_shards`: both at once, for "encode these sentences" work split across processes.
* :func:`is_main_process`: files, plots and logs of results are written by process 0 only.
* :class:`ProcessLogFilter` / :func:`configure_logging`: every log line names its process (``[p1/4]``).
* Failure: the coordinator declares a process lost when it misses heartbeats for ``--heartbeat-timeout`` seconds and
  every other process then stops with an error naming it (``The following tasks are unhealthy (stopped sending
  heartbeats): 1``). An uncaught exception in one process ends that process (``os._exit``), after printing its
  traceback, instead of waiting at JAX's shutdown barrier for processes that are themselves waiting for it in a
  collective; its heartbeats stop and the others follow within the heartbeat timeout. A process whose collective
  fails because a peer vanished (gloo: "Connection closed by peer") waits up to the heartbeat timeout for the
  coordinator to name the lost process, then exits. No process hangs on a lost process. (A process that is alive but
  never enters a collective is not lost and hangs the others, jax-ml/jax#38503; none of our loops does that.)

References:
  JAX multi-process guide, https://docs.jax.dev/en/latest/multi_process.html (``jax.distributed.initialize``,
  ``jax.make_array_from_process_local_data``, ``jax.experimental.multihost_utils``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

ENV_NUM_PROCESSES = "HNJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HNJAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # also read by jax.distributed.initialize itself
ENV_HEARTBEAT = "HNJAX_HEARTBEAT_TIMEOUT"
AUTO = "auto"
EXIT_CODE_UNCAUGHT = 1


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process job.

    Attributes:
      coordinator_address: ``HOST:PORT`` of process 0's coordinator (``None``: auto-detected or single process).
      num_processes: number of processes, ``"auto"`` for JAX's cluster auto-detection, or ``None`` (one process unless
        a multi-task SLURM / Open MPI job is detected).
      process_id: this process's index in ``[0, num_processes)``.
      heartbeat_timeout: seconds without heartbeats after which the coordinator declares a process lost and stops the
        job (JAX's default is 100).
      initialization_timeout: seconds to wait for every process to connect.
      shutdown_timeout: seconds a finished process waits at exit for the others to finish.
    """

    coordinator_address: str | None = None
    num_processes: int | str | None = None
    process_id: int | None = None
    heartbeat_timeout: int = 100
    initialization_timeout: int = 300
    shutdown_timeout: int = 600

    def __post_init__(self):
        n = self.num_processes
        if n is not None and n != AUTO and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_processes: expected None, 'auto' or an int >= 1, got {n!r}")
        if isinstance(n, int) and n > 1:
            if self.coordinator_address is None:
                raise ValueError(f"coordinator_address: needed with num_processes={n} (HOST:PORT of process 0)")
            if self.process_id is None or not 0 <= self.process_id < n:
                raise ValueError(f"process_id: expected an int in [0, {n}) with num_processes={n}, "
                                 f"got {self.process_id!r}")  # fmt: skip
        if self.coordinator_address is not None and ":" not in self.coordinator_address:
            raise ValueError(f"coordinator_address: expected HOST:PORT, got {self.coordinator_address!r}")
        for name in ("heartbeat_timeout", "initialization_timeout", "shutdown_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1 seconds, got {getattr(self, name)}")

    @property
    def multi_process(self) -> bool:
        """Whether :func:`initialize` starts the distributed runtime."""
        if self.num_processes == AUTO:
            return True
        if self.num_processes is None:
            return _cluster_detected()
        return self.num_processes > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int, got {value!r}") from None


def _cluster_detected() -> bool:
    """A multi-task job of a scheduler whose variables JAX's auto-detection reads (SLURM ``srun``, Open MPI)."""
    for count, marker in (("SLURM_NTASKS", "SLURM_STEP_ID"), ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")):
        if os.environ.get(marker) is not None and (_env_int(count) or 1) > 1:
            return True
    return False


def _num_processes_arg(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'auto', got {text!r}") from None


def add_distributed_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add ``--coordinator-address --num-processes --process-id --heartbeat-timeout`` to a script's parser.

    Defaults come from ``JAX_COORDINATOR_ADDRESS``, ``HNJAX_NUM_PROCESSES``, ``HNJAX_PROCESS_ID`` and
    ``HNJAX_HEARTBEAT_TIMEOUT`` (set by ``python -m hnjax.launch``), so a launched script needs no extra flags.
    """
    g = parser.add_argument_group("multi-process (JAX distributed runtime)")
    n_env = os.environ.get(ENV_NUM_PROCESSES)
    g.add_argument("--coordinator-address", default=os.environ.get(ENV_COORDINATOR),
                   help="HOST:PORT of process 0's coordinator (default: $JAX_COORDINATOR_ADDRESS)")  # fmt: skip
    g.add_argument(
        "--num-processes",
        type=_num_processes_arg,
        default=_num_processes_arg(n_env) if n_env else None,
        help="processes in the job; 'auto': JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI); "
        "default $HNJAX_NUM_PROCESSES, else one process (or auto under a multi-task srun / mpirun)",
    )
    g.add_argument("--process-id", type=int, default=_env_int(ENV_PROCESS_ID),
                   help="this process's index (default: $HNJAX_PROCESS_ID)")  # fmt: skip
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=_env_int(ENV_HEARTBEAT) or 100,
        help="seconds without heartbeats before a process counts as lost and the job stops (default 100)",
    )
    return g


def config_from_args(args: argparse.Namespace) -> DistributedConfig:
    """A validated :class:`DistributedConfig` from the flags of :func:`add_distributed_arguments`."""
    return DistributedConfig(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        heartbeat_timeout=args.heartbeat_timeout,
    )


def initialize(config: DistributedConfig) -> None:
    """Join the multi-process job described by ``config`` (call before any other JAX computation).

    A single-process config starts nothing. Otherwise this calls ``jax.distributed.initialize`` (explicit settings,
    or JAX's auto-detection for the ones left unset), logs ``process i of n``, and installs an exception hook that
    ends this process at once on an uncaught exception (see the module docstring).

    Raises:
      ValueError: inconsistent settings (naming the flag).
    """
    if not config.multi_process:
        return
    kwargs: dict[str, Any] = dict(
        heartbeat_timeout_seconds=config.heartbeat_timeout,
        initialization_timeout=config.initialization_timeout,
        shutdown_timeout_seconds=config.shutdown_timeout,
    )
    if isinstance(config.num_processes, int):
        kwargs.update(num_processes=config.num_processes, process_id=config.process_id)
    if config.coordinator_address is not None:
        kwargs["coordinator_address"] = config.coordinator_address
    jax.distributed.initialize(**kwargs)
    sys.excepthook = functools.partial(_exit_on_uncaught, wait_s=config.heartbeat_timeout + 10)
    logger.info(
        "distributed JAX: process %d of %d, %d local of %d devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip


def initialize_from_args(args: argparse.Namespace) -> DistributedConfig:
    """:func:`initialize` from parsed flags; returns the config."""
    config = config_from_args(args)
    initialize(config)
    return config


def _exit_on_uncaught(exc_type, exc, tb, *, wait_s: float) -> None:
    """Print the traceback, naming the process, and leave without JAX's shutdown barrier (see module docstring).

    A failed collective (``JaxRuntimeError``, e.g. gloo's "Connection closed by peer") usually means that another
    process was lost; its error does not say which. This process then waits up to ``wait_s`` seconds (the heartbeat
    timeout and a margin) so that the coordinator can report the lost process by its index (JAX then ends this process
    with that message) before it exits.
    """
    sys.stderr.write(f"process {jax.process_index()} of {jax.process_count()} failed:\n")
    traceback.print_exception(exc_type, exc, tb)
    if issubclass(exc_type, jax.errors.JaxRuntimeError):
        sys.stderr.write(f"waiting up to {wait_s:.0f} s for the distributed runtime to name a lost process\n")
        sys.stderr.flush()
        time.sleep(wait_s)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODE_UNCAUGHT)


# ----------------------------------------------------------------------------------------------------------------
# This process's share, and gathers.
# ----------------------------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """True on process 0 (the one that writes results, plots and metrics files)."""
    return jax.process_index() == 0


def shard_range(n: int, index: int | None = None, count: int | None = None) -> range:
    """This process's contiguous share of ``range(n)``: ``[⌊n·i/P⌋, ⌊n·(i+1)/P⌋)``.

    Shares differ in size by at most one item and are in process order, so concatenating them gives ``range(n)``.

    Args:
      n: number of items.
      index, count: process index and count (default: this process of the current job).

    Example:
      >>> [list(shard_range(5, i, 2)) for i in range(2)]
      [[0, 1], [2, 3, 4]]
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"index: expected a value in [0, {count}), got {index}")
    return range(n * index // count, n * (index + 1) // count)


def allgather_rows(tree: Any) -> Any:
    """Concatenate every process's rows, in process order, on every process (identity with one process).

    Args:
      tree: pytree of NumPy arrays sharing a leading axis (this process's rows; the count may differ between
        processes, the trailing shapes and dtypes may not).

    Returns:
      The same pytree with every process's rows concatenated along axis 0 (NumPy).
    """
    leaves, treedef = jax.tree.flatten(tree)
    leaves = [np.asarray(x) for x in leaves]
    if jax.process_count() == 1:
        return jax.tree.unflatten(treedef, leaves)
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"allgather_rows: the arrays must share their leading axis, got sizes {sorted(sizes)}")
    (n,) = sizes
    counts = np.asarray(multihost_utils.process_allgather(np.int64(n)))  # [P]
    width = int(counts.max())
    out = []
    for x in leaves:
        padded = np.zeros((width,) + x.shape[1:], x.dtype)
        padded[:n] = x
        stacked = np.asarray(multihost_utils.process_allgather(padded))  # [P, width, ...]
        out.append(np.concatenate([stacked[p, : counts[p]] for p in range(len(counts))]))
    return jax.tree.unflatten(treedef, out)


def map_shards(fn: Callable[[Sequence], Any], items: Sequence) -> Any:
    """``fn(items)`` with the work shared across processes: each process calls ``fn`` on its share of ``items``
    (:func:`shard_range`) and the rows of the results are concatenated on every process (:func:`allgather_rows`).

    ``fn`` maps a sequence of n items to a pytree of arrays with n rows (e.g. sentences to embeddings ``[n, D]``). A
    process with an empty share calls it on one item and keeps no row, so every process knows the trailing shapes.
    With one process this is ``fn(items)``.
    """
    if jax.process_count() == 1:
        return fn(items)
    own = shard_range(len(items))
    local = fn(items[own.start : own.stop] if len(own) else items[:1])
    return allgather_rows(jax.tree.map(lambda x: np.asarray(x)[: len(own)], local))


def allgather_objects(obj: Any) -> list[Any]:
    """Every process's picklable ``obj``, as a list in process order, on every process (``[obj]`` with one)."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    counts = np.asarray(multihost_utils.process_allgather(np.int64(data.size)))
    width = 1 << max(int(counts.max()) - 1, 1023).bit_length()  # a power of two: few distinct compiled shapes
    padded = np.zeros((width,), np.uint8)
    padded[: data.size] = data
    stacked = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(stacked[p, : counts[p]].tobytes()) for p in range(len(counts))]  # noqa: S301 (our peers)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------------------------
# Logging.
# ----------------------------------------------------------------------------------------------------------------


class ProcessLogFilter(logging.Filter):
    """Adds ``record.jax_process``, e.g. ``"p1/4"`` (``"p0/1"`` in a single-process run), to every record.

    The label is fixed when the filter is made: asking JAX for the process index inside a log call would start the
    backend there, and the backend logs while it starts, which would re-enter the filter and wait on itself.
    """

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.jax_process = self.label
        return True


LOG_FORMAT = "%(asctime)s [%(jax_process)s] %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Root logging for a script: ``LOG_FORMAT``, naming the process on every line.

    Call it after :func:`initialize` (before it, the process index is not known yet and reads 0) and after any
    ``XLA_FLAGS`` set-up (it starts the JAX backend).
    """
    label = f"p{jax.process_index()}/{jax.process_count()}"  # starts the backend now, before our handler is in place
    handler = logging.StreamHandler()
    handler.addFilter(ProcessLogFilter(label))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call, or a plain basicConfig handler; not pytest's
        if getattr(old, "_hnjax", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    handler._hnjax = True  # replaced, not duplicated, when a script's main() runs twice in one interpreter
    root.addHandler(handler)
    root.setLevel(level)
