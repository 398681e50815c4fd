"""The ``Miner``: encode the corpus with the current parameters, index it, and keep a table of negatives per query.

One refresh (``Miner.refresh``):

1. encodes the corpus (and the queries) in batches with ``encode_fn(params, batch)``, moving each batch's vectors to
   the host as soon as it is done (device memory bounded by one batch; tqdm progress bar);
2. builds the index (``hnjax.mining.index`` / ``multivector``) and retrieves a per-query shortlist of the top S
   documents (S = ``shortlist``, default 4·(K−1) plus the largest gold set);
3. masks every gold id of the query (and, with the false-negative guard, every shortlisted document scoring above the
   weakest gold minus a margin) and picks K−1 negatives per query with a ``Recipe``:

   - ``"hard"``: the top K−1 allowed documents of the shortlist (deterministic; ``hnjax.samplers.top_k_negatives``);
   - ``"random"``: K−1 uniform draws without replacement from the whole corpus minus the golds (host NumPy: a
     ``[Q, N]`` exclusion mask would not fit for large corpora; this recipe needs no encoding at all);
   - ``"mixed"``: round(p·(K−1)) hard ones from the shortlist, the rest uniform from the corpus minus the golds and
     the hard ones (Zhang & Stratos 2021: p = 0.5, re-drawn every refresh);
   - ``"model"``: K−1 draws without replacement from q(y) ∝ exp(s(y)/T) over the allowed shortlist (Gumbel top-k;
     ``hnjax.samplers.model_negatives``), returning log q for the log-q corrected loss. q is the model distribution
     truncated to the shortlist (exact when S = N).

   If guard exclusions leave fewer than the hard count in the shortlist, the missing negatives are drawn uniformly
   from the corpus (logged as a warning; log q of such a fill-in is the uniform log(1/M)).

Randomness of a refresh at step t comes only from ``(seed, t)`` (NumPy ``SeedSequence([seed, t])`` and
``jax.random.fold_in(key(seed), t)``), so an asynchronous refresh produces the same table as a synchronous one from
the same parameters, and a resumed run re-mines identically.

Refresh schedule (``maybe_refresh``): every ``refresh_every`` steps, or at every new epoch. With
``asynchronous=True`` the refresh runs in a background thread on a copy of the parameters while training continues;
the new table is swapped in atomically when it is complete (the first refresh is always synchronous: there is no
table to train on before it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hnjax import samplers
from hnjax.data import batching
from hnjax.mining import backends, multivector
from hnjax.mining import index as index_lib

logger = logging.getLogger(__name__)

RECIPES = ("hard", "random", "mixed", "model")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the K−1 negatives of a query are chosen.

    Attributes:
      kind: ``"hard"``, ``"random"``, ``"mixed"`` or ``"model"`` (see the module docstring).
      hard_share: p, share of hard negatives for ``"mixed"`` (hard count = ``samplers.mixed_hard_count(K−1, p)``).
      temperature: T of the model distribution for ``"model"``.
      smoothing: uniform mixing weight of the model distribution for ``"model"`` (see ``samplers.model_negatives``).
      false_negative_margin: None (off) or m: shortlisted documents with score > min_gold_score − m are never used
        as negatives (likely unlabeled positives; ``absolute_margin`` of sentence-transformers'
        ``mine_hard_negatives``). m may be negative to allow candidates slightly above the gold.
    """

    kind: str = "mixed"
    hard_share: float = 0.5
    temperature: float = 1.0
    smoothing: float = 0.0
    false_negative_margin: float | None = None

    def __post_init__(self):
        if self.kind not in RECIPES:
            raise ValueError(f"recipe.kind: expected one of {RECIPES}, got {self.kind!r}")
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"recipe.hard_share: expected a value in [0, 1], got {self.hard_share}")
        if not self.temperature > 0:
            raise ValueError(f"recipe.temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"recipe.smoothing: expected a value in [0, 1], got {self.smoothing}")

    def num_hard(self, num_negatives: int) -> int:
        """Negatives taken from the shortlist (the rest are uniform over the corpus)."""
        if self.kind in ("hard", "model"):
            return num_negatives
        if self.kind == "random":
            return 0
        return samplers.mixed_hard_count(num_negatives, self.hard_share)


# ------------------------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------------------------


def _leading(data) -> int | None:
    """N for an array or a dict of arrays with a common leading dimension; None for a sequence of batches."""
    if isinstance(data, dict):
        sizes = {int(np.shape(v)[0]) for v in data.values()}
        if len(sizes) != 1:
            raise ValueError(f"data: dict values must share the leading dimension N, got sizes {sorted(sizes)}")
        return sizes.pop()
    if hasattr(data, "shape"):
        return int(data.shape[0])
    return None


def _batches(data, batch_size: int):
    """Yields (batch, n_real): fixed-size slices (the last padded by repeating its first row) or given batches."""
    n = _leading(data)
    if n is None:
        for batch in data:
            yield batch, None
        return
    for take, n_real in batching.padded_batches(n, batch_size):  # the last batch padded: one compiled shape
        if isinstance(data, dict):
            yield {k: np.asarray(v)[take] for k, v in data.items()}, n_real
        else:
            yield np.asarray(data)[take], n_real


def encode(encode_fn: Callable, params, data, *, batch_size: int = 256, desc: str = "encode", progress: bool = True):
    """Encodes ``data`` batch by batch and gathers the vectors on the host.

    Args:
      encode_fn: ``encode_fn(params, batch) -> vectors [b, D]`` or ``(vectors [b, n, D], mask [b, n])``.
      params: the parameters passed to ``encode_fn``.
      data: a sequence of ready batches, or an array / dict of arrays with leading dimension N that is cut into
        ``batch_size`` slices (the last slice is padded to full size so a jitted ``encode_fn`` compiles once).
      batch_size: slice size for array data.
      desc: progress-bar label.
      progress: show a tqdm progress bar.

    Returns:
      float ``[N, D]`` NumPy array, or ``(tokens [N, n, D], mask [N, n])`` for multi-vector encoders.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = _leading(data)
    total = None if n is None else -(-n // batch_size)
    vecs, masks = [], []
    for batch, n_real in tqdm.tqdm(_batches(data, batch_size), total=total, desc=desc, disable=not progress):
        out = encode_fn(params, batch)
        if isinstance(out, (tuple, list)):
            v, m = (np.asarray(jax.device_get(x)) for x in out)
            masks.append(m[:n_real])
        else:
            v = np.asarray(jax.device_get(out))
        vecs.append(v[:n_real])
    if not vecs:
        raise ValueError(f"{desc}: no data to encode (empty corpus or query set)")
    if masks:
        return np.concatenate(vecs), np.concatenate(masks).astype(bool)
    return np.concatenate(vecs)


# ------------------------------------------------------------------------------------------------------------------
# Sampling helpers
# ------------------------------------------------------------------------------------------------------------------

_CHUNK = 1024  # queries per jitted sampler call (padded: one compiled shape)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_chunk(scores, exclude, *, k):
    ids = samplers.top_k_negatives(scores, exclude, k)
    return ids, jnp.zeros(ids.shape, jnp.float32)


@functools.partial(jax.jit, static_argnames=("k", "temperature", "smoothing"))
def _model_chunk(key, scores, exclude, *, k, temperature, smoothing):
    return samplers.model_negatives(key, scores, exclude, k, temperature=temperature, smoothing=smoothing)


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


def _gold_ids(g) -> np.ndarray:
    """One query's gold ids (an int, or a set / list / array of ints) as sorted unique int64 [G]."""
    if isinstance(g, (set, frozenset)):
        g = sorted(g)
    return np.unique(np.asarray(g, np.int64).reshape(-1))


@dataclasses.dataclass(frozen=True)
class _Mined:
    table: np.ndarray  # int32 [Q, K-1]
    log_q: np.ndarray | None  # float32 [Q, K-1]
    step: int
    epoch: int


# ------------------------------------------------------------------------------------------------------------------
# Miner
# ------------------------------------------------------------------------------------------------------------------


class Miner:
    """Keeps a table ``[n_queries, K−1]`` of negative document ids per training query, refreshed on a schedule.

    Args:
      encode_fn: ``encode_fn(params, batch) -> vectors [b, D]`` or ``(tokens [b, n, D], mask [b, n])``.
      corpus: documents, as a sequence of batches or an array / dict of arrays with leading dimension N (see
        ``encode``). Document ids are positions 0..N−1.
      queries: training queries, same forms as ``corpus``.
      gold: per query, its gold document id or a collection of them (all are excluded from the negatives).
      index: a backend name for ``make_index`` (``"auto"``: see ``default_backend``) or an unbuilt ``Index``
        (a ``MultiVectorIndex`` for multi-vector encoders; ``"auto"`` wraps the default backend in one).
      recipe: a ``Recipe`` or its kind as a string.
      num_negatives: K−1, negatives per query.
      refresh_every: refresh every this many steps (takes precedence over ``refresh_every_epoch``).
      refresh_every_epoch: refresh at every new epoch passed to ``maybe_refresh``.
      seed: seed of every refresh's randomness (combined with the step).
      asynchronous: let ``maybe_refresh`` mine in a background thread.
      metric: ``"ip"`` or ``"cosine"`` when ``index`` is a name.
      shortlist: S, documents retrieved per query for hard / model negatives (default 4·(K−1) + max |gold|).
      batch_size: encoding batch size for array data.
      query_encode_fn: encoder for the queries if it differs from ``encode_fn`` (two-tower models).
      progress: tqdm progress bars while encoding.

    Example:
      >>> miner = Miner(encode, corpus_tokens, query_tokens, gold, index="flat", recipe="mixed",
      ...               num_negatives=63, seed=0)  # doctest: +SKIP
      >>> miner.maybe_refresh(params, step=0, epoch=0)  # doctest: +SKIP
      >>> neg_ids, log_q = miner.candidates(np.array([0, 1, 2]))  # doctest: +SKIP

    References:
      Zhang & Stratos (2021), "Understanding Hard Negatives in Noise Contrastive Estimation" (mixed recipe, model-
      distribution negatives with log q; hard-nce-el ``data_retriever.py``, ``get_hard_negative``); Xiong et al.
      (2021), ANCE (asynchronous index refresh).
    """

    def __init__(
        self,
        encode_fn: Callable,
        corpus,
        queries,
        gold: Sequence,
        *,
        index: str | index_lib.Index = "auto",
        recipe: Recipe | str = "mixed",
        num_negatives: int,
        refresh_every: int | None = None,
        refresh_every_epoch: bool = True,
        seed: int = 0,
        asynchronous: bool = False,
        metric: str = "ip",
        shortlist: int | None = None,
        batch_size: int = 256,
        query_encode_fn: Callable | None = None,
        progress: bool = True,
    ):
        self.recipe = Recipe(kind=recipe) if isinstance(recipe, str) else recipe
        if not isinstance(self.recipe, Recipe):
            raise ValueError(f"recipe: expected a Recipe or one of {RECIPES}, got {type(recipe).__name__}")
        if not isinstance(num_negatives, (int, np.integer)) or num_negatives < 1:
            raise ValueError(f"num_negatives: expected a positive int, got {num_negatives!r}")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every: expected None or >= 1 steps, got {refresh_every}")
        index_lib.check_metric(metric)
        self.encode_fn, self.query_encode_fn = encode_fn, query_encode_fn or encode_fn
        self.corpus, self.queries = corpus, queries
        self.num_negatives = int(num_negatives)
        self.refresh_every, self.refresh_every_epoch = refresh_every, bool(refresh_every_epoch)
        self.seed, self.asynchronous, self.metric = int(seed), bool(asynchronous), metric
        self.batch_size, self.progress = int(batch_size), bool(progress)

        self.n_docs = _leading(corpus)
        self.n_queries = len(gold)
        self._gold = [_gold_ids(g) for g in gold]
        n_q = _leading(queries)
        if n_q is not None and n_q != self.n_queries:
            raise ValueError(f"gold: expected one gold set per query ({n_q} queries), got {self.n_queries}")
        max_gold = max((len(g) for g in self._gold), default=0)
        self._gold_pad = np.full((self.n_queries, max(max_gold, 1)), -1, np.int64)  # [Q, G], -1 = none
        for i, g in enumerate(self._gold):
            self._gold_pad[i, : len(g)] = g
        self._shortlist_arg = shortlist
        self._index_arg = index
        if self.n_docs is not None:
            self._check_sizes(self.n_docs)

        self._current: _Mined | None = None
        self._started_step: int | None = None
        self._started_epoch: int | None = None
        self.num_refreshes = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    # -- validation ------------------------------------------------------------------------------------------
    def _check_sizes(self, n_docs: int) -> None:
        if self._gold_pad.size and self._gold_pad.max() >= n_docs:
            row = int(np.argmax(self._gold_pad.max(axis=1)))
            raise ValueError(f"gold: query {row} has gold id {int(self._gold_pad[row].max())} >= N = {n_docs}")
        if self._gold_pad.size and any(len(g) and g.min() < 0 for g in self._gold):
            raise ValueError("gold: expected non-negative document ids")
        if n_docs < self.num_negatives + 1:
            raise ValueError(
                f"corpus: expected at least num_negatives + 1 = {self.num_negatives + 1} documents, got {n_docs}"
            )
        sizes = np.array([len(g) for g in self._gold])
        if self.n_queries and (n_docs - sizes).min() < self.num_negatives:
            row = int(np.argmax(sizes))
            raise ValueError(
                f"num_negatives: {self.num_negatives} exceeds the {n_docs - sizes[row]} non-gold documents of "
                f"query {row} (N = {n_docs})"
            )

    def _shortlist(self, n_docs: int) -> int:
        """S: shortlist per query, (``shortlist`` or 4·(K−1)) + max |gold|, at most N."""
        s = self._shortlist_arg or 4 * self.num_negatives
        if s < self.recipe.num_hard(self.num_negatives):
            raise ValueError(
                f"shortlist: expected >= {self.recipe.num_hard(self.num_negatives)} (the hard count), got {s}"
            )
        return min(s + self._gold_pad.shape[1], n_docs)

    def _make_index(self, n_docs: int, multi: bool) -> index_lib.Index:
        idx = self._index_arg
        if isinstance(idx, index_lib.Index):
            if multi != isinstance(idx, multivector.MultiVectorIndex):
                raise ValueError(
                    f"index: the encoder returns {'multi' if multi else 'single'}-vector output; expected "
                    f"{'a MultiVectorIndex' if multi else 'a single-vector Index'}, got {type(idx).__name__}"
                )
            return idx
        name = backends.default_backend(n_docs) if idx == "auto" else idx
        base = backends.make_index(name, metric=self.metric)
        if multi:
            return multivector.MultiVectorIndex(base, shortlist=min(4 * self._shortlist(n_docs), n_docs))
        return base

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def table(self) -> np.ndarray:
        """The current negatives, int32 ``[n_queries, K−1]`` (raises before the first refresh)."""
        return self._mined().table

    @property
    def last_refresh_step(self) -> int | None:
        """Step of the refresh that produced the current table (None before the first)."""
        return None if self._current is None else self._current.step

    def refresh(self, params, *, step: int, epoch: int = 0) -> None:
        """Synchronously encodes, indexes and mines with ``params``; the new table replaces the old one."""
        self._raise_pending()
        self.wait()
        self._started_step, self._started_epoch = int(step), int(epoch)
        self._swap(self._mine(params, int(step), int(epoch)))

    def maybe_refresh(self, params, *, step: int, epoch: int) -> bool:
        """Refreshes if the schedule says so; returns True when a refresh ran (sync) or was started (async).

        Due when no refresh has run yet, or ``step − last >= refresh_every``, or (epoch schedule) ``epoch`` differs
        from the last refresh's. In asynchronous mode a due refresh is skipped while another is still running.
        """
        self._raise_pending()
        if not self._due(int(step), int(epoch)):
            return False
        if not self.asynchronous or self._current is None:
            self.refresh(params, step=step, epoch=epoch)
            return True
        if self._thread is not None and self._thread.is_alive():
            return False
        # Copy: the training loop may donate (and so delete) the buffers of the live parameters.
        snapshot = jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else np.copy(x), params)
        self._started_step, self._started_epoch = int(step), int(epoch)
        self._thread = threading.Thread(
            target=self._run_async, args=(snapshot, int(step), int(epoch)), name="hnjax-miner", daemon=True
        )
        self._thread.start()
        return True

    def wait(self) -> None:
        """Blocks until a pending asynchronous refresh has swapped in its table (re-raises its error)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_pending()

    def candidates(self, query_indices) -> tuple[np.ndarray, np.ndarray | None]:
        """Negatives of the given queries: ids int32 ``[b, K−1]`` and log q float32 ``[b, K−1]`` or None.

        log q is returned for the ``"model"`` recipe only (the sampling distribution the corrected loss needs).
        """
        self._raise_pending()
        mined = self._mined()
        idx = np.asarray(query_indices, np.int64)
        ids = mined.table[idx]
        return ids, None if mined.log_q is None else mined.log_q[idx]

    def state_dict(self) -> dict:
        """Mining state for checkpoints: NumPy arrays and ints only.

        Keys: ``table``, ``log_q`` (empty when the recipe has none), ``has_log_q``, ``seed``, ``last_refresh_step``,
        ``last_refresh_epoch``, ``num_refreshes``, ``num_negatives`` (−1 steps/epochs before any refresh). A refresh
        still running in the background is not part of the state; resume re-triggers it through the schedule.
        """
        m = self._current
        return {
            "table": np.zeros((0, self.num_negatives), np.int32) if m is None else m.table,
            "log_q": np.zeros((0,), np.float32) if m is None or m.log_q is None else m.log_q,
            "has_log_q": int(m is not None and m.log_q is not None),
            "seed": self.seed,
            "last_refresh_step": -1 if m is None else m.step,
            "last_refresh_epoch": -1 if m is None else m.epoch,
            "num_refreshes": self.num_refreshes,
            "num_negatives": self.num_negatives,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores ``state_dict()`` output; raises ValueError if it does not fit this miner's queries / K−1."""
        self.wait()
        table = np.asarray(state["table"])
        if int(state["num_negatives"]) != self.num_negatives:
            raise ValueError(f"state: num_negatives {state['num_negatives']}, this miner has {self.num_negatives}")
        self.seed, self.num_refreshes = int(state["seed"]), int(state["num_refreshes"])
        if int(state["last_refresh_step"]) < 0:
            self._current = None
            self._started_step = self._started_epoch = None
            return
        if table.shape != (self.n_queries, self.num_negatives):
            raise ValueError(f"state: table shape {table.shape}, expected {(self.n_queries, self.num_negatives)}")
        log_q = np.asarray(state["log_q"], np.float32) if int(state["has_log_q"]) else None
        if log_q is not None and log_q.shape != table.shape:
            raise ValueError(f"state: log_q shape {log_q.shape}, expected {table.shape}")
        step, epoch = int(state["last_refresh_step"]), int(state["last_refresh_epoch"])
        self._current = _Mined(table.astype(np.int32), log_q, step, epoch)
        self._started_step, self._started_epoch = step, epoch

    # -- internals -------------------------------------------------------------------------------------------
    def _mined(self) -> _Mined:
        if self._current is None:
            raise RuntimeError("no negatives yet: call refresh() or maybe_refresh() first")
        return self._current

    def _due(self, step: int, epoch: int) -> bool:
        if self._started_step is None:
            return True
        if self.refresh_every is not None:
            return step - self._started_step >= self.refresh_every
        return self.refresh_every_epoch and epoch != self._started_epoch

    def _swap(self, mined: _Mined) -> None:
        with self._lock:
            self._current = mined  # one reference assignment: readers see the old or the new table, never a mix
            self.num_refreshes += 1

    def _run_async(self, params, step: int, epoch: int) -> None:
        try:
            self._swap(self._mine(params, step, epoch))
        except BaseException as e:  # surfaced by the next maybe_refresh / wait / candidates call
            self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError("asynchronous refresh failed") from err

    def _mine(self, params, step: int, epoch: int) -> _Mined:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        k = self.num_negatives
        n_hard = self.recipe.num_hard(k)
        if n_hard == 0:  # uniform negatives do not depend on the parameters: nothing to encode
            n_docs = self.n_docs if self.n_docs is not None else self._count_docs(params)
            table = np.stack([uniform_excluding(rng, n_docs, g, k) for g in self._gold]).astype(np.int32)
            return _Mined(table, None, step, epoch)

        docs = encode(
            self.encode_fn,
            params,
            self.corpus,
            batch_size=self.batch_size,
            desc="encode corpus",
            progress=self.progress,
        )
        qs = encode(
            self.query_encode_fn,
            params,
            self.queries,
            batch_size=self.batch_size,
            desc="encode queries",
            progress=self.progress,
        )
        multi = isinstance(docs, tuple)
        n_docs = (docs[0] if multi else docs).shape[0]
        n_q = (qs[0] if multi else qs).shape[0]
        if n_q != self.n_queries:
            raise ValueError(f"queries: encoded {n_q} queries, but gold has {self.n_queries} entries")
        if self.n_docs is None:
            self._check_sizes(n_docs)
            self.n_docs = n_docs
        elif n_docs != self.n_docs:
            raise ValueError(f"corpus: encoded {n_docs} documents, expected {self.n_docs}")
        index = self._make_index(n_docs, multi)
        index.build(docs)
        s = self._shortlist(n_docs)
        scores, ids = index.search(qs, s)  # [Q, S]
        exclude = (ids[:, :, None] == self._gold_pad[:, None, :]).any(-1) | (ids < 0)  # [Q, S]
        margin = self.recipe.false_negative_margin
        if margin is not None:
            gold_min = self._gold_min_scores(qs, docs, multi)  # [Q]
            exclude |= scores > (gold_min - margin)[:, None]

        table = np.full((n_q, k), -1, np.int64)
        log_q = np.zeros((n_q, k), np.float32) if self.recipe.kind == "model" else None
        for c, (take, n_real) in enumerate(batching.padded_batches(n_q, min(_CHUNK, n_q))):
            sl = slice(int(take[0]), int(take[0]) + n_real)
            sc = np.where(np.isfinite(scores[take]), scores[take], 0.0)
            ex = exclude[take]
            if self.recipe.kind == "model":
                r = self.recipe
                pos, lq = _model_chunk(
                    jax.random.fold_in(key, c), sc, ex, k=k, temperature=r.temperature, smoothing=r.smoothing
                )
            else:
                pos, lq = _top_k_chunk(sc, ex, k=n_hard)
            pos, lq = np.asarray(pos)[:n_real], np.asarray(lq)[:n_real]
            ok = ~np.take_along_axis(exclude[sl], pos, axis=1)  # a row with < n_hard allowed picks excluded ones
            table[sl, :n_hard] = np.where(ok, np.take_along_axis(ids[sl], pos, axis=1), -1)
            if log_q is not None:
                log_q[sl] = lq
        # Uniform part (mixed recipe) and fill-ins for rows the guard left short.
        short = 0
        for i in range(n_q):
            missing = np.flatnonzero(table[i] < 0)
            if missing.size:
                short += missing.size - (k - n_hard)
                chosen = table[i][table[i] >= 0]
                excluded = np.concatenate([self._gold[i], chosen])
                table[i, missing] = uniform_excluding(rng, n_docs, excluded, missing.size)
                if log_q is not None:
                    log_q[i, missing] = -np.log(n_docs - len(self._gold[i]))
        if short:
            logger.warning("%d negatives came from uniform fill-in: the guard left the shortlist too small", short)
        return _Mined(table.astype(np.int32), log_q, step, epoch)

    def _count_docs(self, params) -> int:
        docs = encode(self.encode_fn, params, self.corpus, batch_size=self.batch_size, progress=self.progress)
        n = (docs[0] if isinstance(docs, tuple) else docs).shape[0]
        self._check_sizes(n)
        self.n_docs = n
        return n

    def _gold_min_scores(self, qs, docs, multi: bool) -> np.ndarray:
        """Lowest score among each query's golds, float32 [Q] (+inf for a query without gold: no guard)."""
        g = self._gold_pad  # [Q, G]
        valid = g >= 0
        safe = np.clip(g, 0, None)
        if multi:
            from hnjax import scorers  # noqa: PLC0415

            out = []
            for start in range(0, g.shape[0], 64):
                sl = slice(start, start + 64)
                d_mask = docs[1][safe[sl]] & valid[sl][..., None]
                out.append(
                    np.asarray(scorers.sum_of_max(qs[0][sl], docs[0][safe[sl]], qs[1][sl], d_mask, allow_empty=True))
                )
            s = np.concatenate(out)
        else:
            s = index_lib.exact_scores(qs, docs[safe], metric=self.metric)
        return np.where(valid, s, np.inf).min(axis=1)
