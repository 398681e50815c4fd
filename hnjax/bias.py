"""The gradient bias of NCE with respect to full cross-entropy, for any score function.

Zhang & Stratos (2021) view the NCE gradient as a biased estimate of the full cross-entropy gradient and show that
drawing the negatives from the model distribution (hard negatives) reduces that bias. This module provides:

* ``NegativeSampler``, a static description of a negative distribution (one of the samplers of
  :mod:`hnjax.samplers`) and of its log-q correction;
* the objectives ``ce_loss``, ``nce_loss`` (Monte Carlo) and ``nce_loss_exact`` (enumeration), their gradients
  ``ce_gradient`` / ``nce_gradient`` for any score function ``params -> scores [B, N]``, and ``gradient_bias`` =
  ||grad J_CE - grad J_NCE||_2 over all parameters.

The paper's synthetic experiment built from these is :mod:`hnjax.bias_synthetic`.

Shapes: B rows (inputs, or (input, gold) pairs), N labels, k sampled negatives per row, K = k + 1 candidates.

References:
  Zhang, W. & Stratos, K. (2021). Understanding Hard Negatives in Noise Contrastive Estimation. NAACL-HLT 2021,
  1090-1101. https://aclanthology.org/2021.naacl-main.86 (official code: github.com/WenzhengZhang/hard-nce-el).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import losses, samplers

# ---------------------------------------------------------------------------------------------------------------------
# A negative distribution as a static value, and the losses it defines
# ---------------------------------------------------------------------------------------------------------------------

_KINDS = ("uniform", "model", "top_k", "mixed")
_CORRECTIONS = ("none", "renormalized", "unrenormalized")


@dataclasses.dataclass(frozen=True)
class NegativeSampler:
    """How the k negatives of every (input, gold) row are drawn, and whether NCE corrects for it.

    A frozen (hashable) description, passed to the jitted bias functions as a static argument.

    Attributes:
      kind: ``"uniform"`` (``uniform_negatives``), ``"model"`` (``model_negatives``), ``"top_k"``
        (``top_k_negatives``) or ``"mixed"`` (``mixed_negatives`` with ``hard_share``).
      k: negatives per row (K = k + 1 candidates with the gold).
      replace: draw with replacement (``uniform`` and ``model`` only).
      temperature: model-distribution temperature (``model``).
      smoothing: weight of the uniform distribution mixed into the model distribution (``model``).
      hard_share: share p of top-scoring negatives (``mixed``).
      log_q_correction: ``"none"`` (plain NCE, the paper's "Random" / "Hard" NCE); ``"renormalized"``: the scores of
        the negatives become s - log((K - 1) q) with q the sampling distribution, renormalised over the labels that
        are not excluded (exact at the optimum with replacement); ``"unrenormalized"``: the same with q before the
        gold is excluded (e.g. softmax over all labels, as hard-nce-el's ``hard_adjusted_negative``).
    """

    kind: str = "uniform"
    k: int = 4
    replace: bool = False
    temperature: float = 1.0
    smoothing: float = 0.0
    hard_share: float = 0.0
    log_q_correction: str = "none"

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k: expected an int >= 1, got {self.k!r}")
        if self.log_q_correction not in _CORRECTIONS:
            raise ValueError(f"log_q_correction: expected one of {_CORRECTIONS}, got {self.log_q_correction!r}")
        if self.kind in ("top_k", "mixed"):
            if self.replace:
                raise ValueError(f"replace: kind {self.kind!r} draws without replacement, got replace=True")
            if self.log_q_correction != "none":
                raise ValueError(f"log_q_correction: kind {self.kind!r} has no q, got {self.log_q_correction!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"smoothing: expected a value in [0, 1], got {self.smoothing}")
        samplers.mixed_hard_count(self.k, self.hard_share)  # validates hard_share

    def log_q(self, scores: jax.Array, exclude: jax.Array) -> jax.Array:
        """log q [B, N] of one draw of a ``uniform`` or ``model`` sampler (-inf on excluded labels)."""
        if self.kind == "uniform":
            return samplers.masked_log_softmax(jnp.zeros(exclude.shape, jnp.float32), exclude)
        if self.kind == "model":
            return samplers.model_log_q(
                jax.lax.stop_gradient(scores.astype(jnp.float32)), exclude, self.temperature, self.smoothing
            )
        raise ValueError(f"kind: {self.kind!r} has no sampling distribution q")

    def sample(self, key: jax.Array, scores: jax.Array, exclude: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Draws ``(ids int32 [B, k], log_q float32 [B, k] or None)`` for rows ``scores`` / ``exclude`` [B, N].

        ``log_q`` is None without a log-q correction; otherwise it is the log q that the correction uses.
        """
        if self.kind == "uniform":
            ids, log_q = samplers.uniform_negatives(key, exclude, self.k, replace=self.replace)
        elif self.kind == "model":
            ids, log_q = samplers.model_negatives(
                key,
                scores,
                exclude,
                self.k,
                temperature=self.temperature,
                smoothing=self.smoothing,
                replace=self.replace,
            )
        elif self.kind == "top_k":
            return samplers.top_k_negatives(scores, exclude, self.k), None
        else:
            return samplers.mixed_negatives(key, scores, exclude, self.k, hard_share=self.hard_share), None
        if self.log_q_correction == "none":
            return ids, None
        if self.log_q_correction == "unrenormalized":
            log_q = jnp.take_along_axis(self.log_q(scores, jnp.zeros_like(exclude)), ids, axis=1)
        return ids, jax.lax.stop_gradient(log_q)


def _candidate_nll(scores: jax.Array, rows: jax.Array, gold: jax.Array, ids: jax.Array, log_q) -> jax.Array:
    """-log pi(gold) over the K = k + 1 candidates of each row, via ``hnjax.losses.nce``; [R]."""
    cand = jnp.concatenate([gold[:, None], ids], axis=1)  # [R, K]
    s = scores[rows[:, None], cand]  # [R, K]; the gradient flows back into scores [B, N]
    if log_q is not None:
        log_q = jnp.concatenate([jnp.zeros_like(log_q[:, :1]), log_q], axis=1)
    return losses.nce(s, log_q=log_q, reduction="none")


def _rows(scores: jax.Array, pop: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """All (input b, gold y) pairs: input index, gold, weight pop[b, y], exclude mask (one-hot gold); R = B N."""
    if scores.ndim != 2:
        raise ValueError(f"scores: expected [B, N], got shape {scores.shape}")
    if pop.shape != scores.shape:
        raise ValueError(f"pop: expected shape [B, N] = {scores.shape} (that of scores), got {pop.shape}")
    b, n = scores.shape
    rows = jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)  # [R]
    gold = jnp.tile(jnp.arange(n, dtype=jnp.int32), b)  # [R]
    exclude = jax.nn.one_hot(gold, n, dtype=jnp.bool_)  # [R, N]
    return rows, gold, pop.reshape(-1).astype(jnp.float32), exclude


def dropped_weight(pop: jax.typing.ArrayLike, max_rows: int) -> float:
    """Total weight of the (input, gold) rows that ``max_rows`` leaves out (0.0 means the estimate is unchanged)."""
    w = np.sort(np.asarray(pop, np.float64).reshape(-1))[::-1]
    return float(w[max_rows:].sum())


def ce_loss(scores: jax.typing.ArrayLike, pop: jax.typing.ArrayLike) -> jax.Array:
    """Full cross-entropy J_CE = sum_{b, y} pop[b, y] * -log softmax(s_b)_y.

    Args:
      scores: ``[B, N]`` scores s_by of label y for input b.
      pop: ``[B, N]`` population weights pop(x_b, y) (summing to 1 for an expectation).

    Returns:
      float32 scalar.

    Example:
      >>> float(ce_loss(jnp.zeros((1, 4)), jnp.full((1, 4), 0.25)))  # log 4
      1.386...
    """
    scores, pop = jnp.asarray(scores), jnp.asarray(pop)
    _rows(scores, pop)  # validates
    return -jnp.sum(pop * jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1))


def nce_loss(
    key: jax.Array,
    scores: jax.typing.ArrayLike,
    pop: jax.typing.ArrayLike,
    sampler: NegativeSampler,
    *,
    num_draws: int = 10,
    max_rows: int | None = None,
) -> jax.Array:
    """Monte-Carlo NCE objective J_h = sum_{b, y} pop[b, y] * E_{negatives ~ h(. | b, y)} [-log pi(gold)].

    pi is the softmax over the K = k + 1 candidates (gold y and its k negatives, gold excluded from the negatives;
    with the sampler's log-q correction if it has one). Every (b, y) row draws ``num_draws`` independent negative
    sets (vmapped); the expectation is their mean. The negative distribution is treated as fixed: no gradient flows
    through the sampling (nor through log q).

    Args:
      key: a ``jax.random`` key.
      scores: ``[B, N]`` scores; every (b, y) pair is a row, so the work is B * N rows of N labels.
      pop: ``[B, N]`` population weights of the (input, gold) pairs.
      sampler: the negative distribution (``NegativeSampler``).
      num_draws: negative sets drawn per row.
      max_rows: evaluate only the ``max_rows`` (b, y) rows of largest weight (chosen under jit by ``lax.top_k``).
        Exact when every other row has weight 0, as for a peaked population whose float32 tail underflows; in
        general it drops the lightest rows (their total weight is ``dropped_weight(pop, max_rows)``).

    Returns:
      float32 scalar.

    References:
      Zhang & Stratos (2021), eq. of J_h; hard-nce-el ``gradient-bias/main.py`` ``Model.sampled_loss`` (gold
      weighted by the population, ``monte_carlo`` draws per gold averaged).
    """
    scores, pop = jnp.asarray(scores), jnp.asarray(pop)
    rows, gold, weight, exclude = _rows(scores, pop)
    if num_draws < 1:
        raise ValueError(f"num_draws: expected >= 1, got {num_draws}")
    if max_rows is not None:
        if max_rows < 1:
            raise ValueError(f"max_rows: expected None or >= 1, got {max_rows}")
        if max_rows < rows.shape[0]:
            weight, keep = jax.lax.top_k(weight, max_rows)  # [R'] heaviest rows
            rows, gold, exclude = rows[keep], gold[keep], exclude[keep]
    row_scores = jax.lax.stop_gradient(scores)[rows]  # [R, N], what the sampler sees

    def one_draw(draw_key):
        ids, log_q = sampler.sample(draw_key, row_scores, exclude)
        return jnp.sum(weight * _candidate_nll(scores, rows, gold, ids, log_q))

    return jnp.mean(jax.vmap(one_draw)(jax.random.split(key, num_draws)))


_MAX_TUPLES = 200_000


def nce_loss_exact(scores: jax.typing.ArrayLike, pop: jax.typing.ArrayLike, sampler: NegativeSampler) -> jax.Array:
    """The NCE objective J_h of ``nce_loss`` with the expectation over negatives computed exactly, by enumeration.

    Enumerates every ordered k-tuple t of labels and its probability under the sampler: prod_j q(t_j) with
    replacement; the Plackett-Luce probability prod_j q(t_j) / (1 - sum_{i<j} q(t_i)) without (distinct t only);
    for ``top_k`` the one tuple of the top-k ids; for ``mixed`` the hard ids followed by every ordered tuple of
    distinct random ones. For small label sets only (N^k up to 200,000 tuples).

    Args:
      scores: ``[B, N]`` scores.
      pop: ``[B, N]`` population weights of the (input, gold) pairs.
      sampler: the negative distribution (``NegativeSampler``).

    Returns:
      float32 scalar.
    """
    scores, pop = jnp.asarray(scores), jnp.asarray(pop)
    rows, gold, weight, exclude = _rows(scores, pop)
    n, k = scores.shape[1], sampler.k
    samplers.check_exclude(exclude, k)
    row_scores = jax.lax.stop_gradient(scores)[rows]  # [R, N]
    if sampler.kind == "top_k":
        ids, _ = sampler.sample(jax.random.key(0), row_scores, exclude)
        return jnp.sum(weight * _candidate_nll(scores, rows, gold, ids, None))
    prefix = None
    if sampler.kind == "mixed":
        h = samplers.mixed_hard_count(k, sampler.hard_share)
        prefix = samplers.top_k_negatives(row_scores, exclude, h) if h else None  # [R, h]
        if h:
            exclude = exclude.at[jnp.arange(exclude.shape[0])[:, None], prefix].set(True)
        k = k - h
        log_q = samplers.masked_log_softmax(jnp.zeros(exclude.shape, jnp.float32), exclude)
        replace = False
    else:
        log_q = sampler.log_q(row_scores, exclude)  # [R, N]
        replace = sampler.replace
    if n**k > _MAX_TUPLES:
        raise ValueError(f"sampler: N^k = {n}^{k} tuples to enumerate, more than {_MAX_TUPLES}; use nce_loss")
    if k:
        tuples = np.stack(np.unravel_index(np.arange(n**k), (n,) * k), axis=1).astype(np.int32)  # [T, k]
    else:
        tuples = np.zeros((1, 0), np.int32)
    distinct = np.array([len(set(t)) == len(t) for t in tuples.tolist()])  # [T]
    tuples = jnp.asarray(tuples)
    lq = log_q[:, tuples]  # [R, T, k]
    if replace:
        log_p = jnp.sum(lq, axis=-1)  # [R, T]
    else:
        q = jnp.exp(lq)
        used = jnp.cumsum(q, axis=-1) - q  # mass already drawn before slot j
        log_p = jnp.sum(lq - jnp.log1p(-jnp.minimum(used, 1.0 - 1e-7)), axis=-1)
        log_p = jnp.where(jnp.asarray(distinct)[None, :], log_p, -jnp.inf)
    prob = jax.lax.stop_gradient(jnp.exp(log_p))  # [R, T]
    r, t = prob.shape
    ids = jnp.broadcast_to(tuples[None], (r, t, k))
    if prefix is not None:
        ids = jnp.concatenate([jnp.broadcast_to(prefix[:, None, :], (r, t, prefix.shape[1])), ids], axis=-1)
    corr = None
    if sampler.log_q_correction != "none":
        corr_q = (
            log_q if sampler.log_q_correction == "renormalized" else sampler.log_q(row_scores, jnp.zeros_like(exclude))
        )
        corr = jnp.take_along_axis(corr_q[:, None, :], tuples[None], axis=-1)  # [R, T, k]
        corr = jnp.where(prob[..., None] > 0, corr, 0.0).reshape(r * t, k)
    nll = _candidate_nll(scores, jnp.repeat(rows, t), jnp.repeat(gold, t), ids.reshape(r * t, -1), corr)
    return jnp.sum(weight * jnp.sum(prob * nll.reshape(r, t), axis=1))


# ---------------------------------------------------------------------------------------------------------------------
# Gradients and their bias for any score function
# ---------------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0,))
def ce_gradient(score_fn, params, pop: jax.typing.ArrayLike):
    """Exact cross-entropy objective and its gradient: (J_CE, grad_params J_CE).

    grad J_CE = sum_{b, y} pop[b, y] (-grad s_by + sum_y' p_theta(y' | x_b) grad s_by').

    Args:
      score_fn: ``params -> scores [B, N]``, any differentiable function (a Flax ``apply`` wrapped in a function,
        a plain pytree function); pass the same function object each call to reuse the compiled code.
      params: the parameter pytree.
      pop: ``[B, N]`` population weights of the (input, gold) pairs.

    Returns:
      ``(loss, grads)``: float32 scalar and a pytree like ``params``.
    """
    return jax.value_and_grad(lambda p: ce_loss(score_fn(p), pop))(params)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("sampler", "num_draws", "exact", "max_rows"))
