"""The training loop: data order, mining hooks, prefetch, checkpoints with exact resume, metrics, NaN guard.

``fit`` runs the compiled step of :mod:`hnjax.train.step` for ``config.max_steps`` updates. Per update ``t``:

1. the step for update ``t`` is dispatched (JAX runs it asynchronously);
2. the metrics of update ``t - 1`` are fetched and logged (they are ready: update ``t`` started after them);
3. at a checkpoint boundary, the miner is waited for and a checkpoint is written; at an evaluation boundary the
   evaluation callback runs;
4. the batch of update ``t + 1`` is prepared while update ``t`` runs on the devices: the miner may refresh
   (``miner.maybe_refresh(params, step=t + 1, epoch=...)``), candidates are looked up for the batch's examples,
   ``batch_fn`` builds the host arrays, which are padded (``valid`` mask) and transferred.

Mining protocol (implemented by ``hnjax.mining.Miner``)::

    miner.maybe_refresh(params, *, step, epoch) -> bool     # refresh (sync or in a background thread) if due
    miner.wait()                                            # block until a background refresh has finished
    miner.candidates(query_indices) -> (ids [b, K-1], log_q [b, K-1] or None)
    miner.state_dict() -> dict of NumPy arrays / JSON values
    miner.load_state_dict(state)

``params`` given to ``maybe_refresh`` are valid only during the call (the next step donates their buffers): an
asynchronous miner copies them before returning. Exact resume requires a synchronous miner (or one whose refreshes
land at deterministic steps).

Data order: epoch ``e`` visits the examples in ``numpy.random.default_rng([seed, e]).permutation(N)``; update ``t``
takes the ``t``-th slice of ``A * B`` examples of that order (the last slice of an epoch may be shorter and is padded
with ``valid = False`` rows, never dropped). The position ``(epoch, index)`` is saved in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
import tqdm

from hnjax import parallel
from hnjax.train import checkpoint as checkpoint_lib
from hnjax.train import config as config_lib
from hnjax.train import metrics as metrics_lib
from hnjax.train import state as state_lib
from hnjax.train import step as step_lib

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when an update's loss or gradient norm is NaN or infinite; checkpoints written before it are kept."""


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


@dataclasses.dataclass
class FitResult:
    """What ``fit`` returns.

    Attributes:
      state: host (NumPy) copy of the final :class:`~hnjax.train.state.TrainState`.
      history: metric records logged by this invocation (one per update, as in ``metrics.jsonl``).
      evals: evaluation records ``{"step": ..., **metrics}``.
      time_split: seconds per phase (``step``, ``data``, ``mining``, ``eval``, ``checkpoint``, ``other``, ``total``).
      start_step: update count at start (non-zero after a resume).
    """

    state: Any
    history: list[dict]
    evals: list[dict]
    time_split: dict[str, float]
    start_step: int

    def format_time_split(self) -> str:
        return metrics_lib.format_time_split(self.time_split)


def _check_host_batch(batch: Any, rows: int) -> dict[str, np.ndarray]:
    if not isinstance(batch, dict):
        raise ValueError(f"batch_fn must return a dict of arrays, got {type(batch).__name__}")
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.ndim == 0 or v.shape[0] != rows:
            raise ValueError(f"batch_fn returned {k!r} with shape {v.shape}; expected a leading axis of {rows} rows")
        out[k] = v
    return out


def _setup_out(config: config_lib.TrainConfig, extra_config: dict | None) -> int | None:
    """Create ``out``, check a resumed run's settings, write ``config.json``; returns the step to resume from."""
    out = config.out
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "config.json")
    checkpoints = checkpoint_lib.Checkpointer(os.path.join(out, "checkpoints"), keep=config.keep_checkpoints)
    latest = checkpoints.latest_step()
    checkpoints.close()
    if latest is not None and not config.resume:
        raise ValueError(
            f"TrainConfig.out={out!r} already holds checkpoints (latest step {latest}); pass resume=True "
            "(--resume) to continue that run, or choose a new out directory"
        )
    if latest is not None:
        with open(path) as f:
            saved = json.load(f)
        saved_config = config_lib.TrainConfig.from_dict(saved["train"])
        config.check_resumable_from(saved_config, extra=extra_config, saved_extra=saved.get("experiment"))
    elif config.resume:
        logger.warning("resume requested but %s holds no checkpoint: starting from step 0", out)
    with open(path, "w") as f:
        json.dump({"train": config.to_dict(), "experiment": extra_config or {}}, f, indent=2, sort_keys=True)
    return latest


