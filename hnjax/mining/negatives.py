"""Choosing the negatives of each query from its shortlist and the corpus: gold sets, picks, uniform fill-in.

Every step is vectorised over queries (no per-query Python loop), and every random draw of query ``i`` comes from the
key ``fold_in(key, i)``, where ``i`` is the query's global index: a query's negatives do not depend on which other
queries are mined with it, so mining a share of the queries per process gives the same table as mining all of them
in one process.

Uniform draws without replacement from ``range(N)`` minus an excluded set ``E`` (the golds, and the hard negatives
already picked) use Floyd's algorithm on ``range(M)``, ``M = N − |E|``, one vectorised pass per drawn position, then
map each ``x`` to the ``x``-th allowed id, ``x + #{j : e_j − j <= x}`` for the sorted excluded ids ``e_0 < e_1 < ...``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import samplers
from hnjax.data import batching
from hnjax.mining import recipe as recipe_lib

CHUNK = 1024  # queries per jitted call (padded: one compiled shape)


@dataclasses.dataclass(frozen=True)
class GoldSets:
    """Each query's gold document ids, padded: ``ids`` int64 ``[Q, G]`` with ``-1`` after the ``sizes[i]`` golds.

    Example:
      >>> GoldSets.from_lists([3, {1, 5}]).ids.tolist()
      [[3, -1], [1, 5]]
    """

    ids: np.ndarray
    sizes: np.ndarray

    @classmethod
    def from_lists(cls, gold: Sequence) -> GoldSets:
        """From one gold id, or a collection of them, per query (duplicates dropped)."""
        rows = [np.unique(np.asarray(sorted(g) if isinstance(g, set | frozenset) else g, np.int64).reshape(-1))
                for g in gold]  # fmt: skip
        sizes = np.array([len(r) for r in rows], np.int64)
        ids = np.full((len(rows), max(int(sizes.max(initial=0)), 1)), -1, np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        return cls(ids, sizes)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def check(self, n_docs: int, num_negatives: int) -> None:
        """``ValueError`` naming the query when a gold id is outside ``[0, N)`` or too few non-gold documents remain."""
        if self.ids.size and self.ids.max() >= n_docs:
            row = int(np.argmax(self.ids.max(axis=1)))
            raise ValueError(f"gold: query {row} has gold id {int(self.ids[row].max())} >= N = {n_docs}")
        if ((self.ids < 0) & (np.arange(self.ids.shape[1])[None, :] < self.sizes[:, None])).any():
            raise ValueError("gold: expected non-negative document ids")
        if n_docs < num_negatives + 1:
            raise ValueError(
                f"corpus: expected at least num_negatives + 1 = {num_negatives + 1} documents, got {n_docs}"
            )
        if len(self) and (n_docs - self.sizes).min() < num_negatives:
            row = int(np.argmax(self.sizes))
            raise ValueError(
                f"num_negatives: {num_negatives} exceeds the {n_docs - self.sizes[row]} non-gold documents of "
                f"query {row} (N = {n_docs})"
            )


def uniform_excluding(rng: np.random.Generator, n_docs: int, excluded: np.ndarray, k: int) -> np.ndarray:
    """k distinct ids drawn uniformly from ``range(n_docs)`` minus ``excluded`` (host NumPy, O(k + |excluded|)).

    Draws x_1..x_k without replacement from range(M), M = n_docs − |excluded|, then maps each x to the x-th allowed
    id: id = x + #{j : e_j − j <= x} for the sorted distinct excluded ids e_0 < e_1 < ...

    Raises:
      ValueError: fewer than k allowed ids.
    """
    excl = np.unique(np.asarray(excluded, np.int64))
    excl = excl[(excl >= 0) & (excl < n_docs)]
    m = n_docs - len(excl)
    if m < k:
        raise ValueError(f"cannot draw {k} distinct negatives: only {m} of {n_docs} documents are allowed")
    x = rng.choice(m, size=k, replace=False)
    return x + np.searchsorted(excl - np.arange(len(excl)), x, side="right")


# ------------------------------------------------------------------------------------------------------------------
# Picks from the shortlist (hard / model-distribution negatives)
# ------------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_chunk(scores, exclude, *, k):
    ids = samplers.top_k_negatives(scores, exclude, k)
    return ids, jnp.zeros(ids.shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("k", "temperature", "smoothing"))
def _model_chunk(key, query_ids, scores, exclude, *, k, temperature, smoothing):
    def one(q, s, e):  # one query, its own key
        ids, log_q = samplers.model_negatives(jax.random.fold_in(key, q), s[None], e[None], k,
                                              temperature=temperature, smoothing=smoothing)  # fmt: skip
        return ids[0], log_q[0]

    return jax.vmap(one)(query_ids, scores, exclude)


def _chunks(n: int):
    """``(slice, take)`` per chunk of at most CHUNK rows: ``take`` indexes the chunk's rows padded to CHUNK rows with
    its first row (one compiled shape; no padding when n <= CHUNK)."""
    for take, n_real in batching.padded_batches(n, min(CHUNK, max(n, 1))):
        yield slice(int(take[0]), int(take[0]) + n_real), take


def pick_from_shortlist(
    scores: np.ndarray,
    ids: np.ndarray,
    exclude: np.ndarray,
    *,
    recipe: recipe_lib.Recipe,
    num_negatives: int,
    key: jax.Array,
    query_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The shortlist part of each query's negatives.

    Args:
      scores: float32 ``[q, S]`` shortlist scores (best first; ``-inf`` for missing slots).
      ids: int ``[q, S]`` shortlisted document ids (``-1`` for missing slots).
      exclude: bool ``[q, S]``, True where a shortlisted document may not be a negative (gold, guard, missing).
      recipe: the recipe (``recipe.num_hard(K−1)`` picks per query).
      num_negatives: K−1.
      key: key of the model-distribution draws (query ``i`` uses ``fold_in(key, query_ids[i])``).
      query_ids: int ``[q]`` global query indices.

    Returns:
      ``(table, log_q)``: int64 ``[q, K−1]`` with the picks in the first ``num_hard`` columns and ``-1`` wherever a
      negative is still missing (the uniform share, and picks the shortlist could not provide), and float32
      ``[q, K−1]`` log q for ``"model"`` (``None`` otherwise).
    """
    n_q, k = ids.shape[0], num_negatives
    n_hard = recipe.num_hard(k)
    table = np.full((n_q, k), -1, np.int64)
    log_q = np.zeros((n_q, k), np.float32) if recipe.kind == "model" else None
    if n_hard == 0:
        return table, log_q
    for sl, take in _chunks(n_q):
        sc = np.where(np.isfinite(scores[take]), scores[take], 0.0)
        ex = exclude[take]
        if recipe.kind == "model":
            qs = np.asarray(query_ids, np.int64)[take]
            pos, lq = _model_chunk(key, qs, sc, ex, k=k, temperature=recipe.temperature, smoothing=recipe.smoothing)
        else:
            pos, lq = _top_k_chunk(sc, ex, k=n_hard)
        rows = sl.stop - sl.start
        pos, lq = np.asarray(pos)[:rows], np.asarray(lq)[:rows]
        ok = ~np.take_along_axis(exclude[sl], pos, axis=1)  # a row with < n_hard allowed picks excluded ones
        table[sl, :n_hard] = np.where(ok, np.take_along_axis(ids[sl], pos, axis=1), -1)
        if log_q is not None:
            log_q[sl] = lq
    return table, log_q


