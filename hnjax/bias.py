"""Negative samplers and the gradient bias of NCE with respect to full cross-entropy.

Zhang & Stratos (2021) view the NCE gradient as a biased estimate of the full cross-entropy gradient and show that
drawing the negatives from the model distribution (hard negatives) reduces that bias. This module provides:

* negative samplers over a finite label set, each returning the sampled label ids (and, where the distribution is
  stochastic, their log-probabilities ``log q`` for the log-q corrected NCE of ``hnjax.losses.nce``):
  ``uniform_negatives``, ``model_negatives``, ``top_k_negatives`` and ``mixed_negatives``;
* ``NegativeSampler``, a static description of a negative distribution (and of its log-q correction);
* the objectives ``ce_loss``, ``nce_loss`` (Monte Carlo) and ``nce_loss_exact`` (enumeration), their gradients
  ``ce_gradient`` / ``nce_gradient`` for any score function ``params -> scores [B, N]``, and ``gradient_bias`` =
  ||grad J_CE - grad J_NCE||_2 over all parameters;
* the pieces of the paper's synthetic experiment (``synthetic_population``, ``init_synthetic_model``,
  ``synthetic_trajectory``, ``bias_along_trajectory``, ``synthetic_experiment``).

Shapes: B rows (inputs, or (input, gold) pairs), N labels, k sampled negatives per row, K = k + 1 candidates.
``exclude`` is a boolean ``[B, N]`` mask, True where a label may never be sampled for that row (its gold and any
other positive).

Rows with fewer than k allowed labels (possible only when ``exclude`` is traced, so the count cannot be checked in
Python): the surplus slots hold an excluded label and their ``log_q`` is ``-inf``; find them with
``jnp.take_along_axis(exclude, ids, axis=1)``. A row with no allowed label at all gets excluded labels only.

References:
  Zhang, W. & Stratos, K. (2021). Understanding Hard Negatives in Noise Contrastive Estimation. NAACL-HLT 2021,
  1090-1101. https://aclanthology.org/2021.naacl-main.86 (official code: github.com/WenzhengZhang/hard-nce-el).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hnjax import losses

# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------------------


def _check_exclude(exclude: jax.Array, k: int, name: str = "exclude") -> tuple[int, int]:
    """Checks ``exclude`` [B, N] and the number of negatives ``k``; returns (B, N)."""
    if exclude.ndim != 2:
        raise ValueError(f"{name}: expected a [B, N] boolean array, got shape {exclude.shape}")
    if exclude.dtype != jnp.bool_:
        raise ValueError(f"{name}: expected dtype bool (True = never sample), got {exclude.dtype}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise ValueError(f"k: expected a Python int, got {type(k).__name__} {k!r}")
    b, n = exclude.shape
    if k < 1:
        raise ValueError(f"k: expected at least 1 negative, got {k}")
    if k > n - 1:
        raise ValueError(f"k: expected at most N - 1 = {n - 1} negatives (every row excludes its gold), got {k}")
    if not isinstance(exclude, jax.core.Tracer):
        allowed = np.asarray(~exclude).sum(axis=1)
        if b and allowed.min() < k:
            row = int(allowed.argmin())
            raise ValueError(
                f"k: row {row} of {name} allows only {int(allowed[row])} labels, fewer than k = {k} negatives"
            )
    return b, n


def _check_scores(scores: jax.Array, exclude: jax.Array) -> jax.Array:
    if scores.ndim != 2 or scores.shape != exclude.shape:
        raise ValueError(f"scores: expected shape [B, N] = {exclude.shape} (that of exclude), got {scores.shape}")
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise ValueError(f"scores: expected a floating dtype, got {scores.dtype}")
    return scores.astype(jnp.float32)


def _masked_log_softmax(logits: jax.Array, exclude: jax.Array) -> jax.Array:
    """log softmax over the allowed labels of each row; -inf on excluded labels (and on rows with none allowed)."""
    masked = jnp.where(exclude, -jnp.inf, logits)
    lse = jax.nn.logsumexp(masked, axis=-1, keepdims=True)  # [B, 1], -inf for a row with nothing allowed
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    return jnp.where(exclude, -jnp.inf, logits - lse)


def _draw(key: jax.Array, log_q: jax.Array, k: int, replace: bool) -> tuple[jax.Array, jax.Array]:
    """Draws k ids per row from exp(log_q) [B, N]; returns ids int32 [B, k] and their log_q [B, k]."""
    if replace:
        # Inverse CDF: O(B (N + k log N)) memory and time, where categorical() would draw [k, B, N] Gumbel noise.
        # Excluded labels have zero mass, so a flat stretch of the CDF is never the first entry above u.
        cdf = jnp.cumsum(jnp.exp(log_q), axis=-1)  # [B, N]
        u = jax.random.uniform(key, (log_q.shape[0], k), dtype=jnp.float32) * cdf[:, -1:]  # [B, k]
        ids = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cdf, u)
        ids = jnp.minimum(ids, log_q.shape[1] - 1)
    else:
        # Gumbel top-k: the k largest of log q + Gumbel noise are k successive draws without replacement from q
        # (each draw renormalising q over the labels not yet drawn), in the order they were drawn.
        gumbel = jax.random.gumbel(key, log_q.shape, dtype=jnp.float32)
        _, ids = jax.lax.top_k(log_q + gumbel, k)
    ids = ids.astype(jnp.int32)
    return ids, jnp.take_along_axis(log_q, ids, axis=1)


# ---------------------------------------------------------------------------------------------------------------------
# Negative samplers
# ---------------------------------------------------------------------------------------------------------------------


def uniform_negatives(
    key: jax.Array, exclude: jax.typing.ArrayLike, k: int, *, replace: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Draws k negatives per row uniformly from the labels that are not excluded ("random negatives").

    q_b(y) = 1 / M_b for every allowed label y of row b (M_b = number of allowed labels), 0 for excluded labels.
    Without replacement the k ids are a uniformly random k-subset, in random order (Gumbel top-k); with replacement
    they are k independent draws from q_b.

    Args:
      key: a ``jax.random`` key.
      exclude: bool ``[B, N]``, True where a label may never be sampled (the gold and any other positive).
      k: number of negatives per row, 1 <= k <= N - 1 and at most the number of allowed labels of every row.
      replace: draw with replacement (ids may repeat) instead of without.

    Returns:
      ``(ids, log_q)``: int32 ``[B, k]`` label ids and float32 ``[B, k]`` log q_b(id) = -log M_b, the log-probability
      of one draw (see ``model_negatives`` for what this means without replacement).

    Example:
      >>> exclude = jnp.eye(4, dtype=bool)  # row b has gold b
      >>> ids, log_q = uniform_negatives(jax.random.key(0), exclude, 2)
      >>> ids.shape, float(log_q[0, 0]) == -math.log(3)
      ((4, 2), True)

    References:
      Zhang & Stratos (2021), random negatives ("Random NCE" of the synthetic experiment; ``random.sample`` over all
      entities but the gold in hard-nce-el ``data_retriever.py``).
    """
    exclude = jnp.asarray(exclude)
    _check_exclude(exclude, k)
    return _uniform_draw(key, exclude, k, replace)


