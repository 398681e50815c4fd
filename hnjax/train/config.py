"""Training configuration: a frozen, validated dataclass, saved next to the checkpoints, and shared argparse flags.

Every experiment script built on the trainer calls :func:`add_train_arguments` and :func:`config_from_args`, so they
all accept ``--out``, ``--max-steps``, ``--checkpoint-every``, ``--resume`` and the rest with one meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from typing import Any

from hnjax import parallel
from hnjax.train import state as state_lib

# Settings that may change between a run and its resumption without changing the trajectory.
RESUMABLE_CHANGES = frozenset(
    {"resume", "progress", "tensorboard", "checkpoint_every", "keep_checkpoints", "eval_every", "max_steps"}
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (host side only: never passed into compiled code).

    Attributes:
      out: output directory (``metrics.jsonl``, ``config.json``, ``checkpoints/``, ``best/``, ``tb/``); required for
        checkpoints, resume and best-model selection.
      max_steps: optimizer updates of the run.
      batch_size: examples per micro-batch over all devices ``B`` (padded up to a multiple of the device count).
      grad_accum: micro-batches per update ``A``; an update sees ``A * B`` examples (paper 1: 16 x 2).
      lr: peak learning rate.
      warmup: linear warmup as a fraction of ``max_steps`` (default 0.1).
      decay: ``"linear"``, ``"cosine"`` or ``"constant"`` after warmup.
      end_lr_factor: final learning rate as a fraction of ``lr``.
      weight_decay: AdamW decoupled weight decay.
      clip_norm: global gradient-norm clip; ``None`` or 0 disables it.
      b1, b2, eps: Adam settings.
      seed: seeds the parameter-independent randomness: the step keys and the data order.
      total_steps: length of the learning-rate schedule; ``None`` means ``max_steps``. Set it when a run is split
        into several invocations with growing ``max_steps``.
      checkpoint_every: save every N updates (0: only at the end); a final checkpoint is always written when ``out``
        is set.
      keep_checkpoints: latest checkpoints kept.
      eval_every: call the evaluation callback every N updates (0: only at the end, if a callback is given).
      best_metric: evaluation metric whose best value keeps a checkpoint in ``out/best`` (``None``: none kept).
      best_mode: ``"max"`` or ``"min"`` for ``best_metric``.
      parallel: ``"none"``, ``"pmap"`` or ``"shard_map"``.
      devices: devices for data parallelism (``None``: all; must be 1 or ``None`` with ``parallel="none"``).
      resume: continue from the latest checkpoint in ``out`` (a fresh start if there is none).
      progress: tqdm progress bar.
      tensorboard: also write TensorBoard scalars to ``out/tb``.
    """

    out: str | None = None
    max_steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-5
    warmup: float = 0.1
    decay: str = "linear"
    end_lr_factor: float = 0.0
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    total_steps: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    eval_every: int = 0
    best_metric: str | None = None
    best_mode: str = "max"
    parallel: str = "none"
    devices: int | None = None
    resume: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        def fail(name, expected):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("max_steps", "batch_size", "grad_accum", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "an int >= 1")
        for name in ("checkpoint_every", "eval_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail(name, "an int >= 0")
        if not self.lr > 0:
            fail("lr", "> 0")
        if not 0.0 <= self.warmup < 1.0:
            fail("warmup", "a fraction in [0, 1)")
        if self.decay not in state_lib.DECAYS:
            fail("decay", f"one of {state_lib.DECAYS}")
        if not 0.0 <= self.end_lr_factor <= 1.0:
            fail("end_lr_factor", "in [0, 1]")
        if self.weight_decay < 0:
            fail("weight_decay", ">= 0")
        if self.clip_norm is not None and self.clip_norm < 0:
            fail("clip_norm", ">= 0 or None")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(name, "in [0, 1)")
        if not self.eps > 0:
            fail("eps", "> 0")
        if self.total_steps is not None and (not isinstance(self.total_steps, int) or self.total_steps < 1):
            fail("total_steps", "None or an int >= 1")
        if self.best_mode not in ("max", "min"):
            fail("best_mode", "'max' or 'min'")
        if self.parallel not in parallel.MODES:
            fail("parallel", f"one of {parallel.MODES}")
        if self.devices is not None and (not isinstance(self.devices, int) or self.devices < 1):
            fail("devices", "None or an int >= 1")
        if self.parallel == "none" and self.devices not in (None, 1):
            raise ValueError(
                f"TrainConfig.devices={self.devices} needs TrainConfig.parallel 'pmap' or 'shard_map', got 'none'"
            )
        for name in ("resume", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "a bool")
        if self.out is None:
            for name, needs in (("checkpoint_every", self.checkpoint_every > 0), ("resume", self.resume)):
                if needs:
                    raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} needs TrainConfig.out to be set")
            if self.best_metric is not None:
                raise ValueError(f"TrainConfig.best_metric={self.best_metric!r} needs TrainConfig.out to be set")

    @property
    def schedule_steps(self) -> int:
        """Length of the learning-rate schedule."""
        return self.total_steps or self.max_steps

    @property
    def effective_clip_norm(self) -> float | None:
        return self.clip_norm or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, failing on unknown settings with their names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**values)

    def describe(self) -> str:
        """One ``name = value`` line per setting, for logs."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"{f.name:<{width}} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self))

    def save(self, path: str) -> None:
        """Write the config as JSON (``out/config.json``)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> TrainConfig:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def check_resumable_from(self, saved: TrainConfig, *, extra: dict | None = None, saved_extra: dict | None = None):
        """Fail, naming the setting, when resuming with settings that would change the trajectory.

        Args:
          saved: config of the run being resumed.
          extra, saved_extra: experiment settings outside TrainConfig (e.g. model width), compared the same way.
        """
        for f in dataclasses.fields(self):
            if f.name in RESUMABLE_CHANGES or f.name == "total_steps":
                continue
            if getattr(self, f.name) != getattr(saved, f.name):
                raise ValueError(
                    f"cannot resume: setting {f.name!r} is {getattr(self, f.name)!r} but the run in {self.out} used "
                    f"{getattr(saved, f.name)!r}"
                )
        if self.schedule_steps != saved.schedule_steps:
            name = "total_steps" if self.total_steps is not None or saved.total_steps is not None else "max_steps"
            raise ValueError(
                f"cannot resume: setting {name!r} is {getattr(self, name)!r} but the run in {self.out} used "
                f"{getattr(saved, name)!r}, which changes the learning-rate schedule length ({saved.schedule_steps} "
                f"-> {self.schedule_steps}); to extend a run, start it with total_steps set to the final length"
            )
        extra, saved_extra = extra or {}, saved_extra or {}
        for name in sorted(set(extra) | set(saved_extra)):
            if extra.get(name) != saved_extra.get(name):
                raise ValueError(
                    f"cannot resume: setting {name!r} is {extra.get(name)!r} but the run in {self.out} used "
                    f"{saved_extra.get(name)!r}"
                )


