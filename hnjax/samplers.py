"""Negative samplers over a finite label set (paper 1's random, model-distribution, top-k and mixed negatives).

Each sampler returns the sampled label ids and, where the distribution is stochastic, their log-probabilities
``log q`` for the log-q corrected NCE of :func:`hnjax.losses.nce`: ``uniform_negatives``, ``model_negatives``,
``top_k_negatives`` and ``mixed_negatives`` (share p of top-scoring negatives, the rest uniform).
:class:`hnjax.bias.NegativeSampler` is the static description of one of them.

Shapes: B rows (inputs, or (input, gold) pairs), N labels, k sampled negatives per row. ``exclude`` is a boolean
``[B, N]`` mask, True where a label may never be sampled for that row (its gold and any other positive).

Rows with fewer than k allowed labels (possible only when ``exclude`` is traced, so the count cannot be checked in
Python): the surplus slots hold an excluded label and their ``log_q`` is ``-inf``; find them with
``jnp.take_along_axis(exclude, ids, axis=1)``. A row with no allowed label at all gets excluded labels only.

References:
  Zhang, W. & Stratos, K. (2021). Understanding Hard Negatives in Noise Contrastive Estimation. NAACL-HLT 2021,
  1090-1101. https://aclanthology.org/2021.naacl-main.86 (official code: github.com/WenzhengZhang/hard-nce-el).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------------------


def check_exclude(exclude: jax.Array, k: int, name: str = "exclude") -> tuple[int, int]:
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


def masked_log_softmax(logits: jax.Array, exclude: jax.Array) -> jax.Array:
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
    check_exclude(exclude, k)
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
    check_exclude(exclude, k)
    scores = _check_scores(jnp.asarray(scores), exclude)
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing: expected a value in [0, 1], got {smoothing}")
    log_q = model_log_q(jax.lax.stop_gradient(scores), exclude, temperature, smoothing)
    return _draw(key, log_q, k, replace)


def model_log_q(scores: jax.Array, exclude: jax.Array, temperature: float, smoothing: float) -> jax.Array:
    """log q_b(y) of ``model_negatives`` [B, N] (-inf on excluded labels)."""
    log_p = masked_log_softmax(scores / temperature, exclude)
    if smoothing > 0.0:
        log_u = masked_log_softmax(jnp.zeros_like(scores), exclude)
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
    check_exclude(exclude, k)
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
    check_exclude(exclude, k)
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
