"""Gradient caching (GradCache) for contrastive encoders: a big in-batch loss with a small activation footprint.

An in-batch contrastive loss couples every example of the batch, so plain backprop must keep the encoder activations
of the whole batch. GradCache (Gao et al. 2021) splits the step in three:

    1. e_c = f(θ, x_c, k_c)         for each chunk c, no gradient (only the embeddings are kept)
    2. L, g = L(e), ∂L/∂e            on the full set of embeddings (e.g. a blockwise loss)
    3. ∂L/∂θ = Σ_c (∂e_c/∂θ)ᵀ g_c    per chunk: recompute f on chunk c, pull g_c back (vector-Jacobian product)

Since ∂L/∂θ = Σ_c (∂e_c/∂θ)ᵀ ∂L/∂e_c exactly, the result equals ``jax.value_and_grad`` of the unchunked computation,
provided the chunk's forward pass in step 3 is the same function as in step 1: same parameters, same input, and the
same random key k_c = fold_in(key, c), so dropout masks agree. Both loops are ``lax.scan``s; only one chunk's
activations are alive at a time in step 3 (each scan iteration is its own rematerialisation boundary), and gradients
are accumulated over chunks locally, with one cross-device reduction at the end (``axis_name``).

References:
  Gao, Zhang, Han & Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
  RepL4NLP 2021, arXiv:2101.06983 (official code luyug/GradCache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

EncodeFn = Callable[[Any, Any, Any], Any]
LossFn = Callable[[Any], jax.Array]


def _chunked(batch: Any, chunk_size: int) -> tuple[Any, int]:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("batch must contain at least one array")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every array in batch must share a leading batch axis; got leading sizes {sizes}")
    (n,) = sizes
    if n % chunk_size:
        raise ValueError(f"batch: expected a batch size divisible by chunk_size={chunk_size}, got {n}")
    n_chunks = n // chunk_size
    return jax.tree.map(lambda x: jnp.reshape(x, (n_chunks, chunk_size) + np.shape(x)[1:]), batch), n_chunks


def _unchunk(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def chunk_keys(key: jax.Array | None, n_chunks: int) -> jax.Array | None:
    """Per-chunk keys ``fold_in(key, c)`` for c = 0 … n_chunks − 1 (None stays None).

    Args:
      key: a PRNG key, or None for a deterministic encoder.
      n_chunks: number of chunks.

    Returns:
      [n_chunks] keys (stacked), or None.
    """
    if key is None:
        return None
    return jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(n_chunks))


def _embed_chunks(encode_fn: EncodeFn, params: Any, chunks: Any, keys: jax.Array | None) -> Any:
    """``encode_fn`` of every chunk (``lax.map``, one chunk's activations at a time), concatenated over chunks."""
    return _unchunk(jax.lax.map(lambda xs: encode_fn(params, xs[0], xs[1]), (chunks, keys)))


def _chunk_vjp_sum(
    encode_fn: EncodeFn,
    params: Any,
    chunks: Any,
    keys: jax.Array | None,
    emb_grad: Any,
    n_chunks: int,
    axis_name: str | None = None,
) -> Any:
    """Σ_c vjp(encode_fn(·, chunk_c, key_c), params)(emb_grad_c): each chunk encoded again with its key (the same
    dropout masks), its embedding gradient pulled back to the parameters, summed with ``lax.scan``. With
    ``axis_name`` the accumulator is device-varying (no implicit cross-device reduction)."""
    emb_grad = jax.tree.map(lambda x: x.reshape((n_chunks, -1) + x.shape[1:]), emb_grad)

    def backward_chunk(acc, xs):
        chunk, k, g = xs
        _, vjp = jax.vjp(lambda p: encode_fn(p, chunk, k), params)
        (grad,) = vjp(g)
        return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, grad), None

    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
    if axis_name is not None:
        zeros = jax.tree.map(lambda x: _to_varying(x, axis_name), zeros)
    grads, _ = jax.lax.scan(backward_chunk, zeros, (chunks, keys, emb_grad))
    return grads


