"""Memory-efficient in-batch contrastive losses: blockwise log-sum-exp with a custom VJP.

An in-batch loss over B queries and N in-batch documents is a cross-entropy over a [B, N] logit matrix. Held in memory,
that matrix (and autodiff's copies of it: softmax, its cotangent) grows as B·N, which at B = N = 65,536 is 16 GiB per
float32 copy. The functions here never hold it: the forward pass walks over column blocks keeping a running
log-sum-exp per row (online softmax, ``logaddexp`` of block log-sum-exps), and the backward pass recomputes each
[row block, column block] tile of logits from the inputs and the saved per-row log-sum-exp, turning it into the tile of
``softmax - onehot`` and pulling it back to the inputs with the tile's own VJP. Residuals are the inputs plus one float
per row, so peak memory grows linearly in B for a fixed block size.

    loss_i = logsumexp_j ℓ(s(q_i, d_j), j = p_i) − ℓ(s(q_i, d_{p_i}), true)
    ∂loss_i/∂ℓ_ij = softmax_j(ℓ_i·)_j − [j = p_i]

where s is a pairwise score function (cosine, dot, sum-of-max over token vectors) and ℓ maps a score and "is this
the positive" to a logit (s/τ for InfoNCE, s²/τ or s(s+m)/τ for focal-InfoNCE).

Gradient caching for encoders (GradCache, Gao et al. 2021) lives in :mod:`hnjax.gradcache`.

References:
  Milakov & Gimelshein, "Online normalizer calculation for softmax", arXiv:1805.02867, 2018 (online softmax).
  Rabe & Staats, "Self-attention Does Not Need O(n²) Memory", arXiv:2112.05682, 2021 (blockwise + recomputation).
  Chen et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss" (Inf-CL),
  arXiv:2410.17243, 2024 (tiled contrastive loss with recomputation in the backward pass).
  Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748, 2018 (InfoNCE).
  Hou & Li, "Improving Contrastive Learning of Sentence Embeddings with Focal-InfoNCE", Findings of EMNLP 2023
  (official code puerrrr/Focal-InfoNCE, ``sp_logits``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import losses, scorers

ScoreFn = Callable[[Any, Any], jax.Array]
LogitFn = Callable[[jax.Array, jax.Array], jax.Array]

_DEFAULT_BLOCK = 1024


# ----------------------------------------------------------------------------------------------------------------------
# Pairwise score functions for one tile (all-pairs layout)
# ----------------------------------------------------------------------------------------------------------------------


def dot_scores(q: jax.Array, d: jax.Array) -> jax.Array:
    """All-pairs inner products of single vectors, accumulated in float32.

    s_bn = ⟨q_b, d_n⟩

    Args:
      q: [B, D] query vectors.
      d: [N, D] document vectors.

    Returns:
      [B, N] float32 scores.
    """
    return jnp.einsum("bd,nd->bn", q, d, preferred_element_type=jnp.float32)


def sum_of_max_scores(q: tuple[jax.Array, jax.Array], d: tuple[jax.Array, jax.Array]) -> jax.Array:
    """All-pairs sum-of-max (late interaction) scores of token-vector sets, accumulated in float32.

    s_bn = Σ_i qmask_bi · max_{j : dmask_nj} ⟨q_bi, d_nj⟩   (0 for a document with no valid vector)

    Args:
      q: pair (vectors [B, M, D], mask [B, M] bool) of query token vectors.
      d: pair (vectors [N, Lp, D], mask [N, Lp] bool) of document token vectors.

    Returns:
      [B, N] float32 scores.

    References:
      Khattab & Zaharia, "ColBERT", SIGIR 2020 (MaxSim); Humeau et al., "Poly-encoders", ICLR 2020.
    """
    qv, qm = q
    dv, dm = d
    sim = jnp.einsum("bid,njd->bnij", qv, dv, preferred_element_type=jnp.float32)  # [B, N, M, Lp]
    return scorers.reduce_sum_of_max(sim, qm[:, None, :], dm[None])


# ----------------------------------------------------------------------------------------------------------------------
# Core: blockwise cross-entropy with a custom VJP
# ----------------------------------------------------------------------------------------------------------------------


def _leading(tree: Any) -> int:
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"all arrays of a pytree argument must share the leading (batch) axis; got sizes {sizes}")
    return sizes.pop()


def _pad_blocks(tree: Any, block: int) -> Any:
    """Pads every leaf on axis 0 to a multiple of ``block`` and reshapes to [n_blocks, block, ...]."""
    n = _leading(tree)
    n_blocks = -(-n // block)
    pad = n_blocks * block - n

    def one(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((n_blocks, block) + x.shape[1:])

    return jax.tree.map(one, tree)


def _is_diff(x: jax.Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


def _split(tree: Any) -> tuple[list, list, Any]:
    """Splits a pytree into its differentiable leaves, the other leaves, and what is needed to rebuild it."""
    leaves, treedef = jax.tree.flatten(tree)
    kinds = [_is_diff(x) for x in leaves]
    return [x for x, k in zip(leaves, kinds) if k], [x for x, k in zip(leaves, kinds) if not k], (treedef, kinds)


def _merge(diff: list, other: list, spec: Any) -> Any:
    treedef, kinds = spec
    it_d, it_o = iter(diff), iter(other)
    return jax.tree.unflatten(treedef, [next(it_d) if k else next(it_o) for k in kinds])


def _varying_axes(x: jax.Array) -> frozenset:
    """Mesh axes over which ``x`` varies inside ``shard_map`` (empty outside it or with ``check_vma=False``)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))


