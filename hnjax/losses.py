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
for gradient checks). ``reduction="mean"`` (default) averages over the batch rows, ``reduction="none"`` returns the
per-row losses ``[B]``. Padding never changes a loss: ``nce`` takes a candidate ``mask``, the in-batch losses a
per-row ``valid`` mask (padding rows are neither anchors nor negatives) and optional example ``ids`` (in-batch
duplicates of an anchor are not used as its negatives).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from hnjax import scorers

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
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1, mode="clip")[:, 0]  # [B]
    # No negative-index wrap-around and no clipping: a label outside [0, C) is a bug that must show, as NaN.
    in_range = (labels >= 0) & (labels < logits.shape[-1])
    return jnp.where(in_range, -picked, jnp.nan)


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


# ----------------------------------------------------------------------------------------------------------------
# In-batch losses over two views (SimCSE layout), optionally across devices.
# ----------------------------------------------------------------------------------------------------------------


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[n, D] × [M, D] → [n, M]`` inner products of already normalised rows."""
    return jnp.einsum("nd,md->nm", a, b, preferred_element_type=a.dtype)


def gather_columns(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array | int]:
    """All rows of ``x`` across the devices of ``axis_name`` and this device's first row among them.

    In-batch negatives across devices: every device scores its local rows against the gathered columns (the global
    ``[N, N]`` matrix is never built on one device), and the positive of local row i sits at column ``offset + i``.
    The transpose of ``all_gather`` is ``psum_scatter``, so gradients reaching the gathered columns flow back to the
    devices that own those rows.

    Args:
      x: local rows ``[n, ...]``.
      axis_name: the mapped axis (inside ``jax.shard_map`` or ``jax.pmap``), or None on one device.

    Returns:
      ``(x_all [n · axis_size, ...], offset)``: the rows of every device in device order, and ``axis_index · n``;
      ``(x, 0)`` without an axis.

    Example:
      >>> x_all, offset = gather_columns(jnp.ones((4, 2)), None)
      >>> x_all.shape, offset
      ((4, 2), 0)
    """
    if axis_name is None:
        return x, 0
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True), jax.lax.axis_index(axis_name) * x.shape[0]


def _column_keep(
    ids: jax.Array | None, valid: jax.Array | None, labels: jax.Array, axis_name: str | None
) -> jax.Array | None:
    """``[n, N]`` bool, False for the columns row i must not use as negatives: columns sharing row i's id (false
    negatives) and padding columns (``valid`` False). A row's own positive is always kept, so that even a padding
    row has a finite loss (which the reduction then drops)."""
    if ids is None and valid is None:
        return None
    keep = None
    if ids is not None:
        ids_all, _ = gather_columns(ids, axis_name)  # [N]
        keep = ids[:, None] != ids_all[None, :]
    if valid is not None:
        valid_all, _ = gather_columns(valid, axis_name)  # [N]
        keep = valid_all[None, :] if keep is None else keep & valid_all[None, :]
    n_cols = keep.shape[1]
    positive = jnp.arange(n_cols)[None, :] == labels[:, None]  # [n, N]
    return jnp.broadcast_to(keep, (labels.shape[0], n_cols)) | positive


def _check_valid(valid: jax.typing.ArrayLike | None, n: int) -> jax.Array | None:
    if valid is None:
        return None
    valid = jnp.asarray(valid)
    if valid.dtype != jnp.bool_ or valid.shape != (n,):
        raise ValueError(
            f"valid: expected bool [N] = ({n},) like the rows of z1, got {valid.dtype} {tuple(valid.shape)}"
        )
    return valid


def _check_ids(ids: jax.typing.ArrayLike | None, n: int) -> jax.Array | None:
    if ids is None:
        return None
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids: expected an integer dtype, got {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"ids: expected shape [N] = ({n},) like the rows of z1, got {tuple(ids.shape)}")
    return ids


def _inbatch_reduce(
    per_row: jax.Array, reduction: str, axis_name: str | None, valid: jax.Array | None = None
) -> jax.Array:
    """Mean over the (valid rows of the) global batch, ``psum`` of local sums / global count; or the local rows
    (padding rows as 0)."""
    if valid is not None:
        per_row = jnp.where(valid, per_row, 0.0)
    if reduction == "none":
        return per_row
    total = jnp.sum(per_row)
    count = jnp.asarray(per_row.shape[0], per_row.dtype) if valid is None else jnp.sum(valid.astype(per_row.dtype))
    if axis_name is not None:
        total, count = jax.lax.psum(total, axis_name), jax.lax.psum(count, axis_name)
    return total / jnp.maximum(count, 1)


def _check_views(z1: jax.Array, z2: jax.Array, temperature, reduction: str) -> None:
    _check_reduction(reduction)
    for name, z in (("z1", z1), ("z2", z2)):
        _check_floating(name, z)
        _check_rank(name, z, 2, "[N, D]")
    if z1.shape != z2.shape:
        raise ValueError(f"z2: expected the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if isinstance(temperature, (int, float)) and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite value > 0, got {temperature}")


_AXIS_DOC = """Cross-device negatives. Inside ``jax.shard_map`` (or ``jax.pmap``) over ``axis_name``, with the local
    rows ``z1, z2 [n, D]`` of a global batch ``N = n · axis_size`` split in device order, every device scores its own
    rows against the all-gathered columns (``[n, N]``; the global N×N matrix is never built on one device), with
    labels ``axis_index · n + arange(n)``. Each device returns the same value: the mean over the (valid rows of the)
    **global** batch, ``psum`` of local sums / ``psum`` of local counts, equal to the single-device loss on the
    concatenated batch. Gradients:

    * ``jax.shard_map`` with ``check_vma=True`` (the default): differentiate the shard-mapped function from outside
      (``out_specs=P()``), or take ``jax.grad`` inside w.r.t. replicated parameters; both give the global-batch
      gradient (JAX transposes ``psum`` and ``all_gather`` so that every row's owner gets its gradient). Do not
      reduce these gradients again.
    * ``jax.pmap`` or ``jax.shard_map(..., check_vma=False)`` (the classic SPMD rule, used by ``hnjax.parallel``):
      ``jax.grad`` inside gives ``axis_size`` × each device's share (``psum`` transposes into ``psum``), so reduce
      gradients with ``jax.lax.pmean``, the usual data-parallel idiom, not ``psum``.

    With ``reduction="none"`` each device returns the losses of its own ``n`` rows and no collective is applied."""


def infonce(
    z1: jax.typing.ArrayLike,
    z2: jax.typing.ArrayLike,
    temperature: float | jax.Array = 0.05,
    symmetric: bool = False,
    axis_name: str | None = None,
    *,
    negatives: jax.typing.ArrayLike | None = None,
    ids: jax.typing.ArrayLike | None = None,
    valid: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""InfoNCE with in-batch negatives over the cosine matrix of two views (SimCSE).

    .. math::  \ell_i = -\log \frac{\exp(s_{ii}/\tau)}{\sum_{j=1}^{N} \exp(s_{ij}/\tau)
       + \sum_{j=1}^{M} \exp(\cos(z1_i, \mathrm{neg}_j)/\tau)},
       \qquad s_{ij} = \cos(z1_i, z2_j)

    The second sum is present only with ``negatives`` (SimCSE's supervised triplets): row i's logits are
    ``[cos(z1_i, z2_j) for j in 0..N−1] ++ [cos(z1_i, neg_j) for j in 0..M−1]`` divided by τ, label i.
    ``symmetric=True`` averages, per index i, the row-wise loss above and the column-wise loss
    ``−log softmax_j(s_{ji}/τ)[i]`` (view 2 as anchor against all of view 1); it cannot be combined with
    ``negatives``. Cosines are computed in float32 with each norm clamped at 1e-8 (``torch.nn.CosineSimilarity``
    clamps the product of the norms instead; the two differ only for near-zero vectors).

    Args:
      z1: ``[N, D]`` first view (anchors), floating (bfloat16 allowed). Local rows when ``axis_name`` is given.
      z2: ``[N, D]`` second view (positives), same shape as ``z1``.
      temperature: τ > 0, a Python number (checked) or a scalar array.
      symmetric: average row-wise and column-wise cross-entropy (CLIP-style); a Python bool (static under jit).
      axis_name: mapped axis to all-gather negatives over, or None on one device.
      negatives: optional ``[M, D]`` extra hard negatives (e.g. ``M = N``, one per anchor), shared by all rows and
        all-gathered like ``z2`` under ``axis_name``.
      ids: optional ``[N]`` int id of each row's example (e.g. sentence or document id). In-batch columns ``j ≠ i``
        with ``ids[j] == ids[i]`` are dropped from row i's softmax (and, if symmetric, from column i's), so that
        duplicates in a batch are not used as negatives. Gathered with the rows under ``axis_name``. The
        ``negatives`` columns are not masked.
      valid: optional ``[N]`` bool (local rows under ``axis_name``): False marks padding rows (added to fill a batch
        or a device), which are neither anchors nor negatives: excluded from every softmax and from the mean. With
        one negative per row (``M = N``) the negatives of padding rows are dropped too.
      reduction: ``"mean"`` over the (global) batch, or ``"none"`` for the local per-row losses ``[N]``.

    {axis_doc}

    Returns:
      float32 scalar (``"mean"``) or ``[N]`` (``"none"``).

    Example:
      >>> z = jnp.eye(3)
      >>> round(float(infonce(z, z, temperature=1.0)), 4)  # -log(e / (e + 2))
      0.5514

    References:
      Gao, Yao & Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021 (Eq. 1 and 5);
      matches princeton-nlp/SimCSE ``simcse/models.py`` ``cl_forward`` (cos/τ, ``CrossEntropyLoss`` with labels
      ``arange(N)``, hard negatives appended as extra columns).
    """
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    _check_views(z1, z2, temperature, reduction)
    ids = _check_ids(ids, z1.shape[0])
    valid = _check_valid(valid, z1.shape[0])
    if negatives is not None:
        negatives = jnp.asarray(negatives)
        _check_floating("negatives", negatives)
        _check_rank("negatives", negatives, 2, "[M, D]")
        if negatives.shape[1] != z1.shape[1]:
            raise ValueError(f"negatives: expected width D = {z1.shape[1]} like z1, got shape {tuple(negatives.shape)}")
        if symmetric:
            raise ValueError("symmetric: expected False when negatives are given (no column-wise loss), got True")

    a, b = scorers.l2_normalize(z1), scorers.l2_normalize(z2)  # [n, D]
    b_all, offset = gather_columns(b, axis_name)  # [N, D]
    labels = offset + jnp.arange(a.shape[0])  # [n]
    keep = _column_keep(ids, valid, labels, axis_name)  # [n, N] or None; symmetric in (i, j): serves both ways
    logits = _cosine(a, b_all)  # [n, N]
    row_keep = keep
    if negatives is not None:
        neg_all, _ = gather_columns(scorers.l2_normalize(negatives), axis_name)  # [M, D]
        logits = jnp.concatenate([logits, _cosine(a, neg_all)], axis=1)  # [n, N + M]
        if keep is not None:
            neg_keep = jnp.ones((keep.shape[0], neg_all.shape[0]), bool)
            if valid is not None and negatives.shape[0] == z1.shape[0]:  # one negative per row: padded with it
                neg_keep = neg_keep & gather_columns(valid, axis_name)[0][None, :]
            row_keep = jnp.concatenate([keep, neg_keep], axis=1)
    per_row = _cross_entropy(logits / temperature, labels, row_keep)
    if symmetric:
        a_all, _ = gather_columns(a, axis_name)
        per_row = 0.5 * (per_row + _cross_entropy(_cosine(b, a_all) / temperature, labels, keep))
    return _inbatch_reduce(per_row, reduction, axis_name, valid)


def focal_infonce(
    z1: jax.typing.ArrayLike,
    z2: jax.typing.ArrayLike,
    temperature: float | jax.Array = 0.05,
    margin: float | jax.Array = 0.3,
    axis_name: str | None = None,
    *,
    ids: jax.typing.ArrayLike | None = None,
    valid: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""Focal-InfoNCE: InfoNCE with similarity-modulated logits (Hou & Li 2023).

    .. math::  \ell_i = -\log \frac{\exp(s_{ii}^2/\tau)}{\exp(s_{ii}^2/\tau)
       + \sum_{j \ne i} \exp\big(s_{ij}(s_{ij} + m)/\tau\big)}, \qquad s_{ij} = \cos(z1_i, z2_j)

    Exactly the official formula: the positive's similarity is multiplied by itself, each negative's by
    ``s_ij + m``, both divided by τ; gradients flow through the modulation factors (no stop-gradient, no clamping).
    With ``P`` the row softmax of these logits, ``∂ℓ_i/∂s_ii = −(1 − P_ii)·2 s_ii/τ`` and
    ``∂ℓ_i/∂s_ij = P_ij (2 s_ij + m)/τ``: hard negatives (s_ij > 1 − m) are up-weighted relative to InfoNCE.

    Args:
      z1: ``[N, D]`` first view (anchors), floating (bfloat16 allowed). Local rows when ``axis_name`` is given.
      z2: ``[N, D]`` second view (positives), same shape as ``z1``.
      temperature: τ > 0, a Python number (checked) or a scalar array.
      margin: m, the "hardness" margin (finite; 0.3 in the paper).
      axis_name: mapped axis to all-gather negatives over, or None on one device.
      ids: optional ``[N]`` int example ids; columns ``j ≠ i`` with ``ids[j] == ids[i]`` are dropped from row i's
        softmax (duplicates are not negatives), as in :func:`infonce`. Not in the official code, which has no ids.
      valid: optional ``[N]`` bool (local rows under ``axis_name``): False marks padding rows (added to fill a batch
        or a device), which are neither anchors nor negatives: excluded from every softmax and from the mean.
      reduction: ``"mean"`` over the (global) batch, or ``"none"`` for the local per-row losses ``[N]``.

    {axis_doc}

    Returns:
      float32 scalar (``"mean"``) or ``[N]`` (``"none"``).

    Example:
      >>> z = jnp.eye(2)  # s = I: positive logit 1/τ, negative logit 0
      >>> round(float(focal_infonce(z, z, temperature=1.0, margin=0.3)), 4)  # -log(e / (e + 1))
      0.3133

    References:
      Hou & Li, "Improving Contrastive Learning of Sentence Embeddings with Focal-InfoNCE", Findings of EMNLP 2023;
      matches puerrrr/Focal-InfoNCE ``focalNCE/models.py`` ``sp_logits`` and ``cl_forward``.
    """
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    _check_views(z1, z2, temperature, reduction)
    if isinstance(margin, (int, float)) and not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite value, got {margin}")
    ids = _check_ids(ids, z1.shape[0])
    valid = _check_valid(valid, z1.shape[0])

    a = scorers.l2_normalize(z1)  # [n, D]
    b_all, offset = gather_columns(scorers.l2_normalize(z2), axis_name)  # [N, D]
    labels = offset + jnp.arange(a.shape[0])  # [n]
    s = _cosine(a, b_all)  # [n, N]
    positive = jnp.arange(s.shape[1])[None, :] == labels[:, None]  # [n, N]
    logits = jnp.where(positive, s * s, s * (s + margin)) / temperature
    per_row = _cross_entropy(logits, labels, _column_keep(ids, valid, labels, axis_name))
    return _inbatch_reduce(per_row, reduction, axis_name, valid)


for _fn in (infonce, focal_infonce):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ = _fn.__doc__.replace("{axis_doc}", _AXIS_DOC)
del _fn