def grad_cache(
    encode_fn: EncodeFn,
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    *,
    chunk_size: int,
    key: jax.Array | None,
    axis_name: str | None = None,
) -> tuple[jax.Array, Any]:
    """Loss and parameter gradient of ``loss_fn(encode(params, batch))``, encoding in chunks (GradCache).

    e = concat_c encode_fn(θ, x_c, fold_in(key, c))      (chunks of ``chunk_size`` rows, c = 0 … B/chunk_size − 1)
    returns  L(e),  Σ_c vjp(encode_fn(·, x_c, k_c), θ)(∂L/∂e_c)

    This is exactly ``jax.value_and_grad(lambda θ: loss_fn(concat_c encode_fn(θ, x_c, k_c)))(params)`` (the test
    checks it with dropout active), with the encoder activations of one chunk alive at a time.

    Two-view SimCSE: let ``encode_fn`` return both views of a chunk, each with its own key derived from the chunk key,
    e.g. ``lambda p, x, k: (enc(p, x, fold_in(k, 0)), enc(p, x, fold_in(k, 1)))`` and
    ``loss_fn = lambda e: losses.infonce(*e)`` (or a blockwise loss): the cached and the recomputed pass see the same
    two dropout masks per chunk, and the gradient flows through both views.

    Args:
      encode_fn: ``encode_fn(params, chunk, key) -> embeddings``: ``chunk`` is ``batch`` with every leaf's leading
        axis cut to ``chunk_size``; the embeddings pytree has leaves with leading axis ``chunk_size``.
      loss_fn: ``loss_fn(embeddings) -> scalar`` on the full batch of embeddings (leading axis B).
      params: parameter pytree (floating leaves are differentiated).
      batch: pytree of arrays with leading axis B (token ids, masks, ...); B must be divisible by ``chunk_size``.
      chunk_size: rows per encoder chunk.
      key: PRNG key for the encoder (dropout); chunk c uses ``fold_in(key, c)``. None for a deterministic encoder
        (``encode_fn`` then receives None).
      axis_name: mesh axis when called inside ``shard_map``/``pmap`` with a per-device batch and a ``loss_fn`` that
        gathers across that axis: parameter gradients are accumulated locally over chunks and reduced with one
        ``psum`` at the end (the parameters are cast to device-varying first, so no reduction happens per chunk).

    Returns:
      (loss scalar, grads with the structure of ``params``).

    Example:
      >>> enc = lambda p, x, k: jnp.tanh(x @ p)
      >>> p, x = jnp.ones((3, 2)), jnp.ones((8, 3))
      >>> loss, g = grad_cache(enc, lambda e: jnp.sum(e**2), p, x, chunk_size=4, key=None)

    References:
      Gao et al., arXiv:2101.06983 (GradCache; official ``GradCache.cache_step``: ``forward_no_grad``,
      ``build_cache``, ``forward_backward``).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if not callable(encode_fn) or not callable(loss_fn):
        raise ValueError("encode_fn, loss_fn: expected callables")
    chunks, n_chunks = _chunked(batch, int(chunk_size))
    keys = chunk_keys(key, n_chunks)
    if axis_name is not None:
        # Device-varying parameters: the per-chunk VJP then yields this device's contribution without an implicit
        # all-reduce, and the single psum below is the only cross-device gradient reduction of the step.
        params = jax.tree.map(lambda x: _to_varying(x, axis_name), params)

    # 1. Embeddings of every chunk, no gradient.
    embeddings = jax.lax.stop_gradient(_embed_chunks(encode_fn, params, chunks, keys))

    # 2. Loss and its gradient w.r.t. the embeddings, on the full batch.
    loss, emb_grad = jax.value_and_grad(loss_fn)(embeddings)

    # 3. Per-chunk VJP with the same keys, summed over chunks.
    grads = _chunk_vjp_sum(encode_fn, params, chunks, keys, emb_grad, n_chunks, axis_name)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
    return loss, grads


def _to_varying(x: jax.Array, axis_name: str) -> jax.Array:
    """Marks ``x`` device-varying over ``axis_name`` inside ``shard_map`` (no-op where it already is)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    varying = frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))
    if axis_name in varying:
        return x
    try:
        return jax.lax.pcast(x, axis_name, to="varying")
    except ValueError:
        # pmap has no device-varying types (pcast is shard_map-only): its per-device VJP never inserts a reduction.
        return x


