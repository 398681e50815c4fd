"""The ``Miner``: encode the corpus with the current parameters, index it, and keep a table of negatives per query.

One refresh (``Miner.refresh``):

1. encodes the corpus and the queries in batches with ``encode_fn(params, batch)`` (:mod:`hnjax.mining.encoding`;
   device memory bounded by one batch, tqdm progress bar);
2. builds the index (``hnjax.mining.index`` / ``multivector``) and retrieves a per-query shortlist of the top S
   documents (S = ``shortlist``, default 4·(K−1) plus the largest gold set);
3. masks every gold id of the query (and, with the false-negative guard, every shortlisted document scoring above the
   weakest gold minus a margin) and picks K−1 negatives per query with a :class:`~hnjax.mining.recipe.Recipe`
   (:mod:`hnjax.mining.negatives`): hard ones from the shortlist, uniform ones from the corpus minus the golds.
   If guard exclusions leave fewer than the hard count in the shortlist, the missing negatives are drawn uniformly
   from the corpus (logged as a warning; log q of such a fill-in is the uniform log(1/M)). The ``"random"`` recipe
   encodes nothing.

Randomness of a refresh at step t comes only from ``jax.random.fold_in(key(seed), t)``, folded with each query's
index, so an asynchronous refresh produces the same table as a synchronous one from the same parameters, a resumed run
re-mines identically, and the table does not depend on how the queries are split over processes.

Several processes (``hnjax.distributed``): each process encodes its share of the corpus, the shares are gathered so
that every process indexes the whole corpus, each process encodes and mines its own share of the queries against it,
and the query shares of the table are gathered, so every process holds the whole table (the same one a single process
would mine) and can look up the candidates of any rows it is given. Every process must refresh at the same steps
(the loop does); asynchronous refreshes are single-process only.

Refresh schedule (``maybe_refresh``): every ``refresh_every`` steps, or at every new epoch. With
``asynchronous=True`` the refresh runs in a background thread on a copy of the parameters while training continues;
the new table is swapped in atomically when it is complete (the first refresh is always synchronous: there is no
table to train on before it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import distributed
from hnjax.mining import backends, multivector, negatives
from hnjax.mining import encoding as encode_lib
from hnjax.mining import index as index_lib
from hnjax.mining import recipe as recipe_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Mined:
    table: np.ndarray  # int32 [Q, K-1]
    log_q: np.ndarray | None  # float32 [Q, K-1]
    step: int
    epoch: int


class Miner:
    """Keeps a table ``[n_queries, K−1]`` of negative document ids per training query, refreshed on a schedule.

    Args:
      encode_fn: ``encode_fn(params, batch) -> vectors [b, D]`` or ``(tokens [b, n, D], mask [b, n])``.
      corpus: documents, as a sequence of batches or an array / dict of arrays with leading dimension N (see
        :func:`hnjax.mining.encoding.encode`). Document ids are positions 0..N−1.
      queries: training queries, same forms as ``corpus``.
      gold: per query, its gold document id or a collection of them (all are excluded from the negatives).
      index: a backend name for ``make_index`` (``"auto"``: see ``default_backend``) or an unbuilt ``Index``
        (a ``MultiVectorIndex`` for multi-vector encoders; ``"auto"`` wraps the default backend in one).
      recipe: a ``Recipe`` or its kind as a string.
      num_negatives: K−1, negatives per query.
      refresh_every: refresh every this many steps (takes precedence over ``refresh_every_epoch``).
      refresh_every_epoch: refresh at every new epoch passed to ``maybe_refresh``.
      seed: seed of every refresh's randomness (combined with the step).
      asynchronous: let ``maybe_refresh`` mine in a background thread (single-process runs only).
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
        recipe: recipe_lib.Recipe | str = "mixed",
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
        self.recipe = recipe_lib.Recipe(kind=recipe) if isinstance(recipe, str) else recipe
        if not isinstance(self.recipe, recipe_lib.Recipe):
            raise ValueError(f"recipe: expected a Recipe or one of {recipe_lib.RECIPES}, got {type(recipe).__name__}")
        if not isinstance(num_negatives, int | np.integer) or num_negatives < 1:
            raise ValueError(f"num_negatives: expected a positive int, got {num_negatives!r}")
        if refresh_every is not None and refresh_every < 1:
            raise ValueError(f"refresh_every: expected None or >= 1 steps, got {refresh_every}")
        if asynchronous and jax.process_count() > 1:
            raise ValueError(
                f"asynchronous: background refreshes gather across processes at unpredictable times, which a run over "
                f"{jax.process_count()} processes cannot do; use synchronous refreshes (asynchronous=False)"
            )
        index_lib.check_metric(metric)
        self.encode_fn, self.query_encode_fn = encode_fn, query_encode_fn or encode_fn
        self.corpus, self.queries = corpus, queries
        self.num_negatives = int(num_negatives)
        self.refresh_every, self.refresh_every_epoch = refresh_every, bool(refresh_every_epoch)
        self.seed, self.asynchronous, self.metric = int(seed), bool(asynchronous), metric
        self.batch_size, self.progress = int(batch_size), bool(progress) and distributed.is_main_process()

        self.n_docs = encode_lib.num_rows(corpus)
        self.n_queries = len(gold)
        self.gold = negatives.GoldSets.from_lists(gold)
        n_q = encode_lib.num_rows(queries)
        if n_q is not None and n_q != self.n_queries:
            raise ValueError(f"gold: expected one gold set per query ({n_q} queries), got {self.n_queries}")
        self._shortlist_arg = shortlist
        self._index_arg = index
        if self.n_docs is not None:
            self.gold.check(self.n_docs, self.num_negatives)

        self._current: _Mined | None = None
        self._started_step: int | None = None
        self._started_epoch: int | None = None
        self.num_refreshes = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

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

    # -- schedule and threads --------------------------------------------------------------------------------
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

    # -- one refresh -----------------------------------------------------------------------------------------
    def _shortlist(self, n_docs: int) -> int:
        """S: shortlist per query, (``shortlist`` or 4·(K−1)) + max |gold|, at most N."""
        s = self._shortlist_arg or 4 * self.num_negatives
        if s < self.recipe.num_hard(self.num_negatives):
            raise ValueError(
                f"shortlist: expected >= {self.recipe.num_hard(self.num_negatives)} (the hard count), got {s}"
            )
        return min(s + self.gold.ids.shape[1], n_docs)

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

    def _set_n_docs(self, n_docs: int) -> None:
        if self.n_docs is None:
            self.gold.check(n_docs, self.num_negatives)
            self.n_docs = n_docs
        elif n_docs != self.n_docs:
            raise ValueError(f"corpus: encoded {n_docs} documents, expected {self.n_docs}")

    def _mine(self, params, step: int, epoch: int) -> _Mined:
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        pick_key, fill_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        own = distributed.shard_range(self.n_queries)  # this process's queries
        query_ids = np.arange(own.start, own.stop)
        gold = negatives.GoldSets(self.gold.ids[own.start : own.stop], self.gold.sizes[own.start : own.stop])
        if self.recipe.num_hard(self.num_negatives) == 0:  # uniform negatives do not depend on the parameters
            if self.n_docs is None:
                self._set_n_docs(encode_lib.count_rows(self.corpus))
            table = np.full((len(query_ids), self.num_negatives), -1, np.int64)
            table, _ = negatives.fill_uniform(table, gold, self.n_docs, key=fill_key, query_ids=query_ids)
            return self._gathered(table, None, step, epoch)

        encode = dict(batch_size=self.batch_size, progress=self.progress)
        docs = encode_lib.encode_sharded(self.encode_fn, params, self.corpus, desc="encode corpus", **encode)
        local_queries, rows = encode_lib.shard(self.queries)
        if rows != own and encode_lib.num_rows(self.queries) is None and jax.process_count() > 1:
            raise ValueError("queries: with several processes, give the queries as arrays (rows are split by index)")
        qs = encode_lib.encode(self.query_encode_fn, params, local_queries, desc="encode queries", **encode)
        multi = isinstance(docs, tuple)
        n_docs = (docs[0] if multi else docs).shape[0]
        n_q = (qs[0] if multi else qs).shape[0]
        if n_q != len(query_ids):
            raise ValueError(f"queries: encoded {n_q} queries, but gold has {len(query_ids)} entries for them")
        self._set_n_docs(n_docs)
        index = self._make_index(n_docs, multi)
        index.build(docs)
        scores, ids = index.search(qs, self._shortlist(n_docs))  # [q, S]
        exclude = (ids[:, :, None] == gold.ids[:, None, :]).any(-1) | (ids < 0)  # [q, S]
        margin = self.recipe.false_negative_margin
        if margin is not None:
            gold_min = self._gold_min_scores(qs, docs, gold, multi)  # [q]
            exclude |= scores > (gold_min - margin)[:, None]
        table, log_q = negatives.pick_from_shortlist(
            scores, ids, exclude, recipe=self.recipe, num_negatives=self.num_negatives, key=pick_key,
            query_ids=query_ids,
        )  # fmt: skip
        uniform_share = (self.num_negatives - self.recipe.num_hard(self.num_negatives)) * len(query_ids)
        table, filled = negatives.fill_uniform(table, gold, n_docs, key=fill_key, query_ids=query_ids, log_q=log_q)
        if filled > uniform_share:
            logger.warning("%d negatives came from uniform fill-in: the guard left the shortlist too small",
                           filled - uniform_share)  # fmt: skip
        return self._gathered(table, log_q, step, epoch)

    def _gathered(self, table: np.ndarray, log_q: np.ndarray | None, step: int, epoch: int) -> _Mined:
        """The whole table from every process's query share (the local one with a single process)."""
        if jax.process_count() > 1:
            table = distributed.allgather_rows(table)
            log_q = None if log_q is None else distributed.allgather_rows(log_q)
        return _Mined(table.astype(np.int32), log_q, step, epoch)

    def _gold_min_scores(self, qs, docs, gold: negatives.GoldSets, multi: bool) -> np.ndarray:
        """Lowest score among each query's golds, float32 [q] (+inf for a query without gold: no guard)."""
        g = gold.ids  # [q, G]
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
