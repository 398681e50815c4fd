"""Contrastive losses for retrievers and sentence encoders: softmax cross-entropy in a few layouts.

Every loss here is the same thing: a softmax cross-entropy ``ℓ_i = −log softmax(logits_i)[label_i]``, computed in
float32 with ``jax.nn.log_softmax``, over a row of logits whose layout differs by use:

* :func:`full_softmax_ce` — logits over all C labels ``[B, C]`` with an integer label per row (the "CE" objective
  that NCE approximates).
* :func:`nce` — scores of K candidates per query ``[B, K]`` with the gold at column 0, a padding mask and an optional
  sampled-softmax (log-q) correction: the retriever / reranker loss of Zhang & Stratos (2021).
* :func:`infonce` — in-batch negatives: the N×N cosine matrix of two views divided by a temperature, labels on the
  diagonal (SimCSE, Gao et al. 2021), optionally symmetric, optionally with an extra hard-negative view, and
  optionally with the negatives all-gathered across devices (local rows × gathered columns).
* :func:`focal_infonce` — the same in-batch layout with Focal-InfoNCE's modulated logits (Hou & Li 2023).

All functions are pure and jit-able; static shapes, dtypes and Python hyper-parameters are validated eagerly with a
``ValueError`` naming the argument, the expected and the actual value. Inputs may be bfloat16: everything from the
logits on is computed in float32 and the loss is returned as float32 (float64 inputs stay float64, which the tests use
for gradient checks). ``reduction="mean"`` (default) averages over
the batch rows, ``reduction="none"`` returns the per-row losses ``[B]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_REDUCTIONS = ("mean", "none")


# ----------------------------------------------------------------------------------------------------------------
# Shared private pieces.
# ----------------------------------------------------------------------------------------------------------------


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def _check_floating(name: str, x: jax.Array) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype (float32, bfloat16, ...), got {x.dtype}")


def _check_rank(name: str, x: jax.Array, rank: int, layout: str) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, got shape {tuple(x.shape)}")


def _accum_dtype(dtype) -> jnp.dtype:
    """float32 for bfloat16 / float16 / float32 inputs; float64 stays float64 (for float64 reference checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def _cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Per-row softmax cross-entropy ``−log softmax(logits_i)[labels_i]`` in at least float32.

    Args:
      logits: ``[B, C]`` any floating dtype; cast to (at least) float32 before the log-sum-exp.
      labels: ``[B]`` int, the target column of each row. An index outside ``[0, C)`` gives NaN for that row.
      mask: optional ``[B, C]`` bool; False columns are excluded from the softmax (logit −inf). The label column of
        every row must be real, otherwise that row's loss is +inf.

    Returns:
      ``[B]`` per-row losses, float32 (float64 for float64 logits).
    """
    logits = logits.astype(_accum_dtype(logits.dtype))
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, C]
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1, mode="fill", fill_value=jnp.nan)  # [B, 1]
    return -picked[:, 0]


def _reduce(per_row: jax.Array, reduction: str, weights: jax.Array | None = None) -> jax.Array:
    """Mean over rows (weighted by 0/1 ``weights`` if given, 0 when no row counts) or the rows themselves."""
    if reduction == "none":
        return per_row
    if weights is None:
        return jnp.mean(per_row)
    return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1)


# ----------------------------------------------------------------------------------------------------------------
# Losses over a given logit matrix.
# ----------------------------------------------------------------------------------------------------------------


def full_softmax_ce(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, reduction: str = "mean"
) -> jax.Array:
    r"""Softmax cross-entropy over all C labels.

    .. math::  \ell_i = -\log \frac{\exp(z_{i, y_i})}{\sum_{c=1}^{C} \exp(z_{i,c})}

    Args:
      logits: ``[B, C]`` floating scores of every label (bfloat16 allowed; computed in float32).
      labels: ``[B]`` integer index of each row's true label, in ``[0, C)``. Labels are not range-checked (they are
        traced values); an out-of-range label gives NaN for its row, so the mean is NaN too.
      reduction: ``"mean"`` over the B rows, or ``"none"`` for the per-row losses.

    Returns:
      float32 scalar (``"mean"``) or ``[B]`` (``"none"``); float64 for float64 inputs.

    Example:
      >>> float(full_softmax_ce(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
      1.386...

    References:
      The full-softmax objective J_CE that NCE estimates: Zhang & Stratos, "Understanding Hard Negatives in Noise
      Contrastive Estimation", NAACL 2021.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _check_reduction(reduction)
    _check_floating("logits", logits)
    _check_rank("logits", logits, 2, "[B, C]")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels: expected shape [B] = ({logits.shape[0]},) to match logits, got {tuple(labels.shape)}"
        )
    return _reduce(_cross_entropy(logits, labels), reduction)


def nce(
    scores: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
    log_q: jax.typing.ArrayLike | None = None,
    *,
    reduction: str = "mean",
) -> jax.Array:
    r"""NCE loss: softmax cross-entropy over K candidates per query with the gold candidate at column 0.

    .. math::  \ell_i = -\log \frac{\exp(\tilde s_{i,0})}{\sum_{k=0}^{K-1} m_{i,k} \exp(\tilde s_{i,k})},
       \qquad \tilde s_{i,0} = s_{i,0}, \qquad \tilde s_{i,k} = s_{i,k} - \log\big(n_i \, q_{i,k}\big) \ (k \ge 1)

    The correction term is applied only when ``log_q`` is given (sampled-softmax / log-q correction of negatives
    drawn from a proposal q; the gold is never corrected). ``n_i`` is the number of negatives: ``K − 1`` without a
    mask (as in hard-nce-el, which always uses K − 1), and the row's count of real negatives
    ``Σ_{k≥1} m_{i,k}`` with a mask, so that padding a row does not change its loss. With uniform sampling
    ``q = 1/n_i`` the correction vanishes.

    Masking. ``mask[i, k] = False`` drops candidate k of row i from the softmax (its logit becomes −inf), so padded
    candidates never change the loss. A row whose negatives are all masked has loss exactly 0. Column 0 (the gold)
    must be real: a row with ``mask[i, 0] = False`` is treated as a padding row — its loss is 0, it gets no gradient,
    and ``reduction="mean"`` averages over the rows with a real gold only (0 if there is none).

    Args:
      scores: ``[B, K]`` floating scores of K ≥ 2 candidates per query, gold at column 0 (bfloat16 allowed).
      mask: optional ``[B, K]`` bool, True for real candidates.
      log_q: optional ``[B, K]`` floating log-probability with which each negative was sampled; column 0 is ignored
        and so are masked entries (they may be −inf).
      reduction: ``"mean"`` over the (real) rows, or ``"none"`` for the per-row losses ``[B]``.

    Returns:
      float32 scalar (``"mean"``) or ``[B]`` (``"none"``); float64 for float64 inputs.

    Example:
      >>> float(nce(jnp.array([[2.0, 0.0, 0.0]])))  # -log(e^2 / (e^2 + 2))
      0.2395...

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021; matches
      hard-nce-el ``retriever.py`` ``UnifiedRetriever.forward`` (``CrossEntropyLoss`` over ``[B, K]``, target 0)
      and its ``hard_adjusted_negative`` option for ``log_q``.
    """
    scores = jnp.asarray(scores)
    _check_reduction(reduction)
    _check_floating("scores", scores)
    _check_rank("scores", scores, 2, "[B, K]")
    b, k = scores.shape
    if k < 2:
        raise ValueError(f"scores: expected K >= 2 candidates (gold + at least one negative), got shape {(b, k)}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask: expected dtype bool, got {mask.dtype}")
        if mask.shape != scores.shape:
            raise ValueError(f"mask: expected shape {(b, k)} like scores, got {tuple(mask.shape)}")
    if log_q is not None:
        log_q = jnp.asarray(log_q)
        _check_floating("log_q", log_q)
        if log_q.shape != scores.shape:
            raise ValueError(f"log_q: expected shape {(b, k)} like scores, got {tuple(log_q.shape)}")

    dtype = _accum_dtype(scores.dtype)
    logits = scores.astype(dtype)  # [B, K]
    row_valid = None
    if mask is not None:
        row_valid = mask[:, 0]
        # Keep the gold real inside the softmax so padding rows stay finite (no NaN gradients); they are zeroed below.
        mask = mask.at[:, 0].set(True)
    if log_q is not None:
        if mask is None:
            n_neg = jnp.full((b, 1), k - 1, dtype)
        else:
            n_neg = jnp.maximum(jnp.sum(mask[:, 1:], axis=1, keepdims=True), 1).astype(dtype)
        log_q = log_q.astype(dtype)
        if mask is not None:
            log_q = jnp.where(mask, log_q, 0.0)  # masked entries may hold -inf; keep them out of the arithmetic
        correction = jnp.log(n_neg) + log_q  # [B, K]
        logits = logits - jnp.where(jnp.arange(k) >= 1, correction, 0.0)
    per_row = _cross_entropy(logits, jnp.zeros((b,), jnp.int32), mask)
    if row_valid is None:
        return _reduce(per_row, reduction)
    per_row = jnp.where(row_valid, per_row, 0.0)
    return _reduce(per_row, reduction, row_valid.astype(dtype))
