"""The compiled training step: loss, gradient (with accumulation and cross-device averaging), optax update.

``make_train_step(loss_fn, optimizer)`` returns a pure ``(state, batch) -> (state, metrics)``. The user's loss has the
signature ``loss_fn(params, batch, key, axis_name=None) -> (loss, aux)``: ``batch`` is a dict of arrays with a leading
batch axis and, as built by the training loop, a boolean ``"valid"`` mask that the loss must weight examples by;
``aux`` is a dict of scalars (logged); ``key`` is this micro-batch's PRNG key.

Data parallelism (see :mod:`hnjax.parallel`): the step is built with ``axis_name="data"`` and runs inside
``shard_map``/``pmap``. The loss must then return the global-batch mean (gather in-batch negatives with
``losses.gather_columns``, or compute ``psum(sum of weighted losses) / psum(sum of weights)``), or its local mean when
every device holds the same number of valid examples. Gradients are averaged with one ``lax.pmean`` per step, after
accumulation, which makes the result equal to the single-device gradient of the global batch.

Gradient accumulation (``grad_accum = A``, a static setting: one compilation for the whole run) runs ``lax.scan`` over
``A`` micro-batches inside the one compiled step, rather than ``optax.MultiSteps``: the optimizer, its state and the
learning-rate schedule then count real updates, the micro-batch keys are explicit, and gradients are reduced across
devices once per update. Micro-batch ``a`` holds rows ``a, a + A, a + 2A, ...`` of the batch: this strided split gives
the same micro-batches whether it is applied to the global batch or to each device's contiguous shard, so
accumulation and data parallelism compose exactly. Micro-batch gradients are weighted by their number of valid
examples (``G = sum_a n_a g_a / sum_a n_a``), so a per-example-mean loss gives the gradient of the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from hnjax import parallel
from hnjax.train import state as state_lib


def split_micro_batches(batch: Any, grad_accum: int) -> Any:
    """Strided split of a batch into micro-batches: ``[A * B, ...] -> [A, B, ...]``, micro-batch ``a`` = rows ``a::A``.

    Args:
      batch: pytree of arrays with leading axis ``A * B``.
      grad_accum: ``A``.

    Returns:
      The same pytree with leaves ``[A, B, ...]``.
    """

    def split(x):
        if x.shape[0] % grad_accum:
            raise ValueError(f"batch leading axis {x.shape[0]} is not divisible by grad_accum={grad_accum}")
        x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _example_weight(batch: Any, axis_name: str | None) -> jax.Array:
    """Number of valid examples of a (micro-)batch over all devices, float32."""
    valid = batch.get(parallel.VALID_KEY) if isinstance(batch, dict) else None
    if valid is None:
        leaf = jax.tree.leaves(batch)[0]
        count = jnp.asarray(leaf.shape[0], jnp.float32)
    else:
        count = jnp.sum(valid.astype(jnp.float32))
    return count if axis_name is None else lax.psum(count, axis_name)


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    grad_accum: int = 1,
    axis_name: str | None = None,
    schedule: optax.Schedule | None = None,
) -> Callable[[state_lib.TrainState, Any], tuple[state_lib.TrainState, dict[str, jax.Array]]]:
    """Build the pure training step.

    Per step, with ``key = fold_in(state.rng, state.step)`` (and ``fold_in(key, a)`` for micro-batch ``a`` when
    ``A > 1``; ``fold_in(key, device index)`` in data-parallel runs):
    ``G = pmean_devices(sum_a n_a grad L_a / sum_a n_a)``, then ``optimizer.update(G, ...)``. The update is applied
    only when the loss and ``|G|`` are finite; otherwise params and optimizer state are kept (the loop stops).

    Args:
      loss_fn: ``loss_fn(params, batch, key, axis_name=None) -> (scalar loss, dict of scalar aux)``.
      optimizer: optax transformation (e.g. from :func:`hnjax.train.state.make_optimizer`).
      grad_accum: micro-batches per update ``A`` (static); the batch leading axis is ``A * B``.
      axis_name: ``None`` on one device; ``"data"`` inside ``pmap``/``shard_map``.
      schedule: if given, the learning rate ``schedule(step)`` is reported as ``metrics["lr"]``.

    Returns:
      ``step(state, batch) -> (new_state, metrics)`` with metrics ``loss``, ``grad_norm`` (global L2 norm of ``G``
      before clipping), ``finite`` (1.0 or 0.0), ``examples`` (valid examples in the update), ``lr`` if a schedule is
      given, and every ``aux`` entry (averaged like the loss).

    Example:
      >>> import optax, jax.numpy as jnp
      >>> from hnjax.train import state as state_lib
      >>> loss = lambda p, b, k, axis_name=None: (jnp.mean((b["x"] * p["w"] - 1.0) ** 2), {})
      >>> opt = optax.sgd(0.1)
      >>> s = state_lib.create_train_state({"w": jnp.zeros(())}, opt, seed=0)
      >>> s, m = make_train_step(loss, opt)(s, {"x": jnp.ones(4)})
      >>> float(m["loss"])
      1.0
    """
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum: expected an int >= 1, got {grad_accum!r}")
    grad_fn = jax.value_and_grad(lambda p, b, k: loss_fn(p, b, k, axis_name=axis_name), has_aux=True)

    def accumulate(params, batch, key):
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(params, batch, key)
            return loss, aux, grads, _example_weight(batch, axis_name)
        micro = split_micro_batches(batch, grad_accum)
        shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), key)
        (loss_shape, aux_shape), grad_shape = shapes
        zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)

        def body(carry, xs):
            loss_acc, aux_acc, grad_acc, weight_acc = carry
            index, mb = xs
            (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(key, index))
            w = _example_weight(mb, axis_name)
            # A micro-batch of padding only (w = 0) may give a NaN mean; it must not contribute.
            add = lambda acc, x: acc + jnp.where(w > 0, w * x.astype(jnp.float32), 0.0)
            carry = (add(loss_acc, loss), jax.tree.map(add, aux_acc, aux), jax.tree.map(add, grad_acc, grads))
            return carry + (weight_acc + w,), None

        init = (zeros(loss_shape), zeros(aux_shape), zeros(grad_shape), jnp.zeros((), jnp.float32))
        (loss, aux, grads, weight), _ = lax.scan(body, init, (jnp.arange(grad_accum), micro))
        scale = 1.0 / jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g, s: (g * scale).astype(s.dtype), grads, grad_shape)
        return loss * scale, jax.tree.map(lambda a: a * scale, aux), grads, weight

    def train_step(state: state_lib.TrainState, batch: Any):
        key = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))
        loss, aux, grads, examples = accumulate(state.params, batch, key)
        if axis_name is not None:
            # One reduction per update; see the module docstring for why pmean gives the global-batch gradient.
            loss, aux, grads = lax.pmean((loss, aux, grads), axis_name)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)
        new_state = state.replace(
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            step=state.step + 1,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite.astype(jnp.float32),
            "examples": examples,
            **{k: jnp.asarray(v, jnp.float32) for k, v in aux.items()},
        }
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return train_step