def _vma(*trees: Any) -> frozenset:
    """Mesh axes over which any leaf of ``trees`` varies."""
    axes = frozenset()
    for leaf in jax.tree.leaves(trees):
        axes |= _varying_axes(leaf)
    return axes


def _varying(x: jax.Array, axes: frozenset) -> jax.Array:
    """Casts a fresh scan carry to vary over ``axes`` like the values it will be combined with."""
    missing = tuple(sorted(axes - _varying_axes(x)))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


def _tile_logits(score_fn, logit_fn, qb, db, pos_b, col0, n_cols):
    """Logits of one [row block, column block] tile; padded columns are -inf."""
    scores = score_fn(qb, db).astype(jnp.float32)  # [Rb, Cb]
    cols = col0 + jnp.arange(scores.shape[1])
    is_pos = cols[None, :] == pos_b[:, None]  # [Rb, Cb]
    logits = logit_fn(scores, is_pos).astype(jnp.float32)
    return jnp.where((cols < n_cols)[None, :], logits, -jnp.inf), is_pos


def _forward(score_fn, logit_fn, row_block, col_block, q, d, positives):
    """Per-row loss and log-sum-exp; scans row blocks (outer) and column blocks (inner)."""
    n_rows, n_cols = _leading(q), _leading(d)
    qs = _pad_blocks(q, row_block)
    ds = _pad_blocks(d, col_block)
    ps = _pad_blocks(jnp.asarray(positives, jnp.int32), row_block)
    n_col_blocks = -(-n_cols // col_block)
    col_starts = jnp.arange(n_col_blocks) * col_block
    axes = _vma(q, d, positives)

    def row_step(_, row_xs):
        qb, pos_b = row_xs

        def col_step(carry, col_xs):
            lse, pos_logit = carry
            db, col0 = col_xs
            logits, is_pos = _tile_logits(score_fn, logit_fn, qb, db, pos_b, col0, n_cols)
            lse = jnp.logaddexp(lse, jax.nn.logsumexp(logits, axis=1))
            pos_logit = pos_logit + jnp.sum(jnp.where(is_pos, logits, 0.0), axis=1)
            return (lse, pos_logit), None

        init = (jnp.full((row_block,), -jnp.inf, jnp.float32), jnp.zeros((row_block,), jnp.float32))
        init = tuple(_varying(x, axes) for x in init)
        (lse, pos_logit), _ = jax.lax.scan(col_step, init, (ds, col_starts))
        return None, (lse - pos_logit, lse)

    _, (loss, lse) = jax.lax.scan(row_step, None, (qs, ps))
    return loss.reshape(-1)[:n_rows], lse.reshape(-1)[:n_rows]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _inbatch_ce(score_fn, logit_fn, row_block, col_block, q, d, positives):
    return _forward(score_fn, logit_fn, row_block, col_block, q, d, positives)[0]


def _inbatch_ce_fwd(score_fn, logit_fn, row_block, col_block, q, d, positives):
    loss, lse = _forward(score_fn, logit_fn, row_block, col_block, q, d, positives)
    return loss, (q, d, positives, lse)


def _zero_cotangent(x):
    if _is_diff(x):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _inbatch_ce_bwd(score_fn, logit_fn, row_block, col_block, res, g):
    q, d, positives, lse = res
    n_rows, n_cols = _leading(q), _leading(d)
    q_diff, q_other, q_spec = _split(_pad_blocks(q, row_block))
    d_diff, d_other, d_spec = _split(_pad_blocks(d, col_block))
    ps = _pad_blocks(jnp.asarray(positives, jnp.int32), row_block)
    lses = _pad_blocks(lse, row_block)
    gs = _pad_blocks(g.astype(jnp.float32), row_block)  # padded rows get a zero cotangent
    col_starts = jnp.arange(-(-n_cols // col_block)) * col_block
    axes = _vma(q, d, positives, lse, g)

    def zeros_block(leaves):  # float32 accumulators shaped like one block of each leaf
        return [_varying(jnp.zeros(x.shape[1:], jnp.float32), axes) for x in leaves]

    def row_step(dd_acc, row_xs):
        qb_diff, qb_other, pos_b, lse_b, g_b = row_xs

        def col_step(dq_acc, col_xs):
            db_diff, db_other, col0 = col_xs

            def tile(qd, dd):
                qb, db = _merge(qd, qb_other, q_spec), _merge(dd, db_other, d_spec)
                return _tile_logits(score_fn, logit_fn, qb, db, pos_b, col0, n_cols)

            logits, vjp, is_pos = jax.vjp(tile, qb_diff, db_diff, has_aux=True)
            # d loss_i / d logit_ij = softmax_ij − [j = p_i]; padded (-inf) columns give exactly 0.
            g_logits = g_b[:, None] * (jnp.exp(logits - lse_b[:, None]) - is_pos.astype(jnp.float32))
            dq_tile, dd_tile = vjp(g_logits)
            dq_acc = [a + t.astype(jnp.float32) for a, t in zip(dq_acc, dq_tile)]
            return dq_acc, [t.astype(jnp.float32) for t in dd_tile]

        dq_b, dd_tiles = jax.lax.scan(col_step, zeros_block(q_diff), (d_diff, d_other, col_starts))
        return [a + t for a, t in zip(dd_acc, dd_tiles)], dq_b

    dd_init = [_varying(jnp.zeros(x.shape, jnp.float32), axes) for x in d_diff]
    dd_blocks, dq_blocks = jax.lax.scan(row_step, dd_init, (q_diff, q_other, ps, lses, gs))

    def unpad(blocks, originals, n):
        return [b.reshape((-1,) + b.shape[2:])[:n].astype(o.dtype) for b, o in zip(blocks, originals)]

    q_diff0, q_other0, _ = _split(q)
    d_diff0, d_other0, _ = _split(d)
    dq = _merge(unpad(dq_blocks, q_diff0, n_rows), [_zero_cotangent(x) for x in q_other0], q_spec)
    dd = _merge(unpad(dd_blocks, d_diff0, n_cols), [_zero_cotangent(x) for x in d_other0], d_spec)
    return dq, dd, _zero_cotangent(jnp.asarray(positives))


_inbatch_ce.defvjp(_inbatch_ce_fwd, _inbatch_ce_bwd)
_inbatch_ce.defvjp(_inbatch_ce_fwd, _inbatch_ce_bwd)


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------


def _check_block(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def blockwise_inbatch_ce(
    q: Any,
    d: Any,
    score_fn: ScoreFn,
    logit_fn: LogitFn,
    *,
    positives: jax.typing.ArrayLike | None = None,
    block_size: int = _DEFAULT_BLOCK,
    row_block_size: int | None = None,
) -> jax.Array:
    """Per-row in-batch cross-entropy, computed tile by tile without holding the [B, N] logit matrix.

    ℓ_bn = logit_fn(score_fn(q_b, d_n), n = p_b)
    loss_b = logsumexp_n ℓ_bn − ℓ_{b p_b}

    The forward pass scans row blocks × column blocks keeping a running log-sum-exp per row; the backward pass
    (a ``jax.custom_vjp``) recomputes every tile from the inputs and the saved per-row log-sum-exp. Memory: the inputs,
    O(B) floats, and one [row_block_size, block_size] tile (times what ``score_fn`` needs for it) at a time.

    Args:
      q: pytree of query-side arrays sharing a leading axis of size B, e.g. [B, D] vectors or a pair
        ([B, M, D] vectors, [B, M] bool mask). Non-float leaves (masks, ids) get no gradient.
      d: pytree of document-side arrays sharing a leading axis of size N.
      score_fn: ``score_fn(q_tile, d_tile) -> [b, n]`` pairwise scores of a tile in the all-pairs layout, e.g.
        :func:`dot_scores` or :func:`sum_of_max_scores`. Must be a pure function of its inputs (it is called
        again in the backward pass) and hashable (a module-level function or ``functools.partial``).
      logit_fn: ``logit_fn(scores [b, n] float32, is_positive [b, n] bool) -> [b, n]`` logits, e.g.
        ``lambda s, pos: s / 0.05``. Pure and hashable; Python-float hyperparameters only (no tracers).
      positives: [B] int column index of each row's positive in ``d``, in [0, N) (not checked on traced
        values: an index outside it silently drops the positive term); default ``arange(B)`` (needs N ≥ B).
      block_size: columns per tile.
      row_block_size: rows per tile; default ``block_size``.

    Returns:
      [B] float32 per-row losses (take ``.mean()`` for the usual loss).

    Example:
      >>> q = jax.random.normal(jax.random.key(0), (10, 4))
      >>> loss = blockwise_inbatch_ce(q, q, dot_scores, lambda s, pos: s, block_size=4).mean()

    References:
      Milakov & Gimelshein, arXiv:1805.02867 (online softmax); Chen et al., Inf-CL, arXiv:2410.17243.
    """
    block_size = _check_block("block_size", block_size)
    row_block_size = block_size if row_block_size is None else _check_block("row_block_size", row_block_size)
    if not callable(score_fn):
        raise ValueError(f"score_fn: expected a callable, got {type(score_fn).__name__}")
    if not callable(logit_fn):
        raise ValueError(f"logit_fn: expected a callable, got {type(logit_fn).__name__}")
    q = jax.tree.map(jnp.asarray, q)
    d = jax.tree.map(jnp.asarray, d)
    n_rows, n_cols = _leading(q), _leading(d)
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"q and d: expected non-empty, got B={n_rows}, N={n_cols}")
    if positives is None:
        if n_cols < n_rows:
            raise ValueError(
                f"positives=None puts row b's positive at column b, which needs N >= B; got B={n_rows}, N={n_cols}"
            )
        positives = jnp.arange(n_rows, dtype=jnp.int32)
    positives = jnp.asarray(positives)
    if positives.shape != (n_rows,) or not jnp.issubdtype(positives.dtype, jnp.integer):
        raise ValueError(
            f"positives: expected an int array of shape ({n_rows},), got {positives.dtype}{positives.shape}"
        )
    # Tiles never exceed the arrays: no compute is spent on padding when B or N is below the block size.
    row_block_size, block_size = min(row_block_size, n_rows), min(block_size, n_cols)
    return _inbatch_ce(score_fn, logit_fn, row_block_size, block_size, q, d, positives.astype(jnp.int32))


def _normalize(x: jax.Array) -> jax.Array:
    """Unit-norm rows in float32 (the tiles' dot products accumulate in float32 whatever the input dtype)."""
    return scorers.l2_normalize(x.astype(jnp.float32))


def _check_pair(z1: jax.Array, z2: jax.Array) -> None:
    for name, z in (("z1", z1), ("z2", z2)):
        if z.ndim != 2:
            raise ValueError(f"{name}: expected shape [B, D], got shape {z.shape}")
        if not jnp.issubdtype(z.dtype, jnp.floating):
            raise ValueError(f"{name}: expected a floating dtype, got dtype {z.dtype}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2: expected the same shape [B, D], got {z1.shape} and {z2.shape}")


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise ValueError(f"{name}: expected a positive Python float, got {value!r}")
    return float(value)


def _infonce_logits(scores: jax.Array, is_pos: jax.Array, *, temperature: float) -> jax.Array:
    del is_pos
    return scores / temperature


def _focal_logits(scores: jax.Array, is_pos: jax.Array, *, temperature: float, margin: float) -> jax.Array:
    # Official sp_logits: positive part cos·cos, negative part (cos + m)·cos, both divided by t.
    return jnp.where(is_pos, scores * scores, scores * (scores + margin)) / temperature


def _gathered_ce(z1, z2, logit_fn, block_size, row_block_size, axis_name, symmetric, negatives, reduction):
    """CE of local rows against (gathered) columns: the global-batch mean on every device, or local per-row losses."""
    q, d = _normalize(z1), _normalize(z2)
    directions = [(q, d), (d, q)] if symmetric else [(q, d)]
    per_row = 0.0
    for rows, cols in directions:
        cols, offset = losses.gather_columns(cols, axis_name)  # [N, D], N = B × devices
        n_global = cols.shape[0]
        if negatives is not None:
            cols = jnp.concatenate([cols, losses.gather_columns(_normalize(negatives), axis_name)[0]])  # [N + M, D]
        positives = offset + jnp.arange(rows.shape[0], dtype=jnp.int32)
        per_row = per_row + blockwise_inbatch_ce(
            rows, cols, dot_scores, logit_fn, positives=positives, block_size=block_size, row_block_size=row_block_size
        )
    per_row = per_row / len(directions)  # [B]
    if reduction == "none":
        return per_row
    loss = jnp.sum(per_row) / n_global
    return loss if axis_name is None else jax.lax.psum(loss, axis_name)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def blockwise_infonce(
    z1: jax.typing.ArrayLike,
    z2: jax.typing.ArrayLike,
    *,
    temperature: float = 0.05,
    symmetric: bool = False,
    block_size: int = _DEFAULT_BLOCK,
    row_block_size: int | None = None,
    axis_name: str | None = None,
    negatives: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """In-batch InfoNCE over cosine similarities, blockwise (never holds the N×N matrix); equals ``losses.infonce``.

    s_ij = cos(z1_i, z2_j)
    L = −(1/N) Σ_i log softmax_j(s_ij / τ)_i        (symmetric: mean of this and the same with z1, z2 swapped)

    With ``negatives`` [M, D], row i's logits are ``[cos(z1_i, z2_j)]_j ++ [cos(z1_i, neg_k)]_k`` / τ (SimCSE's
    supervised hard negatives, shared by all rows), label i.

    Inputs are normalised in float32 outside the custom VJP, so autodiff handles the normalisation.

    Args:
      z1: [B, D] first view (anchors). bf16 inputs are upcast to float32.
      z2: [B, D] second view (positives on the diagonal, every other row an in-batch negative).
      temperature: τ > 0 (Python float).
      symmetric: also average the loss with rows and columns swapped (CLIP-style).
      block_size: columns per tile (memory per tile: row_block_size × block_size float32, a few copies).
      row_block_size: rows per tile; default ``block_size``.
      axis_name: mesh axis inside ``shard_map``/``pmap``: z2 (and z1 when symmetric) are all-gathered as
        negatives, each device's rows have their positive at column ``axis_index × B + i``, and every device
        returns the global-batch mean (N = B × devices).
      negatives: optional [M, D] extra hard negatives appended as columns (all-gathered like z2 under
        ``axis_name``); not with ``symmetric``.
      reduction: ``"mean"`` (global-batch mean) or ``"none"`` (local per-row losses [B]).

    Returns:
      Scalar float32 loss, or [B] per-row losses with ``reduction="none"``.

    Example:
      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> loss = blockwise_infonce(z, z + 0.1, block_size=4)

    References:
      Oord et al., arXiv:1807.03748 (InfoNCE); Gao et al., "SimCSE", EMNLP 2021 (``cl_forward``);
      Chen et al., Inf-CL, arXiv:2410.17243 (tiled loss).
    """
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    _check_pair(z1, z2)
    temperature = _check_positive_float("temperature", temperature)
    _check_reduction(reduction)
    if negatives is not None:
        negatives = jnp.asarray(negatives)
        if (
            negatives.ndim != 2
            or negatives.shape[1] != z1.shape[1]
            or not jnp.issubdtype(negatives.dtype, jnp.floating)
        ):
            raise ValueError(
                f"negatives: expected a floating [M, D={z1.shape[1]}] array, got {negatives.dtype}{negatives.shape}"
            )
        if symmetric:
            raise ValueError("symmetric: expected False when negatives are given (no column-wise loss), got True")
    logit_fn = functools.partial(_infonce_logits, temperature=temperature)
    return _gathered_ce(z1, z2, logit_fn, block_size, row_block_size, axis_name, bool(symmetric), negatives, reduction)


def blockwise_focal_infonce(
    z1: jax.typing.ArrayLike,
    z2: jax.typing.ArrayLike,
    *,
    temperature: float = 0.05,
    margin: float = 0.3,
    block_size: int = _DEFAULT_BLOCK,
    row_block_size: int | None = None,
    axis_name: str | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Focal-InfoNCE (Hou & Li 2023), blockwise; equals ``losses.focal_infonce``.

    s_ij = cos(z1_i, z2_j);  ℓ_ii = s_ii² / τ;  ℓ_ij = s_ij (s_ij + m) / τ  (j ≠ i)
    L = −(1/N) Σ_i log softmax_j(ℓ_ij)_i

    Args:
      z1: [B, D] first view.
      z2: [B, D] second view.
      temperature: τ > 0 (Python float).
      margin: m (Python float), the hardness margin; negatives with s_n > 1 − m are up-weighted.
      block_size: columns per tile.
      row_block_size: rows per tile; default ``block_size``.
      axis_name: as in :func:`blockwise_infonce` (z2 gathered; global-batch mean on every device).
      reduction: ``"mean"`` (global-batch mean) or ``"none"`` (local per-row losses [B]).

    Returns:
      Scalar float32 loss, or [B] per-row losses with ``reduction="none"``.

    Example:
      >>> z = jax.random.normal(jax.random.key(0), (8, 16))
      >>> loss = blockwise_focal_infonce(z, z + 0.1, block_size=4)

    References:
      Hou & Li, "Improving Contrastive Learning of Sentence Embeddings with Focal-InfoNCE", Findings of EMNLP 2023;
      official code puerrrr/Focal-InfoNCE ``focalNCE/models.py: sp_logits``.
    """
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    _check_pair(z1, z2)
    temperature = _check_positive_float("temperature", temperature)
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.floating, np.integer)):
        raise ValueError(f"margin: expected a Python float, got {margin!r}")
    _check_reduction(reduction)
    logit_fn = functools.partial(_focal_logits, temperature=temperature, margin=float(margin))
    return _gathered_ce(z1, z2, logit_fn, block_size, row_block_size, axis_name, False, None, reduction)