def nce_gradient(
    score_fn,
    params,
    pop,
    key=None,
    *,
    sampler: NegativeSampler,
    num_draws: int = 10,
    exact: bool = False,
    max_rows: int | None = None,
):
    """NCE objective and its gradient: (J_h, grad_params J_h), Monte Carlo over negative draws or exact.

    grad J_h = sum_{b, y} pop[b, y] E_negatives [-grad s_by + sum_k pi(k) grad s_{b, y_k}] with the negative
    distribution h held fixed. ``exact=True`` enumerates the negative sets (``nce_loss_exact``; small N); otherwise
    ``num_draws`` sets per (b, y) row are drawn with ``key`` (``nce_loss``).

    Args:
      score_fn: ``params -> scores [B, N]``.
      params: the parameter pytree.
      pop: ``[B, N]`` population weights of the (input, gold) pairs.
      key: a ``jax.random`` key (unused when ``exact``).
      sampler: the negative distribution (static).
      num_draws: negative sets per row for the Monte-Carlo estimate (static).
      exact: enumerate instead of sampling (static).
      max_rows: Monte Carlo over the ``max_rows`` heaviest (b, y) rows only (static; see ``nce_loss``).

    Returns:
      ``(loss, grads)``: float32 scalar and a pytree like ``params``.
    """
    if exact:
        fn = lambda p: nce_loss_exact(score_fn(p), pop, sampler)  # noqa: E731
    else:
        if key is None:
            raise ValueError("key: a jax.random key is needed for the Monte-Carlo estimate (or pass exact=True)")
        fn = lambda p: nce_loss(key, score_fn(p), pop, sampler, num_draws=num_draws, max_rows=max_rows)  # noqa: E731
    return jax.value_and_grad(fn)(params)