def _uniform_draw(key: jax.Array, exclude: jax.Array, k: int, replace: bool) -> tuple[jax.Array, jax.Array]:
    """Uniform draws over the allowed labels in integer arithmetic: O(B (N + k^2)) work and only B k random numbers.

    Without replacement, slot j draws a rank r uniform in [0, M - j) among the allowed labels not drawn yet, shifts
    it past the j ranks already drawn (sorted s_1 < ... < s_j: r += #{i : s_i - (i - 1) <= r}), and maps the rank
    to its label id through the running count of allowed labels.
    """
    b, n = exclude.shape
    allowed = ~exclude
    count = jnp.cumsum(allowed, axis=1, dtype=jnp.int32)  # [B, N], allowed labels up to and including each id
    m = count[:, -1]  # [B]
    to_label = jax.vmap(lambda c, r: jnp.searchsorted(c, r + 1, side="left"))  # rank (0-based) -> label id
    if replace:
        ranks = jax.random.randint(key, (b, k), 0, jnp.maximum(m, 1)[:, None], dtype=jnp.int32)  # [B, k]
    else:
        big = jnp.iinfo(jnp.int32).max // 2

        pos = jnp.arange(k, dtype=jnp.int32)[None, :]  # [1, k]

        def slot(j, carry):
            ranks, drawn, key = carry  # drawn: the ranks so far in increasing order, then `big`
            key, sub = jax.random.split(key)
            r = jax.random.randint(sub, (b,), 0, jnp.maximum(m - j, 1), dtype=jnp.int32)  # [B]
            below = jnp.sum(drawn - pos <= r[:, None], axis=1, dtype=jnp.int32)  # [B]
            r = r + below  # r is now the below-th smallest of the drawn ranks: insert it there
            before = jnp.concatenate([drawn[:, :1], drawn[:, :-1]], axis=1)
            drawn = jnp.where(pos < below[:, None], drawn, jnp.where(pos == below[:, None], r[:, None], before))
            return ranks.at[:, j].set(r), drawn, key

        init = jnp.full((b, k), big, jnp.int32)
        ranks, _, _ = jax.lax.fori_loop(0, k, slot, (init, init, key))
    ids = to_label(count, ranks).astype(jnp.int32)  # [B, k]
    # Slots beyond a row's allowed labels (possible only under jit) get its first excluded label and log q = -inf.
    valid = jnp.arange(k)[None, :] < m[:, None] if not replace else jnp.broadcast_to(m[:, None] > 0, (b, k))
    ids = jnp.where(valid, ids, jnp.argmax(exclude, axis=1).astype(jnp.int32)[:, None])
    log_q = jnp.where(valid, -jnp.log(jnp.maximum(m, 1).astype(jnp.float32))[:, None], -jnp.inf)
    return ids, log_q


