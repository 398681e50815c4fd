"""The output directory of a run: ``config.json``, resume checks, metric files, checkpoints and the best checkpoint.

``OUT`` holds ``config.json`` (the :class:`~hnjax.train.config.TrainConfig` and the experiment's extra settings),
``metrics.jsonl`` (one line per update), ``eval.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/`` (the latest
``keep_checkpoints``) and ``best/`` (the best by ``best_metric``).

Several processes: every process must see the same ``OUT`` (a shared file system), since orbax writes one checkpoint
from all of them together (each process calls ``save`` and ``restore``; orbax synchronises them). Text files
(``config.json``, ``metrics.jsonl``, ``eval.jsonl``, TensorBoard) are written by process 0 only, so every step is
logged once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from hnjax import distributed
from hnjax.train import checkpoint as checkpoint_lib
from hnjax.train import config as config_lib
from hnjax.train import metrics as metrics_lib

logger = logging.getLogger(__name__)


def _checkpointer(config: config_lib.TrainConfig, name: str = "checkpoints", keep: int | None = None):
    return checkpoint_lib.Checkpointer(os.path.join(config.out, name), keep=keep or config.keep_checkpoints)


def prepare(config: config_lib.TrainConfig, extra_config: dict | None) -> int | None:
    """Create ``OUT``, check a resumed run's settings, write ``config.json``; returns the step to resume from.

    Raises:
      ValueError: ``OUT`` holds checkpoints but ``resume`` is off, or a setting that changes the trajectory differs
        from the saved run's (naming it).
    """
    out = config.out
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "config.json")
    checkpoints = _checkpointer(config)
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
    distributed.barrier("hnjax-config-read")  # nobody reads config.json while process 0 rewrites it
    if distributed.is_main_process():
        with open(path + ".tmp", "w") as f:
            json.dump({"train": config.to_dict(), "experiment": extra_config or {}}, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    return latest


def restore(config: config_lib.TrainConfig, step: int, target_state: Any) -> tuple[Any, dict, dict | None]:
    """Read checkpoint ``step`` of ``OUT/checkpoints`` (every process): ``(state, host, miner_state)``."""
    checkpoints = _checkpointer(config)
    try:
        return checkpoints.restore(step, target_state)
    finally:
        checkpoints.close()


class RunOutputs:
    """Writers of a run in ``OUT`` (or nothing when ``config.out`` is ``None``).

    Args:
      config: run settings.
      start_step: first update of this invocation (``metrics.jsonl`` / ``eval.jsonl`` are cut back to it on resume
        and TensorBoard events after it are purged).
    """

    def __init__(self, config: config_lib.TrainConfig, start_step: int):
        self.config = config
        self.metrics = self.evals = self.checkpoints = self.best = None
        if config.out is None:
            return
        if distributed.is_main_process():
            metrics_path = os.path.join(config.out, "metrics.jsonl")
            eval_path = os.path.join(config.out, "eval.jsonl")
            for path in (metrics_path, eval_path):
                if os.path.exists(path):
                    metrics_lib.truncate_jsonl(path, start_step)
            tb = os.path.join(config.out, "tb") if config.tensorboard else None
            self.metrics = metrics_lib.MetricsWriter(metrics_path, tensorboard_dir=tb, purge_step=start_step or None)
            self.evals = metrics_lib.MetricsWriter(eval_path)
        self.checkpoints = _checkpointer(config)
        if config.best_metric is not None:
            self.best = _checkpointer(config, "best", keep=1)

    @property
    def checkpoint_directory(self) -> str | None:
        return None if self.checkpoints is None else self.checkpoints.directory

    def log_step(self, step: int, record: dict) -> None:
        """One line of ``metrics.jsonl`` (process 0; ``record`` without its ``step``) and TensorBoard scalars."""
        if self.metrics is not None:
            self.metrics.write(step, record)

    def log_eval(self, step: int, results: dict) -> None:
        if self.evals is not None:
            self.evals.write(step, results)
        if self.metrics is not None:
            self.metrics.write(step, results, prefix="eval/", jsonl=False)

    def close(self) -> None:
        for closable in (self.metrics, self.evals, self.checkpoints, self.best):
            if closable is not None:
                closable.close()
