"""Score functions of multi-vector retrievers: the general late-interaction score and its named cases.

A query is a set of m vectors q_1..q_m and a document a set of n vectors d_1..d_n (width D), each with a boolean
mask (True = real vector, False = padding). Zhang & Stratos (2021) write the retrievers they compare as one score
with two kinds of attention:

- hard attention: s(q, d) = Σ_i max_j ⟨q_i, d_j⟩ (sums over real i, max over real j). Named cases: `dual`
  (m = n = 1, a plain dot product), `multi_vector` (m = 1, the first n document vectors), `sum_of_max` (all token
  vectors on both sides; ColBERT-like).
- soft attention: s(q, d) = Σ_j ⟨d_j, Σ_i softmax_i(⟨d_j, q_i⟩) q_i⟩, document vectors attend over the query
  vectors (`poly`; with one document vector and m learned query codes this is the poly-encoder).

Two layouts, chosen by the rank of the document tensor:

- all pairs: d is [N, n, D] (a shared pool of N documents); scores are [B, N].
- paired candidates: d is [B, K, n, D] (K candidates per query); scores are [B, K].

Scores accumulate in float32 (`preferred_element_type`) for bfloat16/float16/float32 inputs and are returned in
float32 (float64 for float64 inputs). Masked vectors are replaced by zeros before any arithmetic, so padding values
(however large, even inf/nan) never reach a score or a gradient.

Empty sets. A query with no real vector, or a document with no real vector, has no meaningful score. When the masks
are concrete (not traced by `jit`/`vmap`/`grad`) this raises a ValueError, unless ``allow_empty=True``. Under a trace
it cannot raise; every such pair then scores exactly `MASKED_SCORE` (-1e30, finite so that a softmax over a row of
them gives no NaN), and its gradient with respect to every input is zero.

All functions are pure and work under `jax.jit`, `jax.vmap` (over an extra leading axis) and `jax.grad`.

Memory: the similarity tensor of one block of documents is [B, block_size, m, n] in the accumulation dtype; documents
are processed in blocks of ``block_size`` with `jax.lax.map` and each block is rematerialised in the backward pass
(`jax.checkpoint`), so peak memory beyond inputs and outputs is O(B·block_size·m·n) floats in both directions,
independent of N (or K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MASKED_SCORE = -1e30
"""Score of a (query, document) pair in which either side has no real vector (see the module docstring)."""

ATTENTIONS = ("hard", "soft")
DEFAULT_BLOCK_SIZE = 1024

NORM_EPS = 1e-8
"""Floor of a vector's norm in :func:`l2_normalize`: ``torch.nn.CosineSimilarity``'s eps, which SimCSE uses."""


def l2_normalize(x: jax.typing.ArrayLike, *, eps: float = NORM_EPS) -> jax.Array | np.ndarray:
    """Vectors scaled to unit L2 norm along the last axis: x / max(‖x‖₂, eps).

    The library's one normalisation, behind every cosine similarity: the in-batch losses, mining's cosine metric,
    sentence embeddings and the host-side metrics of :mod:`hnjax.eval`. A vector with norm below ``eps`` is divided by
    ``eps`` (a zero vector stays zero), and the gradient is finite everywhere: computed as
    x · rsqrt(max(Σ x², eps²)). A NumPy array is normalised on the host with NumPy and stays a NumPy array; anything
    else goes through ``jax.numpy`` (and works under ``jit``, ``grad`` and ``vmap``).

    Args:
      x: vectors [..., D], NumPy or JAX.
      eps: floor of the norm.

    Returns:
      [..., D] in at least float32 (bfloat16 and float16 give float32, float64 stays float64).

    Example:
      >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
      array([[0.6, 0.8],
             [0. , 0. ]])

    References:
      ``torch.nn.CosineSimilarity`` (eps 1e-8 on the norm), as used by SimCSE's ``Similarity``.
    """
    if isinstance(x, (np.ndarray, np.generic)):  # host arrays stay on the host (metrics, FAISS)
        x = x.astype(np.promote_types(x.dtype, np.float32))
        return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), eps * eps))
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _shape_name(x: jax.Array) -> str:
    return f"shape {tuple(x.shape)}"


def _as_vectors(x, name: str, ranks: tuple[int, ...], layouts: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim not in ranks:
        raise ValueError(f"{name}: expected rank {' or '.join(map(str, ranks))} ({layouts}), got {_shape_name(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    return x


def _as_mask(mask, name: str, shape: tuple[int, ...], allow_empty: bool, what: str) -> jax.Array | None:
    """Validates a mask (None = all real, kept None); raises on an all-False row when the mask is concrete."""
    if mask is None:
        return None
    if not hasattr(mask, "dtype"):
        mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"{name}: expected dtype bool (True = real vector), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the vectors' shape without D), got {mask.shape}")
    if not allow_empty and not isinstance(mask, jax.core.Tracer) and mask.size:
        empty = np.argwhere(~np.asarray(mask).any(axis=-1))  # concrete masks only: a host read, outside any trace
        if empty.size:
            raise ValueError(
                f"{name} has {len(empty)} {what} with no real vector (all False), first at index "
                f"{tuple(int(i) for i in empty[0])}; pass allow_empty=True to score such pairs as MASKED_SCORE"
            )
    return jnp.asarray(mask)


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
    return int(block_size)


def _acc_dtype(*dtypes) -> jnp.dtype:
    # float32 accumulation for low-precision inputs; float64 stays float64 (for references and gradient checks).
    return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


def _validate_pair(q, d, q_mask, d_mask, allow_empty: bool):
    """Common validation of late-interaction inputs; returns arrays and masks (None stays None: all real)."""
    q = _as_vectors(q, "q", (3,), "[B, m, D]")
    d = _as_vectors(d, "d", (3, 4), "[N, n, D] all pairs or [B, K, n, D] paired")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"q and d: expected the same width D, got q {_shape_name(q)} and d {_shape_name(d)}")
    if d.ndim == 4 and d.shape[0] != q.shape[0]:
        raise ValueError(
            f"d: expected d.shape[0] == B={q.shape[0]} of q {_shape_name(q)} (paired layout), got d {_shape_name(d)}"
        )
    if q.shape[1] == 0:
        raise ValueError(f"q: expected at least one vector per query (m >= 1), got {_shape_name(q)}")
    if d.shape[-2] == 0:
        raise ValueError(f"d: expected at least one vector per document (n >= 1), got {_shape_name(d)}")
    q_mask = _as_mask(q_mask, "q_mask", q.shape[:-1], allow_empty, "queries")
    d_mask = _as_mask(d_mask, "d_mask", d.shape[:-1], allow_empty, "documents")
    return q, d, q_mask, d_mask


def reduce_sum_of_max(sim: jax.Array, q_mask: jax.Array | None = None, d_mask: jax.Array | None = None) -> jax.Array:
    """Sum over real query vectors of the max over real document vectors: Σ_{i: q_mask_i} max_{j: d_mask_j} sim_ij.

    The hard-attention reduction of a similarity tile; :func:`late_interaction` and the blockwise in-batch loss
    (:func:`hnjax.blockwise.sum_of_max_scores`) both reduce their tiles with it. A document with no real vector
    contributes 0 (the masked maximum would be ``finfo.min``), and so does every padding query vector.

    Args:
      sim: similarities [B, C, m, n] of B queries' m vectors against C documents' n vectors.
      q_mask: bool [B, 1, m] (or broadcastable to [B, C, m]); None means all real.
      d_mask: bool [B or 1, C, n]; None means all real.

    Returns:
      [B, C] scores in the dtype of ``sim``.

    Example:
      >>> sim = jnp.array([[[[1.0, 3.0], [2.0, 0.0]]]])  # B = C = 1, m = n = 2
      >>> reduce_sum_of_max(sim)  # max(1, 3) + max(2, 0)
      Array([[5.]], dtype=float32)

    References:
      Khattab & Zaharia, "ColBERT", SIGIR 2020 (MaxSim); Zhang & Stratos, NAACL 2021 (SOM).
    """
    qm, dm = q_mask, d_mask
    if dm is not None:
        sim = jnp.where(dm[:, :, None, :], sim, jnp.finfo(sim.dtype).min)
    best = jnp.max(sim, axis=-1)  # [B, C, m]
    if qm is not None:
        best = jnp.where(qm, best, 0)
    if dm is not None:  # an empty document gives finfo.min maxima: keep them out of the sum (no overflow)
        best = jnp.where(jnp.any(dm, axis=-1, keepdims=True), best, 0)
    return jnp.sum(best, axis=-1)


def _reduce_soft(sim, qm, dm):
    """Σ_j Σ_i softmax_i(sim_ij) sim_ij over real i, j; equals Σ_j ⟨d_j, Σ_i softmax_i(⟨d_j, q_i⟩) q_i⟩."""
    logits = sim if qm is None else jnp.where(qm[..., None], sim, jnp.finfo(sim.dtype).min)
    attn = jax.nn.softmax(logits, axis=2)  # [B, C, m, n], over query vectors i
    per_doc_vec = jnp.sum(attn * sim, axis=2)  # [B, C, n] = ⟨d_j, attended query vector⟩
    if dm is not None:
        per_doc_vec = jnp.where(dm, per_doc_vec, 0)
    return jnp.sum(per_doc_vec, axis=-1)


_REDUCERS = {"hard": reduce_sum_of_max, "soft": _reduce_soft}


def _late_interaction_impl(q, d, q_mask, d_mask, attention: str, block_size: int):
    """Validated inputs -> scores; a mask of None means all real (no masking ops, no constant masks to fold).

    Documents (all pairs) or candidates (paired) are processed in blocks of `block_size`.
    """
    acc = _acc_dtype(q.dtype, d.dtype)
    reduce = _REDUCERS[attention]
    paired = d.ndim == 4
    num = d.shape[1] if paired else d.shape[0]  # documents (all pairs) or candidates per query (paired)
    blocked = num > block_size
    qm = q_any = None
    if q_mask is not None:
        q = jnp.where(q_mask[..., None], q, 0)  # padding never reaches arithmetic, values nor gradients
        qm, q_any = q_mask[:, None, :], jnp.any(q_mask, axis=-1)[:, None]  # [B, 1, m], [B, 1]
    if d_mask is not None:
        d = jnp.where(d_mask[..., None], d, 0)
    # Blocks are taken along axis 0, so a blocked paired layout puts its candidate axis first: [K, B, n, D].
    cand_first = paired and blocked
    if cand_first:
        d = jnp.swapaxes(d, 0, 1)
        d_mask = None if d_mask is None else jnp.swapaxes(d_mask, 0, 1)
    spec = ("bih,cbjh->bcij" if cand_first else "bih,bcjh->bcij") if paired else "bih,cjh->bcij"

    def block(d_blk, dm_blk):  # d_blk [C, n, D], [B, C, n, D] or [C, B, n, D]; dm_blk alike without D, or None
        sim = jnp.einsum(spec, q, d_blk, preferred_element_type=acc)  # [B, C, m, n]
        dm = dm_blk
        if dm is not None:  # -> [B or 1, C, n]
            dm = jnp.swapaxes(dm, 0, 1) if cand_first else (dm if paired else dm[None])
        scores = reduce(sim, qm, dm)
        valid = q_any
        if dm is not None:
            valid = jnp.any(dm, axis=-1) if valid is None else valid & jnp.any(dm, axis=-1)
        return scores if valid is None else jnp.where(valid, scores, jnp.asarray(MASKED_SCORE, acc))

    if not blocked:
        return block(d, d_mask)
    block = jax.checkpoint(block)  # keep only inputs per block for the backward pass
    full = num // block_size

    def split(x):  # leading full blocks [full, block_size, ...] and the remainder [num - full·block_size, ...]
        if x is None:
            return None, None
        return x[: full * block_size].reshape(full, block_size, *x.shape[1:]), x[full * block_size :]

    (d_head, d_tail), (m_head, m_tail) = split(d), split(d_mask)
    out = jax.lax.map(lambda xs: block(*xs), (d_head, m_head))  # [full, B, block_size]
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape[0], full * block_size)
    if num > full * block_size:
        out = jnp.concatenate([out, block(d_tail, m_tail)], axis=1)
    return out


_late_interaction_jit = jax.jit(_late_interaction_impl, static_argnames=("attention", "block_size"))


def late_interaction(
    q: jax.typing.ArrayLike,
    d: jax.typing.ArrayLike,
    q_mask: jax.typing.ArrayLike | None = None,
    d_mask: jax.typing.ArrayLike | None = None,
    attention: str = "hard",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    allow_empty: bool = False,
) -> jax.Array:
    """The general multi-vector score with hard or soft attention.

    hard: s(q, d) = Σ_{i: q_mask_i} max_{j: d_mask_j} ⟨q_i, d_j⟩
    soft: s(q, d) = Σ_{j: d_mask_j} ⟨d_j, Σ_{i: q_mask_i} softmax_i(⟨d_j, q_i⟩) q_i⟩
    (softmax over the real query vectors only). A pair with no real query or no real document vector scores
    `MASKED_SCORE` (see the module docstring; with concrete masks it raises unless ``allow_empty``).

    Args:
      q: query vectors [B, m, D].
      d: document vectors, [N, n, D] (all pairs: every query against every document) or [B, K, n, D] (paired: K
        candidates per query). The layout is decided by the rank of d.
      q_mask: bool [B, m], True for real vectors; None means all real.
      d_mask: bool [N, n] or [B, K, n]; None means all real.
      attention: "hard" (dual / multi-vector / sum-of-max) or "soft" (poly).
      block_size: documents (all pairs) or candidates (paired) scored per step; peak extra memory is
        O(B·block_size·m·n) floats, forward and backward.
      allow_empty: if False, concrete masks with an all-False row raise ValueError.

    Returns:
      float32 scores [B, N] (all pairs) or [B, K] (paired); float64 for float64 inputs.

    Example:
      >>> q = jnp.ones((2, 3, 4)); d = jnp.ones((5, 6, 4))
      >>> late_interaction(q, d, attention="hard").shape
      (2, 5)

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021 (general score
      function); official code WenzhengZhang/hard-nce-el, retriever.py `HardAttention`, `SoftAttention`.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention: expected one of {ATTENTIONS}, got {attention!r}")
    block_size = _check_block_size(block_size)
    q, d, q_mask, d_mask = _validate_pair(q, d, q_mask, d_mask, allow_empty)
    return _late_interaction_jit(q, d, q_mask, d_mask, attention=attention, block_size=block_size)


