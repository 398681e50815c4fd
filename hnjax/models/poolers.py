"""Poolers: from token states [B, L, D] and a mask [B, L] to one or several vectors per sequence.

Pure functions (``cls``, ``mean``, ``first_n``, ``all_tokens``) hold no parameters. Flax modules hold parameters only
(``PolyCodes``, ``MLPHead``, ``CrossEncoderHead``); the maths they share is the pure ``masked_attention_pool``.

References:
    Reimers & Gurevych (2019), Sentence-BERT (mean pooling).
    Humeau et al. (2020), Poly-encoders: Architectures and Pre-training Strategies for Fast and Accurate
    Multi-sentence Scoring (learned codes attending over token states).
    Gao et al. (2021), SimCSE (MLP over [CLS] during training only; ``MLPLayer`` in the official ``models.py``).
    Zhang & Stratos (2021), Understanding Hard Negatives in Noise Contrastive Estimation (first-n multi-vector).
    Devlin et al. (2019), BERT (pooler: dense + tanh on [CLS]).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_INIT_STD = 0.02


def _check(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    if hidden.ndim != 3:
        raise ValueError(f"hidden: expected shape [B, L, D], got {hidden.shape}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask: expected shape {hidden.shape[:2]}, got {mask.shape}")
    return mask.astype(bool)


def cls(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """First-token ([CLS] / <s>) pooling: v_b = h_{b,0}.

    Args:
        hidden: [B, L, D] token states.
        mask: [B, L] bool (or 0/1), true for real tokens; only its shape is checked.

    Returns:
        [B, D].
    """
    _check(hidden, mask)
    return hidden[:, 0]


def mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean: v_b = Σ_l m_bl h_bl / max(Σ_l m_bl, 1e-9), accumulated in float32.

    A row without real tokens gives the zero vector (sentence-transformers' clamp).

    Args:
        hidden: [B, L, D] token states.
        mask: [B, L] bool (or 0/1), true for real tokens.

    Returns:
        [B, D] float32.

    Example:
        >>> mean(jnp.ones((1, 3, 2)), jnp.array([[True, True, False]]))
        Array([[1., 1.]], dtype=float32)
    """
    m = _check(hidden, mask)
    total = jnp.einsum("bld,bl->bd", hidden, m.astype(hidden.dtype), preferred_element_type=jnp.float32)
    count = jnp.maximum(m.sum(axis=1, dtype=jnp.float32), 1e-9)[:, None]  # [B, 1]
    return total / count


