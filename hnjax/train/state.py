"""Training state and optimizer: ``TrainState`` pytree, AdamW with linear warmup and decay, gradient clipping.

The recipe of Zhang & Stratos (2021) is AdamW, learning rate 1e-5, 10% linear warmup then linear decay; that is the
default here (``make_optimizer(lr=1e-5, total_steps=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

DECAYS = ("linear", "cosine", "constant")


class TrainState(flax.struct.PyTreeNode):
    """Everything the compiled step reads and writes, as one pytree.

    Attributes:
      params: model parameters (any pytree of arrays).
      opt_state: optax optimizer state for ``params``.
      step: int32 scalar, number of optimizer updates applied so far.
      rng: raw ``uint32[2]`` PRNG key; the step's key is ``jax.random.fold_in(rng, step)``, so a resumed run draws the
        same keys as an uninterrupted one.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def create_train_state(params: Any, optimizer: optax.GradientTransformation, *, seed: int | jax.Array) -> TrainState:
    """A fresh state at step 0.

    Args:
      params: initial parameters.
      optimizer: the optax transformation the step will apply.
      seed: integer seed, or a raw ``uint32[2]`` key.

    Returns:
      ``TrainState(params, optimizer.init(params), step=0, rng)``.

    Example:
      >>> import optax, jax.numpy as jnp
      >>> s = create_train_state({"w": jnp.zeros(3)}, optax.sgd(0.1), seed=0)
      >>> int(s.step)
      0
    """
    rng = jax.random.PRNGKey(seed) if isinstance(seed, int) else jnp.asarray(seed)
    if rng.shape != (2,) or rng.dtype != jnp.uint32:
        raise ValueError(f"seed: expected an int or a raw uint32[2] key, got shape {rng.shape} dtype {rng.dtype}")
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), rng=rng)


def warmup_steps(total_steps: int, warmup: float) -> int:
    """Warmup length in steps: ``round(warmup * total_steps)`` for a fraction ``0 <= warmup < 1``."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup: expected a fraction in [0, 1), got {warmup}")
    return int(round(warmup * total_steps))


def make_schedule(
    *, lr: float, total_steps: int, warmup: float = 0.1, decay: str = "linear", end_factor: float = 0.0
) -> optax.Schedule:
    """Learning rate: linear warmup from 0 to ``lr`` over ``warmup * total_steps`` steps, then decay.

    With ``W`` warmup steps and ``T`` total steps, at step ``t``:
    ``lr_t = lr * t / W`` for ``t < W``; then ``linear``: ``lr * (1 - (1 - end_factor) * (t - W) / (T - W))``,
    ``cosine``: ``lr * (end_factor + (1 - end_factor) * (1 + cos(pi * (t - W) / (T - W))) / 2)``, ``constant``: ``lr``.

    Args:
      lr: peak learning rate (> 0).
      total_steps: optimizer updates of the run (>= 1).
      warmup: warmup fraction in [0, 1); paper 1 uses 0.1.
      decay: ``"linear"``, ``"cosine"`` or ``"constant"``.
      end_factor: final learning rate as a fraction of ``lr``.

    Returns:
      An optax schedule ``step -> lr``.

    References:
      Zhang & Stratos (2021), Understanding Hard Negatives in Noise Contrastive Estimation, NAACL (training recipe).
    """
    if lr <= 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    if total_steps < 1:
        raise ValueError(f"total_steps: expected >= 1, got {total_steps}")
    if decay not in DECAYS:
        raise ValueError(f"decay: expected one of {DECAYS}, got {decay!r}")
    if not 0.0 <= end_factor <= 1.0:
        raise ValueError(f"end_factor: expected a value in [0, 1], got {end_factor}")
    w = warmup_steps(total_steps, warmup)
    rest = max(total_steps - w, 1)
    if decay == "linear":
        after = optax.linear_schedule(lr, lr * end_factor, rest)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(lr, rest, alpha=end_factor)
    else:
        after = optax.constant_schedule(lr)
    if w == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, w), after], [w])


def decay_mask(params: Any) -> Any:
    """Default weight-decay mask: decay matrices and embeddings (ndim >= 2), not biases or layer-norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(
    *,
    lr: float,
    total_steps: int,
    warmup: float = 0.1,
    decay: str = "linear",
    end_factor: float = 0.0,
    weight_decay: float = 0.01,
    clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mask: Callable | Any | None = decay_mask,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with warmup + decay and global-norm gradient clipping.

    ``chain(clip_by_global_norm(clip_norm), adamw(schedule, b1, b2, eps, weight_decay, mask))``.

    Args:
      lr, total_steps, warmup, decay, end_factor: see :func:`make_schedule`.
      weight_decay: decoupled weight decay coefficient (>= 0).
      clip_norm: clip gradients to this global L2 norm; ``None`` disables clipping.
      b1, b2, eps: Adam moments and epsilon.
      mask: weight-decay mask (pytree of bools or a function of params); default :func:`decay_mask`.

    Returns:
      ``(optimizer, schedule)``; the schedule gives the learning rate logged at each step.

    References:
      Loshchilov & Hutter (2019), Decoupled Weight Decay Regularization, ICLR.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay: expected >= 0, got {weight_decay}")
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"clip_norm: expected > 0 or None, got {clip_norm}")
    schedule = make_schedule(lr=lr, total_steps=total_steps, warmup=warmup, decay=decay, end_factor=end_factor)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []) + [adamw]
    return optax.chain(*parts), schedule
