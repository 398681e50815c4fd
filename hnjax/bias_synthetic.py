"""Paper 1's synthetic gradient-bias experiment: a population, a tiny model trained on full CE, bias along its path.

A peaked label distribution (``synthetic_population``), a small model (``init_synthetic_model``) trained on full
cross-entropy (``synthetic_trajectory``), and the gradient bias of every negative sampler measured after each step
(``bias_along_trajectory``); ``synthetic_experiment`` runs one seed. ``experiments/bias_synthetic.py`` drives it over
many seeds.

References:
  Zhang & Stratos (2021), synthetic experiment (hard-nce-el ``gradient-bias/main.py``).
"""

from __future__ import annotations

import functools
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hnjax.bias import NegativeSampler, ce_gradient, dropped_weight, nce_gradient, tree_distance

# ---------------------------------------------------------------------------------------------------------------------
# Paper 1's synthetic experiment: a population, a tiny model trained on full CE, bias along its trajectory
# ---------------------------------------------------------------------------------------------------------------------


def synthetic_population(key: jax.Array, num_labels: int = 1000, temperature: float = 0.001) -> jax.Array:
    """pop = softmax(u / temperature), u ~ Uniform(0, 1)^N: a very peaked label distribution; float32 ``[N]``.

    References:
      hard-nce-el ``gradient-bias/main.py`` (``pop = torch.rand(num_labels) / temp``, softmax).
    """
    if num_labels < 2:
        raise ValueError(f"num_labels: expected >= 2, got {num_labels}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return jax.nn.softmax(jax.random.uniform(key, (num_labels,), jnp.float32) / temperature)


def init_synthetic_model(key: jax.Array, num_labels: int = 1000, dim: int = 300) -> dict:
    """Parameters of the input-free model e -> Linear(D, D) -> ReLU -> Linear(D, N), with PyTorch's default init.

    e ~ N(0, 1)^D (``nn.Embedding``); weights and biases of each Linear ~ U(-1/sqrt(D), 1/sqrt(D)) (``nn.Linear``),
    as in the official script, so the trajectory starts from the same distribution of models.

    Returns:
      ``{"e": [D], "w1": [D, D], "b1": [D], "w2": [D, N], "b2": [N]}`` float32.
    """
    if num_labels < 2 or dim < 1:
        raise ValueError(f"num_labels, dim: expected >= 2 and >= 1, got {num_labels}, {dim}")
    ke, k1, kb1, k2, kb2 = jax.random.split(key, 5)
    bound = 1.0 / math.sqrt(dim)

    def u(k, shape):
        return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

    return {
        "e": jax.random.normal(ke, (dim,), jnp.float32),
        "w1": u(k1, (dim, dim)),
        "b1": u(kb1, (dim,)),
        "w2": u(k2, (dim, num_labels)),
        "b2": u(kb2, (num_labels,)),
    }


def synthetic_scores(params: dict) -> jax.Array:
    """Logits of the synthetic model: (relu(e W1 + b1) W2 + b2) as one input row, float32 ``[1, N]``."""
    h = jax.nn.relu(params["e"] @ params["w1"] + params["b1"])  # [D]
    return (h @ params["w2"] + params["b2"])[None, :]


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "lr"))
def synthetic_trajectory(
    key: jax.Array, pop: jax.Array, params: dict, *, steps: int = 30, batch_size: int = 128, lr: float = 1e-3
):
    """Trains the synthetic model with Adam on the full CE of ``batch_size`` labels drawn from ``pop`` per step.

    Loss of a step = mean_i -log softmax(logits)_{y_i}, y_i ~ pop iid. NCE is not used for training: the bias is
    measured along this trajectory.

    Args:
      key: a ``jax.random`` key for the label draws.
      pop: ``[N]`` population.
      params: initial parameters (``init_synthetic_model``).
      steps: Adam steps; lr: its learning rate; batch_size: labels per step.

    Returns:
      ``(stacked_params, train_loss)``: the parameters after each step, every leaf with a leading ``[steps]`` axis
      (index 0 = after step 1), and float32 ``[steps]`` training losses (before each update).

    References:
      hard-nce-el ``gradient-bias/main.py`` ``train`` (``torch.optim.Adam``, 30 steps, lr 1e-3, batch 128).
    """
    opt = optax.adam(lr)

    def step(carry, step_key):
        p, state = carry
        labels = jax.random.categorical(step_key, jnp.log(pop), shape=(batch_size,))

        def loss_fn(q):
            log_p = jax.nn.log_softmax(synthetic_scores(q)[0])
            return -jnp.mean(log_p[labels])

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), (p, loss)

    _, (trajectory, train_loss) = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return trajectory, train_loss


def population_entropy(pop: jax.typing.ArrayLike) -> float:
    """Entropy of ``pop`` in nats: the lowest CE any model can reach."""
    pop = np.asarray(pop, np.float64)
    nz = pop[pop > 0]
    return float(-(nz * np.log(nz)).sum())