def steps_for_epochs(epochs: float, num_examples: int, batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer updates that make ``epochs`` passes over the data: ⌈epochs · N / (B · A)⌉, at least 1.

    Args:
      epochs: passes over the data (fractions allowed).
      num_examples: N, examples per epoch.
      batch_size: B, examples per micro-batch.
      grad_accum: A, micro-batches per update.

    Returns:
      The ``max_steps`` of a run of ``epochs`` epochs.

    Example:
      >>> steps_for_epochs(4, num_examples=1000, batch_size=16, grad_accum=2)  # 4 · 1000 / 32 = 125
      125
    """
    if not epochs >= 0:
        raise ValueError(f"epochs: expected a number >= 0, got {epochs!r}")
    if num_examples < 0 or batch_size < 1 or grad_accum < 1:
        raise ValueError(
            f"num_examples, batch_size, grad_accum: expected >= 0, >= 1, >= 1, got {num_examples}, {batch_size}, "
            f"{grad_accum}"
        )
    return max(1, math.ceil(epochs * num_examples / (batch_size * grad_accum)))


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def add_train_arguments(
    parser: argparse.ArgumentParser,
    defaults: TrainConfig | None = None,
    *,
    epochs: float | None = None,
    require_out: bool = False,
):
    """Add the shared trainer flags to an experiment's parser.

    Args:
      parser: the experiment's ``argparse.ArgumentParser``.
      defaults: a config whose values become the flag defaults (experiment-specific defaults).
      epochs: measure the run in epochs by default: adds ``--epochs`` (this default) and leaves ``--max-steps``
        unset, so that :func:`config_from_args` turns the epochs into updates with :func:`steps_for_epochs`.
      require_out: make ``--out`` required (training scripts write their run there).

    Returns:
      The argument group holding the flags.
    """
    d = defaults or TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--out", default=d.out, required=require_out, help="output directory: metrics.jsonl, config.json, "
                   "checkpoints/")  # fmt: skip
    if epochs is None:
        g.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer updates (default %(default)s)")
    else:
        g.add_argument("--max-steps", type=int, default=None, help="optimizer updates (default: --epochs)")
        g.add_argument("--epochs", type=float, default=epochs, help="epochs when --max-steps is not given "
                       "(default %(default)s)")  # fmt: skip
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per micro-batch, all devices")
    g.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per update (default 1)")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)s)")
    g.add_argument("--warmup", type=float, default=d.warmup, help="warmup fraction of the run (default 0.1)")
    g.add_argument("--decay", choices=state_lib.DECAYS, default=d.decay, help="decay after warmup")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--clip-norm", type=float, default=d.clip_norm, help="gradient global-norm clip; 0 disables")
    g.add_argument("--total-steps", type=int, default=d.total_steps, help="schedule length (default: max-steps)")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the step keys and the data order")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="save every N updates (0: end)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="latest checkpoints kept")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N updates (0: at the end)")
    g.add_argument("--best-metric", default=d.best_metric, help="eval metric selecting the checkpoint in OUT/best")
    g.add_argument("--best-mode", choices=("max", "min"), default=d.best_mode, help="whether best-metric is maximised")
    g.add_argument("--parallel", choices=parallel.MODES, default=d.parallel, help="data parallelism over devices")
    g.add_argument("--devices", type=_optional_int, default=d.devices, help="devices used (default: all)")
    g.add_argument("--resume", action="store_true", default=d.resume, help="continue from the latest checkpoint")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=d.progress, help="no tqdm bar")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=d.tensorboard)
    return g


_ARG_FIELDS = (
    "out max_steps batch_size grad_accum lr warmup decay weight_decay clip_norm total_steps seed checkpoint_every "
    "keep_checkpoints eval_every best_metric best_mode parallel devices resume progress tensorboard"
).split()


def config_from_args(args: argparse.Namespace, *, num_examples: int | None = None, **overrides: Any) -> TrainConfig:
    """Build a validated :class:`TrainConfig` from parsed flags (plus keyword overrides).

    The parallel mode is exactly what the flags say (default ``none``, one device, whatever ``XLA_FLAGS`` makes
    visible), so a run's numbers do not depend on the machine; pass ``--parallel shard_map`` to use every device.
    Invalid or inconsistent values raise ``ValueError`` naming the setting.

    Args:
      args: flags parsed with :func:`add_train_arguments`.
      num_examples: examples per epoch; with ``--epochs`` and no ``--max-steps``, ``max_steps`` is
        :func:`steps_for_epochs` of them.
      overrides: settings that replace the flags.
    """
    values = {name: getattr(args, name) for name in _ARG_FIELDS if hasattr(args, name)}
    if values.get("max_steps") is None and getattr(args, "epochs", None) is not None:
        if num_examples is None:
            raise ValueError("num_examples: expected the examples per epoch to turn --epochs into steps, got None")
        values["max_steps"] = steps_for_epochs(args.epochs, num_examples, args.batch_size, args.grad_accum)
    values.update(overrides)
    return TrainConfig.from_dict(values)
