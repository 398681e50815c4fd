"""Packing sequences of different lengths into fixed-length rows, so the encoder computes (almost) no padding.

A padded batch of B sequences costs B × (longest) tokens; a packed one costs about the sum of the real lengths.
Sequences are laid end to end in rows of ``row_length`` tokens (first-fit decreasing); each token carries its
sequence's segment id (block-diagonal attention), its position within its own sequence (positions restart per
sequence) and its token type. A *slot map* says where every token of every sequence landed, so the encoder's output
can be read back per sequence (pooling, token-level scores) exactly as from a padded batch.

Layout (host NumPy, every array with a leading example axis B, so that batches pass unchanged through the training
loop's padding, device sharding and micro-batch split):

- ``tokens``, ``types``, ``positions``, ``segments``: ``[B, C]`` int32. The rows of one *group* (the examples that
  one device sees in one micro-batch, see :func:`group_rows`) hold, concatenated in order, their group's token grid
  of ``R × row_length`` tokens; ``C = ceil(R · row_length / rows per group)`` tokens per example. The device
  rebuilds the grid with ``tokens.reshape(-1)[: R' · row_length].reshape(R', row_length)``,
  ``R' = (rows per group · C) // row_length`` (:mod:`hnjax.models.packed`); ``segments`` is 0 on padding.
- ``slots``: ``[B, K, L]`` (or ``[B, L]`` for one sequence per example) int32, flat index into the group's grid of
  each token of each of an example's K sequences; ``mask``: same shape, bool, true for real tokens. L is the
  per-sequence length of the padded layout (e.g. a tokenizer bucket): ``slots``/``mask`` gather the packed output
  back into the ``[B, K, L, D]`` layout that poolers and scorers take.

Shapes stay static: ``row_length`` is fixed and the grid's row count R comes from :func:`bucket_rows` (every count up
to 32, then steps under 1/16), so a training run compiles a handful of programs, not one per batch. Sequences that
appear several times in a group (a candidate entity of several mentions) are stored once when they have the same
``key``.

References:
    Portes et al. (2023), MosaicBERT: A Bidirectional Encoder Optimized for Fast Pretraining (unpadding).
    Kundu et al. (2024), Enhancing Training Efficiency Using Packing with Flash Attention (Hugging Face
    ``DataCollatorWithFlattening``: position ids restart per packed sequence).
    Krell et al. (2021), Efficient Sequence Packing without Cross-contamination (block-diagonal masks, first-fit
    packing).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np

ARRAYS = ("tokens", "types", "positions", "segments", "slots", "mask")


class Packed(NamedTuple):
    """Packed sequences of a batch (see the module docstring for the layout).

    Attributes:
        tokens, types, positions, segments: [B, C] int32 chunks of each group's token grid.
        slots: [B, K, L] (or [B, L]) int32 flat index of each token in its group's grid.
        mask: same shape as ``slots``, bool, true for real tokens.
        rows: grid rows per group R (a bucket).
        row_length: tokens per grid row.
        real_tokens: tokens of the distinct sequences stored (over all groups).
        grid_tokens: tokens the encoder computes, ``groups × R' × row_length`` (see the module docstring).
        sequences: sequences referenced by the examples (B·K, duplicates and padding rows included).
        stored: distinct sequences stored in the grids.
    """

    tokens: np.ndarray
    types: np.ndarray
    positions: np.ndarray
    segments: np.ndarray
    slots: np.ndarray
    mask: np.ndarray
    rows: int
    row_length: int
    real_tokens: int
    grid_tokens: int
    sequences: int
    stored: int

    def as_batch(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The six arrays as a batch dict with keys ``prefix + name`` (e.g. ``"entity_slots"``)."""
        return {prefix + name: getattr(self, name) for name in ARRAYS}

    @property
    def padding_fraction(self) -> float:
        """Share of computed tokens that are padding, 1 − real / grid."""
        return 1.0 - self.real_tokens / max(self.grid_tokens, 1)