def tree_distance(a, b) -> jax.Array:
    """Euclidean distance ||a - b||_2 between two pytrees of the same structure, over all their leaves."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b))
    return jnp.sqrt(sum(leaves))


class Bias(NamedTuple):
    """Result of ``gradient_bias``: ||grad J_CE - grad J_h||_2 and both objectives."""

    bias: jax.Array
    ce_loss: jax.Array
    nce_loss: jax.Array


def gradient_bias(
    score_fn,
    params,
    pop,
    key=None,
    *,
    sampler: NegativeSampler,
    num_draws: int = 10,
    exact: bool = False,
    max_rows: int | None = None,
) -> Bias:
    """Gradient bias of NCE: ||grad J_CE(theta) - grad J_h(theta)||_2 over all parameters.

    With ``exact=False`` the NCE gradient is a Monte-Carlo estimate, so the result also holds its sampling error
    (it shrinks as 1/sqrt(num_draws * rows)); ``exact=True`` gives the bias itself for small label sets.

    Args:
      score_fn: ``params -> scores [B, N]``, any differentiable score function.
      params: the parameter pytree (a Flax variable dict or any pytree).
      pop: ``[B, N]`` population weights of the (input, gold) pairs.
      key: a ``jax.random`` key for the negative draws.
      sampler: the negative distribution (``NegativeSampler``).
      num_draws: negative sets per (input, gold) row.
      exact: enumerate the negative sets instead of sampling.
      max_rows: Monte Carlo over the ``max_rows`` heaviest (input, gold) rows only (see ``nce_loss``).

    Returns:
      ``Bias(bias, ce_loss, nce_loss)`` of float32 scalars.

    Example:
      >>> pop = jnp.array([[0.5, 0.3, 0.2]])
      >>> score_fn = lambda theta: theta[None, :]
      >>> out = gradient_bias(score_fn, jnp.log(pop[0]), pop, sampler=NegativeSampler("uniform", k=1), exact=True)
      >>> round(float(out.bias), 6)
      0.0

    References:
      Zhang & Stratos (2021), section 3 (bias of the NCE gradient) and the synthetic experiment (hard-nce-el
      ``gradient-bias/main.py``: ``torch.norm(grad_xent - grad_hard)``).
    """
    ce, g_ce = ce_gradient(score_fn, params, pop)
    nce, g_nce = nce_gradient(
        score_fn, params, pop, key, sampler=sampler, num_draws=num_draws, exact=exact, max_rows=max_rows
    )
    return Bias(tree_distance(g_ce, g_nce), ce, nce)