def model_negatives(
    key: jax.Array,
    scores: jax.typing.ArrayLike,
    exclude: jax.typing.ArrayLike,
    k: int,
    *,
    temperature: float = 1.0,
    smoothing: float = 0.0,
    replace: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Draws k negatives per row from the model distribution over the allowed labels ("hard negatives").

    q_b(y) = (1 - smoothing) * softmax_{y' allowed}(s_by' / temperature)_y + smoothing / M_b for allowed y, 0 for
    excluded y, i.e. the model distribution restricted to the allowed labels and renormalised, mixed with the uniform
    distribution over them (M_b allowed labels).

    With replacement the ids are k independent draws from q_b and ``log_q`` is exactly their log-probability, so the
    log-q correction s - log((K - 1) q) of ``hnjax.losses.nce`` is the standard sampled-softmax correction (at the
    optimum p_theta = population it makes the expected NCE gradient exactly zero).

    Without replacement the ids are k successive draws, each from q_b renormalised over the labels not drawn yet
    (Plackett-Luce; computed by Gumbel top-k, the same law as ``torch.multinomial(q, k, replacement=False)``).
    ``log_q`` is then still log q_b(id), the probability of the label on a single draw, not its probability of being
    in the sample (which is not proportional to q); the log-q correction with it is an approximation.

    Args:
      key: a ``jax.random`` key.
      scores: ``[B, N]`` model scores s_by (logits of p_theta(y | x_b)); treated as constants (no gradient).
      exclude: bool ``[B, N]``, True where a label may never be sampled (the gold and any other positive).
      k: number of negatives per row, 1 <= k <= N - 1 and at most the number of allowed labels of every row.
      temperature: divides the scores before the softmax, > 0.
      smoothing: weight of the uniform distribution in the mixture, in [0, 1].
      replace: draw with replacement (ids may repeat) instead of without.

    Returns:
      ``(ids, log_q)``: int32 ``[B, k]`` label ids and float32 ``[B, k]`` log q_b(id).

    Example:
      >>> scores = jnp.array([[2.0, 1.0, 0.0, -1.0]])
      >>> exclude = jnp.array([[True, False, False, False]])  # gold 0
      >>> ids, log_q = model_negatives(jax.random.key(0), scores, exclude, 2)
      >>> bool((ids != 0).all())
      True

    References:
      Zhang & Stratos (2021): negatives from the model distribution, gold excluded and renormalised, without
      replacement (hard-nce-el ``gradient-bias/main.py``, ``Model.sampled_loss``; ``--type_cands hard_negative`` in
      ``data_retriever.py`` samples softmax(score * smoothing_value) with ``torch.multinomial``).
    """
    exclude = jnp.asarray(exclude)
    _check_exclude(exclude, k)
    scores = _check_scores(jnp.asarray(scores), exclude)
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing: expected a value in [0, 1], got {smoothing}")
    log_q = _model_log_q(jax.lax.stop_gradient(scores), exclude, temperature, smoothing)
    return _draw(key, log_q, k, replace)


def _model_log_q(scores: jax.Array, exclude: jax.Array, temperature: float, smoothing: float) -> jax.Array:
    """log q_b(y) of ``model_negatives`` [B, N] (-inf on excluded labels)."""
    log_p = _masked_log_softmax(scores / temperature, exclude)
    if smoothing > 0.0:
        log_u = _masked_log_softmax(jnp.zeros_like(scores), exclude)
        if smoothing < 1.0:
            log_p = jnp.logaddexp(math.log1p(-smoothing) + log_p, math.log(smoothing) + log_u)
        else:
            log_p = log_u
        log_p = jnp.where(exclude, -jnp.inf, log_p)
    return log_p


def top_k_negatives(scores: jax.typing.ArrayLike, exclude: jax.typing.ArrayLike, k: int) -> jax.Array:
    """The k highest-scoring allowed labels of each row (deterministic hard negatives).

    ids_b = argtop-k_{y allowed} s_by, in decreasing score order; ties go to the lower label id.

    Args:
      scores: ``[B, N]`` model scores.
      exclude: bool ``[B, N]``, True where a label may never be chosen (the gold and any other positive).
      k: number of negatives per row, 1 <= k <= N - 1 and at most the number of allowed labels of every row.

    Returns:
      int32 ``[B, k]`` label ids.

    Example:
      >>> scores = jnp.array([[0.0, 3.0, 1.0, 2.0]])
      >>> top_k_negatives(scores, jnp.array([[False, True, False, False]]), 2).tolist()
      [[3, 2]]

    References:
      Zhang & Stratos (2021); Gillick et al. (2019), Learning Dense Representations for Entity Retrieval
      (hard-nce-el ``data_retriever.py``, ``get_hard_negative``: ``scores.topk`` with ``--exclude_golds``).
    """
    exclude = jnp.asarray(exclude)
    _check_exclude(exclude, k)
    scores = _check_scores(jnp.asarray(scores), exclude)
    return _top_k(jax.lax.stop_gradient(scores), exclude, k)


def _top_k(scores: jax.Array, exclude: jax.Array, k: int) -> jax.Array:
    # Excluded labels get -inf; non-finite scores of allowed labels are clipped to stay above them.
    masked = jnp.where(exclude, -jnp.inf, jnp.clip(scores, -3.0e38, 3.0e38))
    return jax.lax.top_k(masked, k)[1].astype(jnp.int32)


def mixed_hard_count(k: int, hard_share: float) -> int:
    """Number of hard negatives among k for a hard share p: round(k * p), halves rounded up.

    floor(k * p + 1/2); e.g. k = 64, p = 0.5 -> 32; k = 5, p = 0.5 -> 3; k = 4, p = 0.3 -> 1. (hard-nce-el computes
    ``num_rands = int(k * cands_ratio)`` random and k - num_rands hard, i.e. ceil(k * p) hard: the same whenever k * p
    is an integer or a half.)
    """
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share: expected a value in [0, 1], got {hard_share}")
    # The small epsilon keeps products such as 3 * 0.5 = 1.4999999 from rounding down.
    return min(k, int(math.floor(k * hard_share + 0.5 + 1e-9)))


def mixed_negatives(
    key: jax.Array, scores: jax.typing.ArrayLike, exclude: jax.typing.ArrayLike, k: int, *, hard_share: float
) -> jax.Array:
    """A share p of hard (top-scoring) negatives and the rest uniform random, without duplicates.

    The first h = ``mixed_hard_count(k, p)`` = round(k * p) (halves up) ids are ``top_k_negatives(scores, exclude,
    h)``; the other k - h are drawn uniformly without replacement from the allowed labels that are not among those h.

    Args:
      key: a ``jax.random`` key.
      scores: ``[B, N]`` model scores.
      exclude: bool ``[B, N]``, True where a label may never be chosen (the gold and any other positive).
      k: number of negatives per row, 1 <= k <= N - 1 and at most the number of allowed labels of every row.
      hard_share: p in [0, 1], the share of hard negatives (a Python float: it fixes the shapes).

    Returns:
      int32 ``[B, k]`` label ids: columns ``[:h]`` hard in decreasing score order, columns ``[h:]`` random.

    Example:
      >>> scores = jnp.array([[0.0, 3.0, 1.0, 2.0, -1.0]])
      >>> ids = mixed_negatives(jax.random.key(0), scores, jnp.array([[True] + [False] * 4]), 2, hard_share=0.5)
      >>> int(ids[0, 0])
      1

    References:
      Zhang & Stratos (2021), ``--type_cands mixed_negative`` in hard-nce-el (32 top-scoring + 32 random of 64, with
      ``--cands_ratio`` = share of random = 1 - p).
    """
    exclude = jnp.asarray(exclude)
    _check_exclude(exclude, k)
    scores = _check_scores(jnp.asarray(scores), exclude)
    h = mixed_hard_count(k, hard_share)
    parts = []
    if h:
        hard = _top_k(jax.lax.stop_gradient(scores), exclude, h)  # [B, h]
        parts.append(hard)
        exclude = exclude.at[jnp.arange(exclude.shape[0])[:, None], hard].set(True)
    if k - h:
        parts.append(_uniform_draw(key, exclude, k - h, False)[0])
    return jnp.concatenate(parts, axis=1)


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
        mixed_hard_count(self.k, self.hard_share)  # validates hard_share

    def log_q(self, scores: jax.Array, exclude: jax.Array) -> jax.Array:
        """log q [B, N] of one draw of a ``uniform`` or ``model`` sampler (-inf on excluded labels)."""
        if self.kind == "uniform":
            return _masked_log_softmax(jnp.zeros(exclude.shape, jnp.float32), exclude)
        if self.kind == "model":
            return _model_log_q(
                jax.lax.stop_gradient(scores.astype(jnp.float32)), exclude, self.temperature, self.smoothing
            )
        raise ValueError(f"kind: {self.kind!r} has no sampling distribution q")

    def sample(self, key: jax.Array, scores: jax.Array, exclude: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Draws ``(ids int32 [B, k], log_q float32 [B, k] or None)`` for rows ``scores`` / ``exclude`` [B, N].

        ``log_q`` is None without a log-q correction; otherwise it is the log q that the correction uses.
        """
        if self.kind == "uniform":
            ids, log_q = uniform_negatives(key, exclude, self.k, replace=self.replace)
        elif self.kind == "model":
            ids, log_q = model_negatives(
                key,
                scores,
                exclude,
                self.k,
                temperature=self.temperature,
                smoothing=self.smoothing,
                replace=self.replace,
            )
        elif self.kind == "top_k":
            return top_k_negatives(scores, exclude, self.k), None
        else:
            return mixed_negatives(key, scores, exclude, self.k, hard_share=self.hard_share), None
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
    _check_exclude(exclude, k)
    row_scores = jax.lax.stop_gradient(scores)[rows]  # [R, N]
    if sampler.kind == "top_k":
        ids, _ = sampler.sample(jax.random.key(0), row_scores, exclude)
        return jnp.sum(weight * _candidate_nll(scores, rows, gold, ids, None))
    prefix = None
    if sampler.kind == "mixed":
        h = mixed_hard_count(k, sampler.hard_share)
        prefix = _top_k(row_scores, exclude, h) if h else None  # [R, h]
        if h:
            exclude = exclude.at[jnp.arange(exclude.shape[0])[:, None], prefix].set(True)
        k = k - h
        log_q = _masked_log_softmax(jnp.zeros(exclude.shape, jnp.float32), exclude)
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
