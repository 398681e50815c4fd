"""Paper 1's synthetic gradient-bias experiment: a population, a tiny model trained on full CE, bias along its path.

A peaked label distribution (``synthetic_population``), a small model (``init_synthetic_model``) trained on full
cross-entropy (``synthetic_trajectory``), and the gradient bias of every negative sampler measured after each step
(``bias_along_trajectory``); ``synthetic_experiment`` runs one seed with the negative samplers of
``experiment_samplers``, and ``summarize`` / ``average_over_seeds`` turn many seeds into the reported numbers.
``paper_figure`` holds the values of the paper's figures. ``experiments/bias_synthetic.py`` drives it over many seeds.

References:
  Zhang & Stratos (2021), synthetic experiment (hard-nce-el ``gradient-bias/main.py``).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hnjax import bias
from hnjax import eval as ev

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
    samplers: dict[str, bias.NegativeSampler],
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
        ce, g_ce = bias.ce_gradient(score_fn, params, pop2)
        out["ce_loss"].append(float(ce))
        for name, sampler in samplers.items():
            nce, g = bias.nce_gradient(
                score_fn,
                params,
                pop2,
                sampler_key(key, t, name),
                sampler=sampler,
                num_draws=num_draws,
                max_rows=max_rows,
            )
            out[f"{name}_nce_loss"].append(float(nce))
            out[f"{name}_bias"].append(float(bias.tree_distance(g_ce, g)))
            if callback is not None:
                callback()
    return out


def synthetic_experiment(
    key: jax.Array,
    samplers: dict[str, bias.NegativeSampler],
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
    dropped = bias.dropped_weight(pop, max_rows) if max_rows is not None else 0.0
    return {
        "pop_entropy": population_entropy(pop),
        "dropped_pop_mass": dropped,
        "train_loss": [float(x) for x in train_loss],
        **curves,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The experiment's sampler set, its summaries over seeds, and the paper's figure
# ---------------------------------------------------------------------------------------------------------------------

PAPER_FIGURE_FILE = "zhang_stratos_2021_gradient_bias.json"


def paper_figure() -> dict:
    """The per-step values of the paper's synthetic-experiment figures (one seed), shipped with the package.

    Returns:
      ``{"hard_bias", "random_bias", "ce_loss", "hard_nce_loss", "random_nce_loss": [30 floats, index 0 = step 1;
      None where the figure has no point], "pop_entropy": float}``.

    References:
      hard-nce-el ``gradient-bias/bias.pdf`` and ``loss.pdf`` (seed 42), read from their vector data
      (``hnjax/resources/zhang_stratos_2021_gradient_bias.json`` says so in its ``source`` field).
    """
    text = importlib.resources.files("hnjax").joinpath("resources", PAPER_FIGURE_FILE).read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "source"}


def experiment_samplers(
    num_negatives: int = 4,
    *,
    extensions: bool = True,
    hard_shares: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    candidates: Sequence[int] = (2, 5, 17, 65),
) -> tuple[dict[str, bias.NegativeSampler], dict]:
    """The negative distributions the experiment measures, and how the extension plots group them.

    Always ``"hard"`` (model distribution) and ``"random"`` (uniform) with ``num_negatives`` negatives, as in the
    paper. With ``extensions``: log-q corrected model-distribution negatives with and without replacement
    (``"hard_logq_replace"``, ``"hard_logq_noreplace"``), paper 1's mixed negatives with each hard share p
    (``"mixed_p<p>"``) and hard / random negatives for each number of candidates K (``"hard_K<K>"``, ``"random_K<K>"``;
    plain ``"hard"`` / ``"random"`` when K = num_negatives + 1).

    Returns:
      ``(samplers, groups)``: name -> sampler, and ``{"logq": [names], "hard_share": {p: name}, "K": {K: {"hard":
      name, "random": name}}}`` (empty without extensions).
    """
    k = num_negatives
    samplers = {"hard": bias.NegativeSampler("model", k=k), "random": bias.NegativeSampler("uniform", k=k)}
    groups: dict = {}
    if not extensions:
        return samplers, groups
    samplers["hard_logq_replace"] = bias.NegativeSampler("model", k=k, replace=True, log_q_correction="renormalized")
    samplers["hard_logq_noreplace"] = bias.NegativeSampler("model", k=k, log_q_correction="renormalized")
    groups["logq"] = ["hard", "hard_logq_replace", "hard_logq_noreplace"]
    groups["hard_share"] = {}
    for p in hard_shares:
        name = f"mixed_p{p:g}"
        samplers[name] = bias.NegativeSampler("mixed", k=k, hard_share=p)
        groups["hard_share"][p] = name
    groups["K"] = {}
    for big_k in candidates:
        names = {}
        for kind, base in (("hard", "model"), ("random", "uniform")):
            name = kind if big_k == k + 1 else f"{kind}_K{big_k}"
            samplers.setdefault(name, bias.NegativeSampler(base, k=big_k - 1))
            names[kind] = name
        groups["K"][big_k] = names
    return samplers, groups


def window_mean(values: Sequence[float], lo: int, hi: int) -> float | None:
    """Mean of ``values`` at steps lo..hi (1-based, inclusive); None when the run is shorter than lo."""
    part = values[lo - 1 : hi]
    return float(np.mean(part)) if len(values) >= lo else None


def summarize_seed(run: dict) -> dict:
    """The numbers the paper's claims are judged on, for one seed's :func:`synthetic_experiment` result."""
    steps = len(run["ce_loss"])
    gap = np.abs(np.asarray(run["hard_nce_loss"]) - np.asarray(run["ce_loss"]))
    return {
        "pop_entropy": run["pop_entropy"],
        "dropped_pop_mass": run["dropped_pop_mass"],
        "hard_bias_mean_steps20_30": window_mean(run["hard_bias"], 20, 30),
        "random_bias_mean_steps20_30": window_mean(run["random_bias"], 20, 30),
        "hard_bias_last": run["hard_bias"][-1],
        "random_bias_last": run["random_bias"][-1],
        "hard_below_random_last": run["hard_bias"][-1] < run["random_bias"][-1],
        "max_abs_hard_loss_minus_ce_steps15_30": float(gap[14:30].max()) if steps >= 15 else None,
        "last_step": steps,
    }


def summarize(per_seed: dict) -> dict:
    """Per-seed summaries, the paper's claims over seeds (hard-NCE bias below random-NCE on every seed, hard-NCE loss
    close to CE) and mean ± std of each summary and of every sampler's bias."""
    s = {seed: summarize_seed(r) for seed, r in per_seed.items()}
    hb = [x["hard_bias_mean_steps20_30"] for x in s.values()]
    rb = [x["random_bias_mean_steps20_30"] for x in s.values()]
    gaps = [x["max_abs_hard_loss_minus_ce_steps15_30"] for x in s.values()]
    full = all(x["last_step"] >= 30 for x in s.values())
    out = {
        "per_seed": s,
        "claims (need --steps >= 30)": {
            "hard_mean_bias_below_random_on_every_seed (steps 20-30)": all(h < r for h, r in zip(hb, rb))
            if full
            else None,
            "seeds_with_hard_below_random_at_last_step": sum(x["hard_below_random_last"] for x in s.values()),
            "num_seeds": len(s),
            "median_max_abs_hard_loss_minus_ce_steps15_30": float(np.median(gaps)) if full else None,
        },
    }
    for key in (
        "hard_bias_mean_steps20_30",
        "random_bias_mean_steps20_30",
        "hard_bias_last",
        "random_bias_last",
        "max_abs_hard_loss_minus_ce_steps15_30",
        "pop_entropy",
    ):
        out[key] = ev.mean_std([x[key] for x in s.values()])
    names = sorted({n for r in per_seed.values() for n in r if n.endswith("_bias")})
    out["bias_mean_steps20_30_by_sampler"] = {
        n[: -len("_bias")]: ev.mean_std([window_mean(r[n], 20, 30) for r in per_seed.values()]) for n in names
    }
    out["bias_last_step_by_sampler"] = {
        n[: -len("_bias")]: ev.mean_std([r[n][-1] for r in per_seed.values()]) for n in names
    }
    return out


def average_over_seeds(per_seed: dict) -> dict[str, list[float]]:
    """Per-step mean and sample std (``<key>_std``) over seeds of every curve of :func:`synthetic_experiment`."""
    runs = list(per_seed.values())
    keys = [k for k in runs[0] if k not in ("pop_entropy", "dropped_pop_mass")]
    out = {key: np.mean([r[key] for r in runs], axis=0).tolist() for key in keys}
    ddof = min(1, len(runs) - 1)
    out.update({f"{key}_std": np.std([r[key] for r in runs], axis=0, ddof=ddof).tolist() for key in keys})
    return out
