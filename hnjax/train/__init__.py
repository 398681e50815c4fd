"""Training engine: compiled step, data parallelism, loop with mining hooks, checkpoints with exact resume, metrics.

Submodules: ``state`` (TrainState, AdamW + schedule), ``step`` (make_train_step, accumulation), ``config``
(TrainConfig, argparse glue), ``checkpoint`` (orbax, exact resume), ``metrics`` (JSONL, TensorBoard, time split),
``feed`` (data order, mining protocol, per-process batches), ``outputs`` (the run directory), ``loop`` (fit).
The names most scripts need are re-exported here; see docs/train.md.
"""

from hnjax.train import checkpoint, config, feed, loop, metrics, outputs, state, step
from hnjax.train.config import TrainConfig, add_train_arguments, config_from_args
from hnjax.train.feed import DataOrder, MinerLike
from hnjax.train.loop import FitResult, NonFiniteLossError, fit
from hnjax.train.state import TrainState, create_train_state, make_optimizer, make_schedule
from hnjax.train.step import make_train_step

__all__ = [
    "DataOrder",
    "FitResult",
    "MinerLike",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "add_train_arguments",
    "checkpoint",
    "config",
    "config_from_args",
    "create_train_state",
    "feed",
    "fit",
    "loop",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "metrics",
    "outputs",
    "state",
    "step",
]