def sampler_key(key: jax.Array, step: int, name: str) -> jax.Array:
    """The key of one sampler at one step, stable under adding or removing other samplers."""
    return jax.random.fold_in(jax.random.fold_in(key, step), zlib.crc32(name.encode()) & 0x7FFFFFFF)


def bias_along_trajectory(
    key: jax.Array,
    trajectory: dict,
    pop: jax.Array,
    samplers: dict[str, NegativeSampler],
    *,
    num_draws: int = 10,
    max_rows: int | None = None,
    score_fn=synthetic_scores,
    callback=None,
) -> dict[str, list[float]]:
    """Measures CE, the NCE objectives and their gradient bias at every step of a trajectory.

    Args:
      key: a ``jax.random`` key; step t and sampler ``name`` use ``sampler_key(key, t, name)``.
      trajectory: stacked parameters with a leading ``[steps]`` axis (``synthetic_trajectory``).
      pop: ``[N]`` population (or ``[B, N]`` joint weights of (input, gold) pairs for a ``score_fn`` with B rows).
      samplers: name -> negative distribution.
      num_draws: negative sets per (input, gold) row.
      max_rows: Monte Carlo over the ``max_rows`` heaviest (input, gold) rows only (see ``nce_loss``).
      score_fn: ``params -> scores [B, N]``.
      callback: called with no argument after every (step, sampler) evaluation (progress bars).

    Returns:
      ``{"ce_loss": [...], "<name>_nce_loss": [...], "<name>_bias": [...]}``, one float per step (index 0 = step 1).
    """
    pop = jnp.asarray(pop)
    pop2 = pop[None, :] if pop.ndim == 1 else pop
    steps = jax.tree.leaves(trajectory)[0].shape[0]
    out: dict[str, list[float]] = {"ce_loss": []}
    for name in samplers:
        out[f"{name}_nce_loss"], out[f"{name}_bias"] = [], []
    for t in range(steps):
        params = jax.tree.map(lambda x, t=t: x[t], trajectory)
        ce, g_ce = ce_gradient(score_fn, params, pop2)
        out["ce_loss"].append(float(ce))
        for name, sampler in samplers.items():
            nce, g = nce_gradient(
                score_fn,
                params,
                pop2,
                sampler_key(key, t, name),
                sampler=sampler,
                num_draws=num_draws,
                max_rows=max_rows,
            )
            out[f"{name}_nce_loss"].append(float(nce))
            out[f"{name}_bias"].append(float(tree_distance(g_ce, g)))
            if callback is not None:
                callback()
    return out


def synthetic_experiment(
    key: jax.Array,
    samplers: dict[str, NegativeSampler],
    *,
    num_labels: int = 1000,
    pop_temperature: float = 0.001,
    dim: int = 300,
    steps: int = 30,
    batch_size: int = 128,
    lr: float = 1e-3,
    num_draws: int = 10,
    max_rows: int | None = None,
    callback=None,
) -> dict:
    """Paper 1's synthetic gradient-bias experiment for one seed.

    Draws a population (``synthetic_population``), initialises the model (``init_synthetic_model``), trains it on
    full CE (``synthetic_trajectory``) and measures every sampler's NCE objective and gradient bias after each step
    (``bias_along_trajectory``). The defaults are those of the official script.

    Args:
      key: a ``jax.random`` key (e.g. ``jax.random.key(seed)``); split into population, init, training and
        negative-draw keys.
      samplers: name -> negative distribution, e.g. ``{"hard": NegativeSampler("model", k=4), "random":
        NegativeSampler("uniform", k=4)}``.
      num_labels, pop_temperature, dim, steps, batch_size, lr, num_draws, max_rows: see the functions above
        (``max_rows`` = None: every gold label is a row, as in the official script).
      callback: called after every (step, sampler) evaluation.

    Returns:
      dict with ``pop_entropy`` (nats), ``dropped_pop_mass`` (population mass outside the ``max_rows`` rows;
        0.0 = the same objective as with every row), ``train_loss`` [steps] and the per-step lists of
        ``bias_along_trajectory``.

    References:
      Zhang & Stratos (2021), synthetic experiment (hard-nce-el ``gradient-bias/main.py``).
    """
    k_pop, k_init, k_train, k_neg = jax.random.split(key, 4)
    pop = synthetic_population(k_pop, num_labels, pop_temperature)
    params = init_synthetic_model(k_init, num_labels, dim)
    trajectory, train_loss = synthetic_trajectory(k_train, pop, params, steps=steps, batch_size=batch_size, lr=lr)
    curves = bias_along_trajectory(
        k_neg, trajectory, pop, samplers, num_draws=num_draws, max_rows=max_rows, callback=callback
    )
    dropped = dropped_weight(pop, max_rows) if max_rows is not None else 0.0
    return {
        "pop_entropy": population_entropy(pop),
        "dropped_pop_mass": dropped,
        "train_loss": [float(x) for x in train_loss],
        **curves,
    }