def sum_of_max(
    q: jax.typing.ArrayLike,
    d: jax.typing.ArrayLike,
    q_mask: jax.typing.ArrayLike | None = None,
    d_mask: jax.typing.ArrayLike | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    allow_empty: bool = False,
) -> jax.Array:
    """Sum-of-max (SOM) score over all token vectors: s(q, d) = Σ_i max_j ⟨q_i, d_j⟩ over real i, j.

    Args:
      q: query token vectors [B, m, D].
      d: document token vectors [N, n, D] (all pairs) or [B, K, n, D] (paired candidates).
      q_mask: bool [B, m] (True = real token); None means all real.
      d_mask: bool [N, n] or [B, K, n]; None means all real.
      block_size: documents/candidates per step; the all-pairs similarity is never materialised beyond
        [B, block_size, m, n] floats (forward and backward).
      allow_empty: see `late_interaction`.

    Returns:
      float32 scores [B, N] or [B, K] (float64 for float64 inputs).

    Example:
      >>> q = jnp.array([[[1.0, 0.0], [0.0, 1.0]]]); d = jnp.array([[[2.0, 0.0], [0.0, 3.0]]])
      >>> sum_of_max(q, d)  # max(2, 0) + max(0, 3)
      Array([[5.]], dtype=float32)

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021 (SOM retriever);
      official code WenzhengZhang/hard-nce-el, retriever.py `HardAttention` (`--type_model sum_max`).
    """
    return late_interaction(q, d, q_mask, d_mask, attention="hard", block_size=block_size, allow_empty=allow_empty)