def _zero_cotangent(x: Any) -> Any:
    """The cotangent of a non-differentiable input: float0 zeros (integers, booleans, PRNG keys) or zeros."""
    x_dtype = jnp.result_type(x) if not hasattr(x, "dtype") else x.dtype
    if jnp.issubdtype(x_dtype, jnp.inexact):
        return jnp.zeros(jnp.shape(x), x_dtype)
    return np.zeros(np.shape(x), jax.dtypes.float0)


def cached_loss(
    encode_fn: EncodeFn,
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    *,
    chunk_size: int,
    key: jax.Array | None,
) -> jax.Array:
    """``loss_fn(concat_c encode_fn(params, x_c, fold_in(key, c)))``, differentiated with GradCache.

    The value is that of :func:`grad_cache`; the difference is the interface: this is a function of ``params``
    with a ``jax.custom_vjp``, so ``jax.grad`` / ``jax.value_and_grad`` of any loss built on it (e.g. the loss a
    training step differentiates, with gradient accumulation and data parallelism around it) runs the three GradCache
    stages: the forward pass encodes every chunk without keeping activations and computes ``∂L/∂e`` on the full set of
    embeddings; the backward pass re-encodes chunk by chunk with the same keys and pulls ``∂L/∂e_c`` back to the
    parameters. No collective is added: inside ``shard_map(..., check_vma=False)`` or ``pmap`` the result is the same
    per-device gradient plain differentiation gives, which the step then averages (``lax.pmean``) as usual.

    Args:
      encode_fn: ``encode_fn(params, chunk, key) -> embeddings`` (as in :func:`grad_cache`).
      loss_fn: ``loss_fn(embeddings) -> scalar`` on the full batch of embeddings (leading axis B); it may gather across
        devices and close over non-differentiated values (masks).
      params: parameter pytree.
      batch: pytree of arrays with leading axis B, divisible by ``chunk_size``.
      chunk_size: rows per encoder chunk.
      key: PRNG key (chunk c uses ``fold_in(key, c)``), or None for a deterministic encoder.

    Returns:
      The scalar loss; its gradient with respect to ``params`` equals that of the unchunked computation with the same
      per-chunk keys.

    Example:
      >>> enc = lambda p, x, k: jnp.tanh(x @ p)
      >>> p, x = jnp.ones((3, 2)), jnp.ones((8, 3))
      >>> g = jax.grad(lambda p: cached_loss(enc, lambda e: jnp.sum(e**2), p, x, chunk_size=4, key=None))(p)

    References:
      Gao et al., arXiv:2101.06983 (GradCache).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    chunks, n_chunks = _chunked(batch, int(chunk_size))
    keys = chunk_keys(key, n_chunks)

    @jax.custom_vjp
    def loss(p, chunks, keys):
        return loss_fn(_embed_chunks(encode_fn, p, chunks, keys))

    def loss_fwd(p, chunks, keys):
        value, emb_grad = jax.value_and_grad(loss_fn)(jax.lax.stop_gradient(_embed_chunks(encode_fn, p, chunks, keys)))
        return value, (p, chunks, keys, emb_grad)

    def loss_bwd(residuals, g):
        p, chunks, keys, emb_grad = residuals
        grads = _chunk_vjp_sum(encode_fn, p, chunks, keys, emb_grad, n_chunks)
        grads = jax.tree.map(lambda x: (g * x).astype(x.dtype), grads)
        return grads, jax.tree.map(_zero_cotangent, chunks), jax.tree.map(_zero_cotangent, keys)

    loss.defvjp(loss_fwd, loss_bwd)
    return loss(params, chunks, keys)
