"""The training loop: ``fit`` runs the compiled step with mining hooks, checkpoints with exact resume, and metrics.

``fit`` runs the compiled step of :mod:`hnjax.train.step` for ``config.max_steps`` updates. Per update ``t``:

1. the step for update ``t`` is dispatched (JAX runs it asynchronously);
2. the metrics of update ``t - 1`` are fetched and logged (they are ready: update ``t`` started after them);
3. at an evaluation boundary the evaluation callback runs; at a checkpoint boundary the miner is waited for and a
   checkpoint is written;
4. the batch of update ``t + 1`` is prepared while update ``t`` runs on the devices (:class:`~hnjax.train.feed.
   BatchFeeder`): the miner may refresh (``miner.maybe_refresh(params, step=t + 1, epoch=...)``), candidates are
   looked up for the batch's examples, ``batch_fn`` builds the host arrays, which are padded (``valid`` mask) and
   transferred.

The pieces live in their own modules: the data order, the mining protocol (:class:`~hnjax.train.feed.MinerLike`) and
batch building in :mod:`hnjax.train.feed`; ``OUT`` and its writers in :mod:`hnjax.train.outputs`; the per-update
record (throughput, NaN guard, progress bar) in :class:`StepLogger` and evaluation with best-checkpoint selection in
:class:`Evaluator` below.

Several processes (``hnjax.distributed``): every process runs ``fit`` with the same arguments; each builds and places
only its rows of each global batch, all of them take part in checkpoints (orbax), and process 0 alone writes the
metric files and shows the progress bar.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
import tqdm

from hnjax import distributed, parallel
from hnjax.train import config as config_lib
from hnjax.train import feed
from hnjax.train import metrics as metrics_lib
from hnjax.train import outputs as outputs_lib
from hnjax.train import state as state_lib
from hnjax.train import step as step_lib

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when an update's loss or gradient norm is NaN or infinite; checkpoints written before it are kept."""


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


@dataclasses.dataclass
class _Start:
    """Where a run starts: its host state, update count, best evaluation value and checkpoint (``None``: fresh)."""

    state: Any
    step: int = 0
    best_value: float | None = None
    checkpoint: int | None = None


def _resume_point(
    config: config_lib.TrainConfig,
    extra_config: dict | None,
    host_state: Any,
    order: feed.DataOrder,
    miner: feed.MinerLike | None,
) -> _Start:
    """Prepare ``OUT`` and, when resuming, restore state, data position and mining state from the latest checkpoint."""
    if config.out is None:
        return _Start(host_state)
    latest = outputs_lib.prepare(config, extra_config)
    if latest is None:
        return _Start(host_state)
    state, host, miner_state = outputs_lib.restore(config, latest, host_state)
    step = int(host["step"])
    if tuple(host["position"]) != order.position(step) or host["num_examples"] != order.num_examples:
        raise ValueError(
            f"cannot resume: checkpoint {latest} is at data position {host['position']} of {host['num_examples']}"
            f" examples, this run would be at {order.position(step)} of {order.num_examples}"
        )
    if miner is not None:
        if miner_state is None:
            raise ValueError(f"cannot resume: checkpoint {latest} holds no miner state but a miner is given")
        miner.load_state_dict(miner_state)
    logger.info("resumed from checkpoint %d in %s", latest, config.out)
    return _Start(state, step, host.get("best_value"), latest)