def poly(
    q: jax.typing.ArrayLike,
    d: jax.typing.ArrayLike,
    q_mask: jax.typing.ArrayLike | None = None,
    d_mask: jax.typing.ArrayLike | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    allow_empty: bool = False,
) -> jax.Array:
    """Soft-attention (poly) score: document vectors attend over the query vectors.

    s(q, d) = Σ_j ⟨d_j, Σ_i softmax_i(⟨d_j, q_i⟩) q_i⟩ = Σ_j Σ_i softmax_i(⟨d_j, q_i⟩) ⟨d_j, q_i⟩,
    softmax over real i, sum over real j. With n = 1 document vector ([CLS]) and q = m learned codes attending over
    the query tokens (computed by the encoder's pooler) this is the poly-encoder of Humeau et al. (2020).

    Args:
      q: query vectors (poly codes or token vectors) [B, m, D].
      d: document vectors [N, n, D] (all pairs) or [B, K, n, D] (paired candidates).
      q_mask: bool [B, m]; None means all real.
      d_mask: bool [N, n] or [B, K, n]; None means all real.
      block_size: documents/candidates per step; extra memory O(B·block_size·m·n) floats, forward and backward.
      allow_empty: see `late_interaction`.

    Returns:
      float32 scores [B, N] or [B, K] (float64 for float64 inputs).

    Example:
      >>> q = jnp.ones((2, 4, 8)); d = jnp.ones((3, 1, 8))
      >>> poly(q, d).shape
      (2, 3)

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021 (POLY retriever);
      official code WenzhengZhang/hard-nce-el, retriever.py `SoftAttention` / `PolyAttention`. Humeau et al.,
      "Poly-encoders", ICLR 2020.
    """
    return late_interaction(q, d, q_mask, d_mask, attention="soft", block_size=block_size, allow_empty=allow_empty)


