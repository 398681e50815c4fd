"""Encoding packed rows and reading the sequences back out (device side of :mod:`hnjax.data.packing`).

A packed stream is six arrays with a leading example axis (``tokens``, ``types``, ``positions``, ``segments``:
[B, C] chunks of the token grid; ``slots``, ``mask``: [B, (K,) L]). :func:`encode` rebuilds the grid of
``row_length``-token rows, runs the encoder with block-diagonal attention (:class:`hnjax.models.bert.BertModel` with
``segment_ids``/``position_ids``) and returns the grid's token states flattened, [T, D]; :func:`gather` and
:func:`first` read them back in the padded layout, so that poolers, scorers and losses see exactly what a padded
batch gives them: the hidden state of every real token equals the padded path's (same parameters, no dropout), and
padding positions are zero.

>>> from hnjax.models import packed
>>> flat = packed.encode(model, params, stream, row_length=128)  # [T, D]  # doctest: +SKIP
>>> hidden, mask = packed.gather(flat, stream["slots"], stream["mask"]), stream["mask"]  # [B, L, D]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hnjax.models import bert

CHUNKS = ("tokens", "types", "positions", "segments")
KEYS = CHUNKS + ("slots", "mask")


def is_packed(batch: dict, prefix: str = "") -> bool:
    """Whether ``batch`` holds a packed stream under ``prefix`` (its ``slots`` array is there)."""
    return prefix + "slots" in batch


def stream(batch: dict, prefix: str = "") -> dict[str, jax.Array]:
    """The six arrays of the packed stream ``prefix`` of a batch, keyed without the prefix.

    Raises:
        ValueError: an array is missing.
    """
    missing = [prefix + k for k in KEYS if prefix + k not in batch]
    if missing:
        raise ValueError(f"batch: packed stream {prefix!r} lacks {missing}")
    return {k: batch[prefix + k] for k in KEYS}


def grid(chunks: jax.Array, row_length: int) -> jax.Array:
    """The token grid [R, row_length] of a group from its examples' chunks [B, C]: R = (B·C) // row_length."""
    if chunks.ndim != 2:
        raise ValueError(f"chunks: expected shape [B, C], got {chunks.shape}")
    rows = chunks.size // row_length
    if rows == 0:
        raise ValueError(f"chunks: {chunks.shape} hold fewer than one row of row_length={row_length} tokens")
    return chunks.reshape(-1)[: rows * row_length].reshape(rows, row_length)


def encode(
    model: bert.BertModel,
    params: Any,
    packed: dict[str, jax.Array],
    *,
    row_length: int,
    deterministic: bool = True,
    rngs: dict | None = None,
) -> jax.Array:
    """Last hidden states of every grid token, flattened.

    Args:
        model: the encoder.
        params: its parameters (the ``params`` collection).
        packed: a packed stream (:func:`stream`); only the four chunk arrays are read.
        row_length: tokens per grid row, the value the stream was packed with.
        deterministic: disable dropout (else ``rngs={"dropout": key}``).
        rngs: flax rngs for dropout.

    Returns:
        [R·row_length, D] float32, indexed by ``slots``.
    """
    ids = grid(packed["tokens"], row_length)  # [R, Lr]
    segments = grid(packed["segments"], row_length)
    hidden = model.apply(
        {"params": params},
        ids,
        segments > 0,
        grid(packed["types"], row_length),
        deterministic=deterministic,
        segment_ids=segments,
        position_ids=grid(packed["positions"], row_length),
        rngs=rngs,
    )  # [R, Lr, D]
    return hidden.reshape(-1, hidden.shape[-1])


def gather(flat: jax.Array, slots: jax.Array, mask: jax.Array) -> jax.Array:
    """Token states in the padded layout: ``out[..., l, :] = flat[slots[..., l]]`` where ``mask``, else 0.

    Args:
        flat: [T, D] grid token states (:func:`encode`).
        slots: [..., L] int flat indices.
        mask: [..., L] bool.

    Returns:
        [..., L, D], zero at padding positions.
    """
    if slots.shape != mask.shape:
        raise ValueError(f"mask: expected shape {slots.shape} like slots, got {mask.shape}")
    return jnp.where(mask[..., None], flat[slots], 0.0).astype(flat.dtype)


def first(flat: jax.Array, slots: jax.Array) -> jax.Array:
    """The first token's state ([CLS] / <s>) of each sequence: [..., L] slots → [..., D]."""
    return flat[slots[..., 0]]