# ------------------------------------------------------------------------------------------------------------------
# Uniform fill-in
# ------------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("width",))
def _random_bits(key, query_ids, *, width):
    """``[q, width, 2]`` uint32 random words per query, from ``fold_in(key, query id)``."""
    return jax.vmap(lambda q: jax.random.bits(jax.random.fold_in(key, q), (width, 2), jnp.uint32))(query_ids)


def _random_uint64(key: jax.Array, query_ids: np.ndarray, width: int) -> np.ndarray:
    """``[q, width]`` uint64 random words per query (two 32-bit draws each, so modulo bias is below 2^-32)."""
    out = np.empty((len(query_ids), width), np.uint64)
    for sl, take in _chunks(len(query_ids)):
        qs = np.asarray(query_ids, np.int64)[take]
        words = np.asarray(_random_bits(key, qs, width=width))[: sl.stop - sl.start].astype(np.uint64)
        out[sl] = (words[..., 0] << np.uint64(32)) | words[..., 1]
    return out


def fill_uniform(
    table: np.ndarray,
    gold: GoldSets,
    n_docs: int,
    *,
    key: jax.Array,
    query_ids: np.ndarray,
    log_q: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Fill every ``-1`` slot with a uniform draw from the corpus minus the query's golds and chosen negatives.

    Draws are without replacement and uniform over the allowed ids (Floyd's algorithm, module docstring); their order
    within a row is a random permutation. ``log_q`` of a filled slot, if given, is ``−log(N − |gold|)``.

    Args:
      table: int64 ``[q, K−1]``, ``-1`` where a negative is missing (modified in place and returned).
      gold: the gold sets of these ``q`` queries.
      n_docs: N.
      key: the draws of query ``i`` come from ``fold_in(key, query_ids[i])``.
      query_ids: int ``[q]`` global query indices.
      log_q: optional float32 ``[q, K−1]`` (modified in place).

    Returns:
      ``(table, filled)``: the table and the number of slots filled.

    Raises:
      ValueError: a query has fewer allowed documents than missing slots.
    """
    missing = table < 0  # [q, K-1]
    need = missing.sum(axis=1)  # [q]
    width = int(need.max(initial=0))
    if width == 0:
        return table, 0
    excluded = np.concatenate([gold.ids, np.where(missing, -1, table)], axis=1)  # [q, G + K-1], -1 = none
    big = np.int64(2 * n_docs + excluded.shape[1] + 1)  # beyond every x + rank: never counted
    excluded = np.sort(np.where(excluded < 0, big, excluded), axis=1)
    duplicate = np.concatenate([np.zeros((len(table), 1), bool), excluded[:, 1:] == excluded[:, :-1]], axis=1)
    excluded = np.sort(np.where(duplicate, big, excluded), axis=1)  # distinct, ascending, padding last
    n_excluded = (excluded < big).sum(axis=1)
    allowed = n_docs - n_excluded  # M per query
    if (allowed < need).any():
        row = int(np.argmax(need - allowed))
        raise ValueError(f"cannot draw {need[row]} distinct negatives for query {query_ids[row]}: only "
                         f"{allowed[row]} of {n_docs} documents are allowed")  # fmt: skip
    words = _random_uint64(key, query_ids, 2 * width)  # [q, 2W]: Floyd draws, then the order
    # Floyd: for r < need, j = M − need + r; t uniform in [0, j]; take t unless already taken, else j.
    drawn = np.full((len(table), width), -1, np.int64)  # [q, W], values in [0, M)
    for r in range(width):
        active = r < need
        j = np.maximum(allowed - need + r, 0)
        t = (words[:, r] % (j + 1).astype(np.uint64)).astype(np.int64)
        taken = (drawn[:, :r] == t[:, None]).any(axis=1)
        drawn[:, r] = np.where(active, np.where(taken, j, t), -1)
    # Random order of the drawn ids within each row (inactive slots last).
    order = np.argsort(np.where(np.arange(width)[None, :] < need[:, None], words[:, width:], np.uint64(2**64 - 1)),
                       axis=1, kind="stable")  # fmt: skip
    drawn = np.take_along_axis(drawn, order, axis=1)
    # x -> x-th allowed id: x + #{j : e_j − j <= x}.
    shifted = excluded - np.arange(excluded.shape[1])[None, :]  # [q, E]; padding stays above every x
    fill = np.empty_like(drawn)
    for sl, _ in _chunks(len(table)):  # [CHUNK, W, E] comparisons at a time
        fill[sl] = drawn[sl] + (shifted[sl, None, :] <= drawn[sl, :, None]).sum(axis=2)
    slot = np.cumsum(missing, axis=1) - 1  # [q, K-1]: index of each missing slot among the row's missing ones
    table[missing] = np.take_along_axis(fill, np.where(missing, slot, 0), axis=1)[missing]
    if log_q is not None:
        uniform = -np.log(n_docs - gold.sizes).astype(np.float32)  # [q]
        log_q[missing] = np.broadcast_to(uniform[:, None], table.shape)[missing]
    return table, int(need.sum())