def multi_vector(
    q: jax.typing.ArrayLike,
    d: jax.typing.ArrayLike,
    n: int,
    d_mask: jax.typing.ArrayLike | None = None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    allow_empty: bool = False,
) -> jax.Array:
    """Multi-vector (MULTI-n) score: one query vector against the first n document vectors, s = max_{j<n} ⟨q, d_j⟩.

    Only the first n document vectors (and mask entries) are used, as in the official code, which takes entity
    positions 0..n-1 ([CLS] plus the first title word pieces).

    Args:
      q: query vectors [B, D] or [B, 1, D].
      d: document vectors [N, L, D] (all pairs) or [B, K, L, D] (paired), with L >= n.
      n: number of leading document vectors to use, 1 <= n <= L.
      d_mask: bool [N, L] or [B, K, L]; None means all real. Only its first n entries are used.
      block_size: documents/candidates per step (see `sum_of_max`).
      allow_empty: see `late_interaction` (applies to the first n entries of d_mask).

    Returns:
      float32 scores [B, N] or [B, K] (float64 for float64 inputs).

    Example:
      >>> q = jnp.array([[1.0, 0.0]]); d = jnp.array([[[1.0, 0.0], [3.0, 0.0], [9.0, 0.0]]])
      >>> multi_vector(q, d, n=2)  # max(1, 3); the third vector is not used
      Array([[3.]], dtype=float32)

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021 (MULTI-n);
      official code WenzhengZhang/hard-nce-el, retriever.py `HardAttention` (`--type_model multi_vector`,
      `--num_entity_vecs`). Luan et al., "Sparse, Dense, and Attentional Representations for Text Retrieval", TACL
      2021.
    """
    q = _as_vectors(q, "q", (2, 3), "[B, D] or [B, 1, D]")
    if q.ndim == 3 and q.shape[1] != 1:
        raise ValueError(f"q: expected [B, D] or [B, 1, D] (multi_vector takes one query vector), got {_shape_name(q)}")
    d = _as_vectors(d, "d", (3, 4), "[N, L, D] all pairs or [B, K, L, D] paired")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= d.shape[-2]:
        raise ValueError(f"n: expected an int with 1 <= n <= L = d.shape[-2] = {d.shape[-2]}, got {n!r}")
    if d_mask is not None:
        d_mask = d_mask if hasattr(d_mask, "shape") else np.asarray(d_mask)
        if tuple(d_mask.shape) != tuple(d.shape[:-1]):
            raise ValueError(f"d_mask: expected shape {tuple(d.shape[:-1])} (d without D), got {d_mask.shape}")
        d_mask = d_mask[..., :n]
    q = q.reshape(q.shape[0], 1, q.shape[-1])
    return late_interaction(
        q, d[..., :n, :], None, d_mask, attention="hard", block_size=block_size, allow_empty=allow_empty
    )