def first_n(hidden: jax.Array, mask: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """The first n token states as n vectors per sequence (multi-vector encoder); zero-padded when L < n.

    Args:
        hidden: [B, L, D] token states.
        mask: [B, L] bool (or 0/1).
        n: number of vectors, n ≥ 1 (static).

    Returns:
        ``([B, n, D], [B, n] bool)``; positions past a sequence's end are masked out.
    """
    m = _check(hidden, mask)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    length = hidden.shape[1]
    if length < n:
        hidden = jnp.pad(hidden, ((0, 0), (0, n - length), (0, 0)))
        m = jnp.pad(m, ((0, 0), (0, n - length)))
    return hidden[:, :n], m[:, :n]


def all_tokens(hidden: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every token state (late interaction / sum-of-max).

    Returns:
        ``(hidden [B, L, D], mask [B, L] bool)``.
    """
    return hidden, _check(hidden, mask)


def masked_attention_pool(queries: jax.Array, hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Each query vector attends over the unmasked token states by dot-product softmax.

    a_bml = softmax_l(⟨c_m, h_bl⟩ over l with m_bl), out_bm = Σ_l a_bml h_bl. Rows without real tokens give zeros.

    Args:
        queries: [M, D] (shared) or [B, M, D] query vectors.
        hidden: [B, L, D] token states.
        mask: [B, L] bool (or 0/1).

    Returns:
        [B, M, D] float32.
    """
    m = _check(hidden, mask)
    if queries.ndim == 2:
        queries = jnp.broadcast_to(queries, (hidden.shape[0],) + queries.shape)
    if queries.ndim != 3 or queries.shape[0] != hidden.shape[0] or queries.shape[2] != hidden.shape[2]:
        raise ValueError(
            f"queries: expected [M, {hidden.shape[2]}] or [{hidden.shape[0]}, M, {hidden.shape[2]}], "
            f"got {queries.shape}"
        )
    logits = jnp.einsum("bmd,bld->bml", queries, hidden, preferred_element_type=jnp.float32)  # [B, M, L]
    logits = jnp.where(m[:, None, :], logits, -jnp.inf)
    any_token = m.any(axis=1)[:, None, None]  # [B, 1, 1]
    weights = jax.nn.softmax(jnp.where(any_token, logits, 0.0), axis=-1) * any_token
    return jnp.einsum("bml,bld->bmd", weights, hidden.astype(jnp.float32))


def init_poly_codes(key: jax.Array, num_codes: int, width: int) -> jax.Array:
    """Initial poly codes c_1..c_m ~ N(0, 0.02²), float32 [m, D].

    Args:
        key: PRNG key.
        num_codes: m ≥ 1.
        width: D.

    Returns:
        [num_codes, width] float32.
    """
    if not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"num_codes: expected a positive integer, got {num_codes!r}")
    return _INIT_STD * jax.random.normal(key, (num_codes, width), jnp.float32)


class PolyCodes(nn.Module):
    """m learned codes c_1..c_m ~ N(0, 0.02²), each attending over the token states (poly-encoder).

    The parameter is ``{"codes": [m, D]}``; :func:`init_poly_codes` draws it, so the retriever keeps its codes in its
    plain parameter dict and applies this module with them.

    Attributes:
        num_codes: m.

    Returns from ``__call__(hidden [B, L, D], mask [B, L])``: [B, m, D] float32.
    """

    num_codes: int

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array) -> jax.Array:
        codes = self.param(
            "codes", lambda key, m, width: init_poly_codes(key, m, width), self.num_codes, hidden.shape[-1]
        )
        return masked_attention_pool(codes, hidden, mask)


class MLPHead(nn.Module):
    """SimCSE's training-time head: v ↦ tanh(W v + b), W [D, D'] (D' = D unless ``features`` is set).

    Attributes:
        features: output width; None keeps the input width.
        dtype: compute dtype.

    Returns from ``__call__(x [..., D])``: [..., D'] float32.
    """

    features: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1] if self.features is None else self.features
        dense = nn.Dense(
            features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.normal(_INIT_STD)
        )
        return jnp.tanh(dense(x).astype(jnp.float32))


class CrossEncoderHead(nn.Module):
    """Cross-encoder score: s_b = w · dropout(tanh(P v_b + p)) + c, v_b = h_{b,0} ("cls") or the masked mean ("mean").

    The pooler (P, p) is BERT's; :func:`hnjax.models.loading.init_cross_encoder_head` loads it from a checkpoint.
    ``"cls"`` is BERT's (and hard-nce-el's) pooled output. ``"mean"`` suits encoders trained with mean pooling
    (sentence-transformers checkpoints such as all-MiniLM-L6-v2), whose [CLS] states are nearly the same for every
    input.

    Attributes:
        dropout_rate: dropout on the pooled vector (rng "dropout" when ``deterministic=False``).
        pooling: ``"cls"`` or ``"mean"`` (needs ``mask``).
        dtype: compute dtype.

    Returns from ``__call__(hidden [B, L, D], mask [B, L] = None, deterministic=True)``: scores [B] float32.
    """

    dropout_rate: float = 0.1
    pooling: str = "cls"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        if hidden.ndim != 3:
            raise ValueError(f"hidden: expected shape [B, L, D], got {hidden.shape}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: expected 'cls' or 'mean', got {self.pooling!r}")
        if self.pooling == "mean":
            if mask is None:
                raise ValueError("pooling 'mean' needs the token mask [B, L]")
            first = mean(hidden, mask)
        else:
            first = hidden[:, 0]
        width = hidden.shape[-1]
        init = nn.initializers.normal(_INIT_STD)
        pooler = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name="pooler")
        pooled = jnp.tanh(pooler(first.astype(self.dtype)).astype(jnp.float32))  # [B, D]
        pooled = nn.Dropout(self.dropout_rate)(pooled, deterministic=deterministic)
        score = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init, name="score")(pooled)
        return score[:, 0].astype(jnp.float32)