class StepLogger:
    """Turns each update's device metrics into a logged record: NaN guard, throughput, progress bar, callbacks.

    Args:
      outputs: the run's writers (``metrics.jsonl``, TensorBoard).
      order: the data order (for the record's epoch).
      timer: the run's time split (``mining_share``).
      callbacks: functions ``f(step, record)`` called after each record is logged.
      progress: a tqdm bar (updated once per record).
    """

    def __init__(self, outputs, order: feed.DataOrder, timer, callbacks: Sequence[Callable], progress: tqdm.tqdm):
        self.outputs, self.order, self.timer, self.callbacks, self.progress = outputs, order, timer, callbacks, progress
        self.history: list[dict] = []
        self.last_saved: int | None = None
        self._clock = time.perf_counter()

    def log(self, step: int, values: dict[str, float]) -> None:
        """Log update ``step``'s metrics (host floats, from ``DataParallel.metrics_to_host``).

        Raises:
          NonFiniteLossError: the update's loss or gradient norm is not finite.
        """
        now = time.perf_counter()
        elapsed, self._clock = now - self._clock, now
        values = dict(values)
        if values.pop("finite") != 1.0:
            where = ""
            if self.last_saved:
                where = f"; the last good checkpoint is step {self.last_saved} in {self.outputs.checkpoint_directory}"
            raise NonFiniteLossError(
                f"non-finite training loss at step {step}: loss={values['loss']}, grad_norm={values['grad_norm']}; "
                f"the update was not applied and training stopped{where}"
            )
        mining_share = self.timer.seconds["mining"] / max(self.timer.total, 1e-9)
        record = {"step": step, "epoch": self.order.position(step - 1)[0], **values,
                  "steps_per_s": 1.0 / max(elapsed, 1e-9), "seqs_per_s": values["examples"] / max(elapsed, 1e-9),
                  "mining_share": mining_share}  # fmt: skip
        self.history.append(record)
        self.outputs.log_step(step, {k: v for k, v in record.items() if k != "step"})
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{values['loss']:.4f}")
        for callback in self.callbacks:
            callback(step, record)


class Evaluator:
    """Runs the evaluation callback, logs its results and keeps the best checkpoint by ``config.best_metric``.

    Args:
      eval_fn: ``eval_fn(params, step) -> dict of floats``.
      config: run settings (``best_metric``, ``best_mode``).
      outputs: the run's writers and best checkpointer.
      best_value: best value so far (restored on resume).
    """

    def __init__(self, eval_fn: Callable, config: config_lib.TrainConfig, outputs, best_value: float | None):
        self.eval_fn, self.config, self.outputs, self.best_value = eval_fn, config, outputs, best_value
        self.evals: list[dict] = []

    def __call__(self, step: int, params: Any, host_state: Callable[[], Any]) -> None:
        """Evaluate ``params`` (one device's copy) at ``step``; ``host_state()`` gives the state to keep if best."""
        results = {k: float(v) for k, v in self.eval_fn(params, step).items()}
        self.evals.append({"step": step, **results})
        logger.info("eval at step %d: %s", step, results)
        self.outputs.log_eval(step, results)
        metric = self.config.best_metric
        if metric is None:
            return
        if metric not in results:
            raise ValueError(f"TrainConfig.best_metric={metric!r} is not among the eval results {sorted(results)}")
        value = results[metric]
        if self.best_value is None or (value > self.best_value if self.config.best_mode == "max" else
                                       value < self.best_value):  # fmt: skip
            self.best_value = value
            self.outputs.best.save(step, host_state(), host={"step": step, metric: value})


def _optimizer(config: config_lib.TrainConfig, optimizer, schedule):
    if optimizer is not None:
        return optimizer, schedule
    optimizer, default_schedule = state_lib.make_optimizer(
        lr=config.lr, total_steps=config.schedule_steps, warmup=config.warmup, decay=config.decay,
        end_factor=config.end_lr_factor, weight_decay=config.weight_decay, clip_norm=config.effective_clip_norm,
        b1=config.b1, b2=config.b2, eps=config.eps,
    )  # fmt: skip
    return optimizer, schedule or default_schedule