def dual(q: jax.typing.ArrayLike, d: jax.typing.ArrayLike) -> jax.Array:
    """Dual-encoder (bi-encoder) score: the dot product s(q, d) = ⟨q, d⟩.

    Args:
      q: query vectors [B, D].
      d: document vectors [N, D] (all pairs) or [B, K, D] (paired candidates).

    Returns:
      float32 scores [B, N] or [B, K] (float64 for float64 inputs).

    Example:
      >>> dual(jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0], [1.0, 0.0]]))
      Array([[11.,  1.]], dtype=float32)

    References:
      Zhang & Stratos, "Understanding Hard Negatives in Noise Contrastive Estimation", NAACL 2021 (DUAL);
      official code WenzhengZhang/hard-nce-el, retriever.py `HardAttention` with one vector per side
      (`--type_model dual`). Wu et al., "Scalable Zero-shot Entity Linking with Dense Entity Retrieval", EMNLP 2020.
    """
    q = _as_vectors(q, "q", (2,), "[B, D]")
    d = _as_vectors(d, "d", (2, 3), "[N, D] all pairs or [B, K, D] paired")
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"q and d: expected the same width D, got q {_shape_name(q)} and d {_shape_name(d)}")
    acc = _acc_dtype(q.dtype, d.dtype)
    if d.ndim == 2:
        return jnp.einsum("bh,nh->bn", q, d, preferred_element_type=acc)
    if d.shape[0] != q.shape[0]:
        raise ValueError(
            f"d: expected d.shape[0] == B={q.shape[0]} of q {_shape_name(q)} (paired layout), got d {_shape_name(d)}"
        )
    return jnp.einsum("bh,bkh->bk", q, d, preferred_element_type=acc)