def fit(
    config: config_lib.TrainConfig,
    *,
    params: Any,
    loss_fn: Callable,
    batch_fn: Callable[[np.ndarray, tuple | None], dict],
    num_examples: int,
    miner: Any | None = None,
    eval_fn: Callable[[Any, int], dict] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    schedule: optax.Schedule | None = None,
    callbacks: Sequence[Callable[[int, dict], None]] = (),
    extra_config: dict | None = None,
) -> FitResult:
    """Train for ``config.max_steps`` updates (continuing from the latest checkpoint when ``config.resume``).

    Args:
      config: run settings.
      params: initial parameters (ignored when resuming from a checkpoint, except for their structure).
      loss_fn: ``loss_fn(params, batch, key, axis_name=None) -> (loss, aux)``; see :mod:`hnjax.train.step`.
      batch_fn: ``batch_fn(indices [b], candidates) -> dict of arrays [b, ...]`` (host NumPy); ``candidates`` is
        ``miner.candidates(indices)`` (``(ids [b, K-1], log_q or None)``) or ``None`` without a miner. The loop adds
        the ``valid`` mask and pads.
      num_examples: training examples ``N`` (indices run over ``range(N)``).
      miner: object following the mining protocol (module docstring), or ``None``.
      eval_fn: ``eval_fn(params, step) -> dict of floats``, every ``config.eval_every`` updates and at the end.
      optimizer: optax transformation; default AdamW + warmup/decay + clipping from ``config``.
      schedule: learning-rate schedule logged as ``lr`` (default: the one built with the default optimizer).
      callbacks: functions ``f(step, record)`` called after each update's record is logged.
      extra_config: experiment settings saved in ``config.json`` and checked on resume.

    Returns:
      :class:`FitResult`.

    Raises:
      NonFiniteLossError: an update's loss or gradient norm is not finite (its parameters are not applied and no
        checkpoint is written after it).
      ValueError: inconsistent settings (naming the setting), e.g. more devices than available.
    """
    timer = metrics_lib.TimeSplit()
    logger.info("training config:\n%s", config.describe())
    try:
        dp = parallel.DataParallel(config.parallel, config.devices)
    except ValueError as e:
        raise ValueError(f"TrainConfig.devices={config.devices} / parallel={config.parallel!r}: {e}") from e
    if optimizer is None:
        optimizer, default_schedule = state_lib.make_optimizer(
            lr=config.lr, total_steps=config.schedule_steps, warmup=config.warmup, decay=config.decay,
            end_factor=config.end_lr_factor, weight_decay=config.weight_decay, clip_norm=config.effective_clip_norm,
            b1=config.b1, b2=config.b2, eps=config.eps,
        )  # fmt: skip
        schedule = schedule or default_schedule
    rows_per_micro = parallel.padded_size(config.batch_size, dp.n_devices)
    per_step = config.batch_size * config.grad_accum
    order = DataOrder(num_examples, per_step, config.seed)

    host_state = jax.device_get(state_lib.create_train_state(params, optimizer, seed=config.seed))
    start_step, best_value, latest = 0, None, None
    if config.out is not None:
        latest = _setup_out(config, extra_config)
    if latest is not None:
        ckpt = checkpoint_lib.Checkpointer(os.path.join(config.out, "checkpoints"), keep=config.keep_checkpoints)
        host_state, host, miner_state = ckpt.restore(latest, host_state)
        ckpt.close()
        start_step, best_value = int(host["step"]), host.get("best_value")
        if tuple(host["position"]) != order.position(start_step) or host["num_examples"] != num_examples:
            raise ValueError(
                f"cannot resume: checkpoint {latest} is at data position {host['position']} of {host['num_examples']}"
                f" examples, this run would be at {order.position(start_step)} of {num_examples}"
            )
        if miner is not None:
            if miner_state is None:
                raise ValueError(f"cannot resume: checkpoint {latest} holds no miner state but a miner is given")
            miner.load_state_dict(miner_state)
        logger.info("resumed from checkpoint %d in %s", latest, config.out)
    if start_step >= config.max_steps:
        logger.info("nothing to do: checkpoint step %d >= max_steps %d", start_step, config.max_steps)

    writer = eval_writer = checkpoints = best = None
    if config.out is not None:
        metrics_path, eval_path = os.path.join(config.out, "metrics.jsonl"), os.path.join(config.out, "eval.jsonl")
        for path in (metrics_path, eval_path):
            if os.path.exists(path):
                metrics_lib.truncate_jsonl(path, start_step)
        tb = os.path.join(config.out, "tb") if config.tensorboard else None
        writer = metrics_lib.MetricsWriter(metrics_path, tensorboard_dir=tb, purge_step=start_step or None)
        eval_writer = metrics_lib.MetricsWriter(eval_path)
        checkpoints = checkpoint_lib.Checkpointer(os.path.join(config.out, "checkpoints"), keep=config.keep_checkpoints)
        if config.best_metric is not None:
            best = checkpoint_lib.Checkpointer(os.path.join(config.out, "best"), keep=1)

    train_step = dp.compile(
        step_lib.make_train_step(
            loss_fn, optimizer, grad_accum=config.grad_accum, axis_name=dp.axis_name, schedule=schedule
        )
    )
    state = dp.put_state(host_state)
    history, evals = [], []
    last_saved = latest
    progress = tqdm.tqdm(
        total=config.max_steps, initial=start_step, disable=not config.progress, desc="train", dynamic_ncols=True
    )
    clock = {"t": time.perf_counter()}

    def prepare(step: int):
        epoch, _ = order.position(step)
        indices = order.indices(step)
        candidates = None
        if miner is not None:
            with timer.phase("mining"):
                miner.maybe_refresh(dp.unreplicate(state.params), step=step, epoch=epoch)
                candidates = miner.candidates(indices)
        with timer.phase("data"):
            host_batch = _check_host_batch(batch_fn(indices, candidates), len(indices))
            host_batch = parallel.pad_batch(host_batch, rows_per_micro * config.grad_accum)
            return dp.put_batch(host_batch)

    def save(step: int):
        if miner is not None:
            with timer.phase("mining"):
                miner.wait()
        with timer.phase("checkpoint"):
            host = {"step": step, "position": list(order.position(step)), "num_examples": num_examples,
                    "best_value": best_value}  # fmt: skip
            checkpoints.save(step, dp.state_to_host(state), host=host,
                             miner_state=None if miner is None else miner.state_dict())  # fmt: skip

    def log(step: int, device_metrics) -> None:
        with timer.phase("step"):
            values = dp.metrics_to_host(device_metrics)
        now = time.perf_counter()
        elapsed, clock["t"] = now - clock["t"], now
        if values.pop("finite") != 1.0:
            where = f"; the last good checkpoint is step {last_saved} in {checkpoints.directory}" if last_saved else ""
            raise NonFiniteLossError(
                f"non-finite training loss at step {step}: loss={values['loss']}, grad_norm={values['grad_norm']}; "
                f"the update was not applied and training stopped{where}"
            )
        total = timer.total
        record = {"step": step, "epoch": order.position(step - 1)[0], **values,
                  "steps_per_s": 1.0 / max(elapsed, 1e-9), "seqs_per_s": values["examples"] / max(elapsed, 1e-9),
                  "mining_share": timer.seconds["mining"] / max(total, 1e-9)}  # fmt: skip
        history.append(record)
        if writer is not None:
            writer.write(step, {k: v for k, v in record.items() if k != "step"})
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss']:.4f}")
        for callback in callbacks:
            callback(step, record)

    def evaluate(step: int):
        nonlocal best_value, last_saved
        with timer.phase("eval"):
            results = {k: float(v) for k, v in eval_fn(dp.unreplicate(state.params), step).items()}
        evals.append({"step": step, **results})
        logger.info("eval at step %d: %s", step, results)
        if eval_writer is not None:
            eval_writer.write(step, results)
        if writer is not None:
            writer.write(step, results, prefix="eval/", jsonl=False)
        if config.best_metric is None:
            return
        if config.best_metric not in results:
            raise ValueError(
                f"TrainConfig.best_metric={config.best_metric!r} is not among the eval results {sorted(results)}"
            )
        value = results[config.best_metric]
        better = best_value is None or (value > best_value if config.best_mode == "max" else value < best_value)
        if better:
            best_value = value
            with timer.phase("checkpoint"):
                best.save(step, dp.state_to_host(state), host={"step": step, config.best_metric: value})

    try:
        step = start_step
        batch = prepare(step) if step < config.max_steps else None
        pending = None
        while step < config.max_steps:
            with timer.phase("step"):
                state, device_metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                log(*pending)
            pending = (step, device_metrics)
            checkpoint_due = checkpoints is not None and config.checkpoint_every and step % config.checkpoint_every == 0
            eval_due = eval_fn is not None and config.eval_every and step % config.eval_every == 0
            if checkpoint_due or eval_due or step == config.max_steps:
                log(*pending)
                pending = None
            if eval_due:
                evaluate(step)
            if checkpoint_due:
                save(step)
                last_saved = step
            if step < config.max_steps:
                batch = prepare(step)
        if eval_fn is not None and step > start_step and (not evals or evals[-1]["step"] != step):
            evaluate(step)
        if checkpoints is not None and last_saved != step and step > 0:  # no checkpoint of an untrained model
            save(step)
            last_saved = step
        if miner is not None:
            miner.wait()
        final_state = dp.state_to_host(state)
    finally:
        progress.close()
        for closable in (writer, eval_writer, checkpoints, best):
            if closable is not None:
                closable.close()
    split = timer.summary()
    logger.info("%s", timer.format())
    return FitResult(state=final_state, history=history, evals=evals, time_split=split, start_step=start_step)