def fit(
    config: config_lib.TrainConfig,
    *,
    params: Any,
    loss_fn: Callable,
    batch_fn: Callable[[np.ndarray, tuple | None], dict],
    num_examples: int,
    miner: feed.MinerLike | None = None,
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
        the ``valid`` mask and pads. With several processes each process calls it for its own rows only.
      num_examples: training examples ``N`` (indices run over ``range(N)``).
      miner: a :class:`~hnjax.train.feed.MinerLike` (e.g. ``hnjax.mining.Miner``), or ``None``.
      eval_fn: ``eval_fn(params, step) -> dict of floats``, every ``config.eval_every`` updates and at the end. With
        several processes it runs on every process and must return the same values on all of them.
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
    optimizer, schedule = _optimizer(config, optimizer, schedule)
    order = feed.DataOrder(num_examples, config.batch_size * config.grad_accum, config.seed)
    global_rows = parallel.padded_size(config.batch_size, dp.n_devices) * config.grad_accum
    start = _resume_point(
        config, extra_config, jax.device_get(state_lib.create_train_state(params, optimizer, seed=config.seed)),
        order, miner,
    )  # fmt: skip
    if start.step >= config.max_steps:
        logger.info("nothing to do: checkpoint step %d >= max_steps %d", start.step, config.max_steps)
    train_step = dp.compile(
        step_lib.make_train_step(
            loss_fn, optimizer, grad_accum=config.grad_accum, axis_name=dp.axis_name, schedule=schedule
        )
    )
    feeder = feed.BatchFeeder(order, batch_fn, dp, global_rows, miner, timer)
    outputs = outputs_lib.RunOutputs(config, start.step)
    progress = tqdm.tqdm(total=config.max_steps, initial=start.step, desc="train", dynamic_ncols=True,
                         disable=not (config.progress and distributed.is_main_process()))  # fmt: skip
    logs = StepLogger(outputs, order, timer, callbacks, progress)
    logs.last_saved = start.checkpoint
    evaluate = None if eval_fn is None else Evaluator(eval_fn, config, outputs, start.best_value)
    state = dp.put_state(start.state)

    def fetch(step: int, device_metrics) -> None:
        with timer.phase("step"):
            values = dp.metrics_to_host(device_metrics)
        logs.log(step, values)

    def save(step: int, state) -> None:
        if miner is not None:
            with timer.phase("mining"):
                miner.wait()
        with timer.phase("checkpoint"):
            host = {"step": step, "position": list(order.position(step)), "num_examples": num_examples,
                    "best_value": None if evaluate is None else evaluate.best_value}  # fmt: skip
            outputs.checkpoints.save(step, dp.state_to_host(state), host=host,
                                     miner_state=None if miner is None else miner.state_dict())  # fmt: skip
        logs.last_saved = step

    def run_eval(step: int, state) -> None:
        with timer.phase("eval"):
            evaluate(step, dp.unreplicate(state.params), lambda: dp.state_to_host(state))

    try:
        step = start.step
        batch = feeder(step, state.params) if step < config.max_steps else None
        pending = None
        while step < config.max_steps:
            with timer.phase("step"):
                state, device_metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                fetch(*pending)
            pending = (step, device_metrics)
            checkpoint_due = outputs.checkpoints is not None and config.checkpoint_every > 0 and (
                step % config.checkpoint_every == 0)  # fmt: skip
            eval_due = evaluate is not None and config.eval_every > 0 and step % config.eval_every == 0
            if checkpoint_due or eval_due or step == config.max_steps:
                fetch(*pending)
                pending = None
            if eval_due:
                run_eval(step, state)
            if checkpoint_due:
                save(step, state)
            if step < config.max_steps:
                batch = feeder(step, state.params)
        if evaluate is not None and step > start.step and (not evaluate.evals or evaluate.evals[-1]["step"] != step):
            run_eval(step, state)
        if (
            outputs.checkpoints is not None and logs.last_saved != step and step > 0
        ):  # no checkpoint of an untrained model
            save(step, state)
        if miner is not None:
            miner.wait()
        final_state = dp.state_to_host(state)
    finally:
        progress.close()
        outputs.close()
    split = timer.summary()
    logger.info("%s", timer.format())
    evals = [] if evaluate is None else evaluate.evals
    return FitResult(state=final_state, history=logs.history, evals=evals, time_split=split, start_step=start.step)