def bucket_rows(needed: int) -> int:
    """Smallest allowed grid row count ≥ ``needed``: every count up to 32, then multiples of 2^(⌈log2 n⌉ − 5).

    Above 32 the allowed counts are less than 1/16 apart, so a batch computes at most ~6% padding rows, and the
    number of distinct counts (compiled programs) up to n rows is at most 32 + 16·log2(n/32).

    Example:
        >>> [bucket_rows(n) for n in (1, 32, 33, 65, 100)]
        [1, 32, 34, 68, 104]
    """
    if not isinstance(needed, (int, np.integer)) or needed < 1:
        raise ValueError(f"needed: expected a positive integer, got {needed!r}")
    needed = int(needed)
    if needed <= 32:
        return needed
    step = 2 ** ((needed - 1).bit_length() - 5)
    return -(-needed // step) * step


def group_rows(rows: int, *, devices: int = 1, grad_accum: int = 1) -> list[np.ndarray]:
    """The example rows of each group, in the order one device's loss sees them in one micro-batch.

    A global batch of ``rows`` examples is split over devices in contiguous blocks (:class:`hnjax.parallel.
    DataParallel`), then each device's block into ``grad_accum`` strided micro-batches (micro-batch a = rows
    a, a + A, a + 2A, … of the block; :func:`hnjax.train.step.split_micro_batches`). Each (device, micro-batch)
    pair packs its own grid.

    Args:
        rows: examples in the global batch, divisible by ``devices · grad_accum``.
        devices: data-parallel devices P.
        grad_accum: micro-batches per update A.

    Returns:
        P·A arrays of ``rows / (P·A)`` row indices.

    Example:
        >>> [g.tolist() for g in group_rows(8, devices=2, grad_accum=2)]
        [[0, 2], [1, 3], [4, 6], [5, 7]]
    """
    for name, value in (("rows", rows), ("devices", devices), ("grad_accum", grad_accum)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if rows % (devices * grad_accum):
        raise ValueError(f"rows: expected a multiple of devices × grad_accum = {devices * grad_accum}, got {rows}")
    per_device = rows // devices
    return [
        np.arange(p * per_device + a, (p + 1) * per_device, grad_accum, dtype=np.int64)
        for p in range(devices)
        for a in range(grad_accum)
    ]


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Bins items of the given lengths into rows of ``capacity``: longest first, each into the first row it fits.

    Args:
        lengths: n item lengths, each in [1, capacity].
        capacity: row length.

    Returns:
        (row [n] int64, offset [n] int64 within the row, number of rows used).

    Example:
        >>> row, offset, n = first_fit_decreasing([3, 5, 2, 4], 8)
        >>> row.tolist(), offset.tolist(), n
        ([0, 0, 1, 1], [5, 0, 4, 0], 2)
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"lengths: expected values in [1, {capacity}], got [{lengths.min()}, {lengths.max()}]")
    row = np.empty(len(lengths), np.int64)
    offset = np.empty(len(lengths), np.int64)
    fill = np.zeros(len(lengths) + 1, np.int64)  # at most one row per item
    used = 0
    for i in np.argsort(-lengths, kind="stable"):
        fits = np.flatnonzero(fill[:used] + lengths[i] <= capacity)
        r = int(fits[0]) if fits.size else used
        used = max(used, r + 1)
        row[i], offset[i] = r, fill[r]
        fill[r] += lengths[i]
    return row, offset, used


def pack(
    sequences: Sequence[Sequence[Sequence[int]]],
    *,
    row_length: int,
    length: int,
    types: Sequence[Sequence[Sequence[int]]] | None = None,
    keys: Sequence[Sequence[Hashable]] | None = None,
    groups: Sequence[np.ndarray] | None = None,
    rows: int | None = None,
    pad_id: int = 0,
    squeeze: bool = False,
) -> Packed:
    """Packs the K sequences of each of B examples into per-group token grids (layout: module docstring).

    Args:
        sequences: ``sequences[b][k]``, token ids of example b's k-th sequence (K the same for every example);
            every sequence has 1 to ``min(length, row_length)`` tokens.
        row_length: tokens per grid row.
        length: L, the per-sequence length of ``slots``/``mask`` (at least the longest sequence).
        types: token types in the same nesting, or None for zeros.
        keys: ``keys[b][k]``, equal keys in one group mark the same sequence, stored once (e.g. entity ids); None
            stores every sequence.
        groups: row indices of each group (:func:`group_rows`), all of the same size; None for one group.
        rows: grid rows per group; None picks :func:`bucket_rows` of what the fullest group needs.
        pad_id: token id of padding.
        squeeze: K must be 1; ``slots``/``mask`` are returned as [B, L].

    Returns:
        :class:`Packed`.

    Raises:
        ValueError: ragged K, empty or too long sequences, sequences and types of different lengths, groups that
            do not cover the rows once, or ``rows`` smaller than needed.

    Example:
        >>> p = pack([[[101, 7, 102]], [[101, 8, 9, 102]]], row_length=8, length=4, squeeze=True)
        >>> p.tokens.tolist(), p.segments.tolist(), p.slots.tolist()
        ([[101, 8, 9, 102], [101, 7, 102, 0]], [[2, 2, 2, 2], [1, 1, 1, 0]], [[4, 5, 6, 0], [0, 1, 2, 3]])
    """
    b = len(sequences)
    if b == 0:
        raise ValueError("sequences: expected at least one example, got none")
    k = len(sequences[0])
    if k == 0:
        raise ValueError("sequences[0]: expected at least one sequence per example, got none")
    if squeeze and k != 1:
        raise ValueError(f"squeeze: needs one sequence per example, got K = {k}")
    for name, value in (("row_length", row_length), ("length", length)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    longest = min(length, row_length)
    flat_ids: list[np.ndarray] = []
    flat_types: list[np.ndarray] = []
    for i, example in enumerate(sequences):
        if len(example) != k:
            raise ValueError(f"sequences[{i}]: expected {k} sequences like sequences[0], got {len(example)}")
        for j, seq in enumerate(example):
            ids = np.asarray(seq, np.int32).reshape(-1)
            if not 1 <= ids.size <= longest:
                raise ValueError(
                    f"sequences[{i}][{j}]: expected 1 to {longest} tokens (length={length}, "
                    f"row_length={row_length}), got {ids.size}"
                )
            flat_ids.append(ids)
            if types is None:
                flat_types.append(np.zeros_like(ids))
            else:
                t = np.asarray(types[i][j], np.int32).reshape(-1)
                if t.shape != ids.shape:
                    raise ValueError(f"types[{i}][{j}]: expected {ids.size} token types, got {t.size}")
                flat_types.append(t)
    if keys is not None:
        if len(keys) != b or any(len(row) != k for row in keys):
            raise ValueError(f"keys: expected {b} rows of {k} keys like sequences")
    if groups is None:
        groups = [np.arange(b)]
    groups = [np.asarray(g, np.int64) for g in groups]
    seen = np.concatenate(groups)
    if len(seen) != b or not np.array_equal(np.sort(seen), np.arange(b)):
        raise ValueError(f"groups: expected every one of the {b} rows exactly once")
    per_group = len(groups[0])
    if any(len(g) != per_group for g in groups):
        raise ValueError(f"groups: expected groups of one size, got sizes {sorted({len(g) for g in groups})}")

    # Per group: the distinct sequences (by key) and where first-fit decreasing puts them.
    plans = []
    for g in groups:
        index: dict = {}
        members = np.empty((per_group, k), np.int64)  # position of each (row, k) among the group's stored sequences
        stored: list[int] = []  # flat sequence number of each stored sequence
        for r, example in enumerate(g):
            for j in range(k):
                flat = int(example) * k + j
                key = (keys[example][j],) if keys is not None else (flat,)
                if key not in index:
                    index[key] = len(stored)
                    stored.append(flat)
                members[r, j] = index[key]
        lengths = [flat_ids[s].size for s in stored]
        row, offset, used = first_fit_decreasing(lengths, row_length)
        plans.append((members, stored, row * row_length + offset, used))
    needed = max(plan[3] for plan in plans)
    if rows is None:
        rows = bucket_rows(needed)
    elif rows < needed:
        raise ValueError(f"rows: a group needs {needed} rows of {row_length} tokens, got rows={rows}")
    chunk = math.ceil(rows * row_length / per_group)
    device_rows = per_group * chunk // row_length  # what the device reshapes to (≥ rows)

    out = {name: np.zeros((b, chunk), np.int32) for name in ("tokens", "types", "positions", "segments")}
    out["tokens"][:] = pad_id
    slots = np.zeros((b, k, length), np.int32)
    mask = np.zeros((b, k, length), bool)
    real = 0
    for g, (members, stored, start, _) in zip(groups, plans, strict=True):
        grid = {name: np.zeros(per_group * chunk, np.int32) for name in out}
        grid["tokens"][:] = pad_id
        # Segment ids count the sequences of a group from 1; equal ids never meet in different sequences of a row.
        for s, (flat, where) in enumerate(zip(stored, start, strict=True)):
            n = flat_ids[flat].size
            grid["tokens"][where : where + n] = flat_ids[flat]
            grid["types"][where : where + n] = flat_types[flat]
            grid["positions"][where : where + n] = np.arange(n)
            grid["segments"][where : where + n] = s + 1
            real += n
        for name in out:
            out[name][g] = grid[name].reshape(per_group, chunk)
        for r, example in enumerate(g):
            for j in range(k):
                s = members[r, j]
                n = flat_ids[stored[s]].size
                slots[example, j, :n] = start[s] + np.arange(n)
                mask[example, j, :n] = True
    if squeeze:
        slots, mask = slots[:, 0], mask[:, 0]
    return Packed(
        **out,
        slots=slots,
        mask=mask,
        rows=rows,
        row_length=row_length,
        real_tokens=real,
        grid_tokens=len(groups) * device_rows * row_length,
        sequences=b * k,
        stored=sum(len(plan[1]) for plan in plans),
    )


def pad_examples(examples: Sequence, rows: int) -> tuple[list, np.ndarray]:
    """Fills a batch up to ``rows`` examples by repeating the first, with a ``valid`` mask that marks the copies.

    Packing then stores a repeated example once per group when it is given a key (e.g. its index), so filler rows
    cost no tokens where their group already holds the original.

    Returns:
        (list of ``rows`` examples, valid [rows] bool).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    if rows < len(examples):
        raise ValueError(f"rows: expected at least the {len(examples)} examples given, got {rows}")
    valid = np.zeros(rows, bool)
    valid[: len(examples)] = True
    return examples + [examples[0]] * (rows - len(examples)), valid


def counts(segments: np.ndarray, *, row_length: int, groups: Sequence[np.ndarray] | None = None) -> dict[str, int]:
    """What a packed stream costs, read from its ``segments`` chunks [B, C].

    Args:
        segments: the stream's ``segments`` array.
        row_length: tokens per grid row.
        groups: the row groups it was packed with (:func:`group_rows`); None for one group.

    Returns:
        ``{"real_tokens", "grid_tokens", "stored"}``: tokens of the stored sequences, tokens the encoder computes
        (R' × row_length per group) and distinct sequences stored, summed over the groups.
    """
    segments = np.asarray(segments)
    if segments.ndim != 2:
        raise ValueError(f"segments: expected shape [B, C], got {segments.shape}")
    out = {"real_tokens": 0, "grid_tokens": 0, "stored": 0}
    for g in [np.arange(segments.shape[0])] if groups is None else groups:
        flat = segments[np.asarray(g)].reshape(-1)
        rows = flat.size // row_length
        used = flat[: rows * row_length]
        out["real_tokens"] += int(np.count_nonzero(used))
        out["grid_tokens"] += rows * row_length
        out["stored"] += len(np.unique(used[used > 0]))
    return out


def unpad(ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None) -> tuple[list, list | None]:
    """The real tokens of each row of a padded batch (masks must be prefixes: real tokens first, then padding).

    Returns:
        (token id arrays, token type arrays or None), one per row.
    """
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    if ids.shape != mask.shape or ids.ndim != 2:
        raise ValueError(f"ids, mask: expected two [N, L] arrays of one shape, got {ids.shape} and {mask.shape}")
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(ids.shape[1])[None, :] < lengths[:, None]):
        bad = int(np.flatnonzero((mask != (np.arange(ids.shape[1])[None, :] < lengths[:, None])).any(axis=1))[0])
        raise ValueError(f"mask: row {bad} has padding before real tokens; expected real tokens first")
    seqs = [ids[i, :n] for i, n in enumerate(lengths)]
    return seqs, None if types is None else [np.asarray(types)[i, :n] for i, n in enumerate(lengths)]


def fixed_groups(lengths: Sequence[int], *, row_length: int, rows: int, max_sequences: int) -> list[np.ndarray]:
    """Splits sequences, in their order, into consecutive groups that each fit ``rows`` rows of ``row_length`` tokens
    (first fit) and hold at most ``max_sequences``: every group then packs into one static shape.

    Returns:
        Arrays of sequence indices, in order.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and (lengths.min() < 1 or lengths.max() > row_length):
        raise ValueError(f"lengths: expected values in [1, {row_length}], got [{lengths.min()}, {lengths.max()}]")
    groups, start = [], 0
    fill = np.zeros(rows, np.int64)
    for i, n in enumerate(lengths):
        fits = np.flatnonzero(fill + n <= row_length)
        if not fits.size or i - start == max_sequences:
            groups.append(np.arange(start, i))
            start, fill[:] = i, 0
            fits = np.array([0])
        fill[fits[0]] += n
    if start < len(lengths):
        groups.append(np.arange(start, len(lengths)))
    out: list[np.ndarray] = []
    while groups:  # :func:`pack` places by first-fit decreasing, which on rare inputs needs a row more: split those
        g = groups.pop(0)
        if len(g) > 1 and first_fit_decreasing(lengths[g], row_length)[2] > rows:
            groups[:0] = [g[: len(g) // 2], g[len(g) // 2 :]]
        else:
            out.append(g)
    return out
