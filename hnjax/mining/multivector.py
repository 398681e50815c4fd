"""Mining over multi-vector documents (sum-of-max scoring) by pooled shortlist + exact re-score.

Strategy: a document with token vectors d_1..d_n is represented in a first-stage single-vector index by its pooled
vector (masked mean, or the first/[CLS] token); a query's pooled vector retrieves a shortlist of S documents from
that index, and the shortlist is re-scored exactly with ``hnjax.scorers.sum_of_max``
(s(q, d) = Σ_i max_j ⟨q_i, d_j⟩ over real tokens), of which the top k are returned.

The result is exact when S = N (every document is re-scored); with S < N a document whose pooled vector ranks
outside the shortlist is missed, so recall@k against exhaustive SOM search depends on how well pooled similarity
tracks SOM similarity. ``tests/test_mining.py`` checks S = N against a NumPy SOM reference; measure recall on your
own encoder before lowering S. (A token-level index, as in ColBERT's first stage, is the other common strategy; it
needs N·n index entries and is not implemented here.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hnjax import scorers
from hnjax.mining import index as index_lib

POOLINGS = ("mean", "first")


def _split(vectors, name: str):
    """``tokens`` or ``(tokens, mask)`` -> (tokens [N, n, D], bool mask [N, n])."""
    if isinstance(vectors, (tuple, list)):
        if len(vectors) != 2:
            raise ValueError(f"{name}: expected tokens [N, n, D] or a pair (tokens, mask), got {len(vectors)} items")
        tokens, mask = vectors
    else:
        tokens, mask = vectors, None
    index_lib.check_vectors(tokens, name=name, dtypes=index_lib.DEVICE_DTYPES, ndim=3)
    tokens = np.asarray(tokens)
    if mask is None:
        mask = np.ones(tokens.shape[:2], bool)
    mask = np.asarray(mask)
    if mask.shape != tokens.shape[:2] or mask.dtype != np.bool_:
        raise ValueError(f"{name}: expected a bool mask of shape {tokens.shape[:2]}, got {mask.dtype} {mask.shape}")
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"{name}: row {int(empty[0])} has no real token (mask all False)")
    return tokens, mask


def pool(tokens: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Pooled float32 vectors ``[N, D]``: masked mean of the real tokens, or the first token."""
    if pooling == "first":
        return np.ascontiguousarray(tokens[:, 0].astype(np.float32))
    t = tokens.astype(np.float32)
    return np.ascontiguousarray((t * mask[..., None]).sum(1) / mask.sum(1, keepdims=True).astype(np.float32))


class MultiVectorIndex(index_lib.Index):
    """Sum-of-max search: pooled first-stage shortlist of S documents, exact SOM re-score, top k.

    ``build((tokens [N, n, D], mask [N, n]), ids)`` and ``search((tokens [Q, m, D], mask [Q, m]), k)``; a bare
    token array means every token is real.

    Args:
      first_stage: an unbuilt single-vector index (any backend of ``make_index``) that indexes the pooled vectors
        (float32, so FAISS backends work for any token dtype).
      shortlist: S, documents re-scored per query (``max(S, k)`` is used; S >= N is exhaustive and exact).
      pooling: ``"mean"`` (masked mean of real tokens) or ``"first"`` (the [CLS] position).
      query_block: queries re-scored together (memory ~ query_block · S · n · D floats).

    References:
      Zhang & Stratos (2021), SOM retriever (hard-nce-el ``retriever.py``, ``--type_model sum_max``); Khattab &
      Zaharia (2020), ColBERT (late interaction, shortlist then exact re-rank).
    """

    backend = "multi-vector"

    def __init__(
        self, first_stage: index_lib.Index, *, shortlist: int = 256, pooling: str = "mean", query_block: int = 64
    ):
        if isinstance(first_stage, MultiVectorIndex) or not isinstance(first_stage, index_lib.Index):
            raise ValueError(f"first_stage: expected a single-vector Index, got {type(first_stage).__name__}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        if shortlist < 1 or query_block < 1:
            raise ValueError(f"shortlist, query_block: expected >= 1, got {shortlist}, {query_block}")
        super().__init__(metric="ip")
        self.first_stage, self.shortlist, self.pooling, self.query_block = first_stage, shortlist, pooling, query_block
        self._tokens = self._mask = None

    def config(self) -> dict:
        return {"backend": self.backend, "pooling": self.pooling, "first_stage": self.first_stage.config()}

    def build(self, vectors, ids=None) -> MultiVectorIndex:
        """Indexes token vectors ``[N, n, D]`` (with an optional bool mask ``[N, n]``) under ``ids`` [N]."""
        tokens, mask = _split(vectors, "vectors")
        if tokens.shape[0] == 0:
            raise ValueError("vectors: the corpus is empty (N = 0); nothing to index")
        ids = index_lib.check_ids(ids, tokens.shape[0])
        self.first_stage.build(pool(tokens, mask, self.pooling))
        self._tokens, self._mask = tokens, mask
        self._ids, self.dim, self.dtype = ids, int(tokens.shape[2]), index_lib.dtype_name(tokens)
        return self

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k SOM scores and ids, float32 ``[Q, k]`` and int64 ``[Q, k]`` (-inf / -1 padding when k > N)."""
        if self._ids is None:
            raise RuntimeError("MultiVectorIndex.search called before build()")
        k = index_lib.check_k(k)
        q_tokens, q_mask = _split(queries, "queries")
        if q_tokens.shape[2] != self.dim:
            raise ValueError(f"queries: expected width D = {self.dim} (the index's), got D = {q_tokens.shape[2]}")
        if index_lib.dtype_name(q_tokens) != self.dtype:
            raise ValueError(f"queries: expected dtype {self.dtype}, got {index_lib.dtype_name(q_tokens)}")
        n_q, n = q_tokens.shape[0], self.size
        s = min(max(self.shortlist, k), n)
        _, pos = self.first_stage.search(pool(q_tokens, q_mask, self.pooling), s)  # [Q, S] positions
        kk = min(k, n)
        out_s = np.full((n_q, k), -np.inf, np.float32)
        out_i = np.full((n_q, k), -1, np.int64)
        for start in range(0, n_q, self.query_block):
            sl = slice(start, start + self.query_block)
            p = pos[sl]
            safe = np.clip(p, 0, None)
            d_mask = self._mask[safe] & (p >= 0)[..., None]  # [b, S, n]
            som = scorers.sum_of_max(
                jnp.asarray(q_tokens[sl]),
                jnp.asarray(self._tokens[safe]),
                jnp.asarray(q_mask[sl]),
                d_mask,
                allow_empty=True,
            )  # [b, S]
            som = np.where(p >= 0, np.asarray(som, np.float32), -np.inf)
            order = np.argsort(-som, axis=1, kind="stable")[:, :kk]
            top_s = np.take_along_axis(som, order, axis=1)
            top_p = np.take_along_axis(p, order, axis=1)
            out_s[sl, :kk], out_i[sl, :kk] = index_lib._map_ids(top_p, top_s, self._ids)
        return out_s, out_i

    def _arrays(self) -> dict:
        first = {f"first.{n}": a for n, a in self.first_stage._arrays().items()}
        return {"tokens": self._tokens, "mask": self._mask, **first}

    def _from_arrays(self, arrays: dict) -> None:
        self._tokens, self._mask = arrays["tokens"], arrays["mask"]
        fs = self.first_stage
        fs._ids, fs.dim, fs.dtype = np.arange(self._tokens.shape[0], dtype=np.int64), self.dim, "float32"
        fs._from_arrays({n[len("first.") :]: a for n, a in arrays.items() if n.startswith("first.")})
