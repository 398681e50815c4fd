"""Nearest-neighbour index backends for hard-negative mining.

Every backend has the same small interface::

    index.build(vectors, ids=None)          # vectors [N, D]; ids [N] (default arange(N))
    scores, ids = index.search(queries, k)  # queries [Q, D] -> scores float32 [Q, k], ids int64 [Q, k]
    index.save(path); index.load(path)      # checksummed; a corrupted or mismatched file raises ValueError

Backends (``hnjax.mining.backends.make_index``; implementations in ``device`` and ``faiss_index``):

- ``"exact"``: device exact search. The corpus lives on the default JAX device as blocks ``[N/Bn, Bn, D]``; a
  jit-compiled ``lax.scan`` computes one ``[Bq, Bn]`` score block at a time (float32 accumulation), keeps its top-k
  and merges it into a running top-k, so a ``[Q, N]`` matrix is never materialised. Compiled once per
  (query block, corpus block, k) shape; queries are padded to whole query blocks.
- ``"approx"``: the same loop with ``lax.approx_max_k(recall_target=r)`` per block. Only TPUs implement an
  approximate (faster) kernel; on CPU and GPU XLA falls back to an exact sort, so recall is 1.0 there.
- ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivfpq"``: FAISS on the host (``faiss-cpu``, the ``faiss`` extra), inner-product
  metric; HNSW (``M``, ``ef_construction``, ``ef_search``), IVF (``nlist``, ``nprobe``) and IVF-PQ with exact re-rank
  of ``rerank`` · k candidates (``pq_m``, ``pq_bits``).

Scores: ``metric="ip"`` gives s(q, d) = ⟨q, d⟩; ``metric="cosine"`` L2-normalises corpus and queries first, s = ⟨q/‖q‖,
d/‖d‖⟩ (a zero vector is an error, not a NaN).

Edge cases, handled the same way by every backend:

- ``k > N``: the missing slots are padded with id ``-1`` and score ``-inf`` (the FAISS convention); ``k < 1`` raises.
- an empty corpus, duplicate ids, non-finite values, a dimension or dtype mismatch between corpus and queries raise
  ``ValueError`` naming the argument, the expected and the actual value. Device backends take float32, float16 or
  bfloat16; FAISS backends take float32 only (cast explicitly, nothing is converted silently).

Multi-vector documents (sum-of-max scoring) are handled by ``MultiVectorIndex`` in ``hnjax.mining.multivector``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import scorers

logger = logging.getLogger(__name__)

METRICS = ("ip", "cosine")
DEVICE_DTYPES = ("float32", "float16", "bfloat16")
_FORMAT = "hnjax-index-v1"


def check_metric(metric: str) -> None:
    """Raises ValueError unless ``metric`` is one of ``METRICS``."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")


def dtype_name(x) -> str:
    """The name of an array's dtype (``"float32"``, ``"bfloat16"``, ...), for NumPy and JAX arrays alike."""
    return jnp.dtype(x.dtype).name


def check_vectors(vectors, *, name: str, dtypes: tuple[str, ...], dim: int | None = None, ndim: int = 2) -> None:
    """Validates a vector array: rank, float dtype, dimension and finiteness.

    Args:
      vectors: array ``[N, D]`` (``ndim=2``) or ``[N, L, D]`` (``ndim=3``).
      name: argument name used in error messages.
      dtypes: accepted dtype names.
      dim: expected width D, or None for any.
      ndim: expected rank.

    Raises:
      ValueError: naming ``name``, what was expected and what was given.
    """
    shape = getattr(vectors, "shape", None)
    if shape is None or len(shape) != ndim:
        raise ValueError(f"{name}: expected an array of rank {ndim}, got shape {shape}")
    if dtype_name(vectors) not in dtypes:
        raise ValueError(f"{name}: expected dtype in {dtypes}, got {dtype_name(vectors)} (cast it explicitly)")
    if dim is not None and shape[-1] != dim:
        raise ValueError(f"{name}: expected width D = {dim} (the index's), got D = {shape[-1]}")
    if isinstance(vectors, jax.Array):
        finite = bool(jnp.isfinite(vectors).all())
    else:
        finite = bool(
            np.isfinite(np.asarray(vectors, dtype=np.float32) if vectors.dtype.kind == "V" else vectors).all()
        )
    if not finite:
        raise ValueError(f"{name}: contains NaN or infinite values")


def check_ids(ids, n: int) -> np.ndarray:
    """Returns ``ids`` as int64 ``[N]`` (``arange(N)`` when None) after checking shape and uniqueness.

    Raises:
      ValueError: wrong shape, negative ids (``-1`` is reserved for "no result") or duplicated ids.
    """
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (n,) or ids.dtype.kind not in "iu":
        raise ValueError(f"ids: expected an integer array of shape ({n},), got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if n and ids.min() < 0:
        raise ValueError(f"ids: expected non-negative ids (-1 means 'no result'), got {int(ids.min())}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dup = uniq[counts > 1][:5].tolist()
        raise ValueError(f"ids: expected unique ids, got {n - len(uniq)} duplicates (e.g. {dup})")
    return ids


def check_k(k: int) -> int:
    """``k`` as an int; raises ValueError unless it is a positive integer."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    return int(k)


def check_cosine_rows(x, *, name: str) -> None:
    """Raises ValueError naming ``name`` and the row when a row of ``x`` [..., D] (NumPy or JAX) is all zeros.

    The cosine metric is undefined for a zero vector; :func:`hnjax.scorers.l2_normalize` would silently map it to 0.
    """
    zero = np.asarray(~(x != 0).any(axis=-1)).reshape(-1)
    bad = np.flatnonzero(zero)
    if bad.size:
        raise ValueError(f"{name}: cosine metric needs non-zero vectors, row {int(bad[0])} has norm 0")


def _map_ids(pos: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (``-1`` = none) to external ids; missing slots get score ``-inf``."""
    pos = np.asarray(pos, dtype=np.int64)
    missing = pos < 0
    out_ids = np.where(missing, -1, ids[np.clip(pos, 0, None)])
    out_scores = np.where(missing, -np.inf, np.asarray(scores, dtype=np.float32)).astype(np.float32)
    return out_scores, out_ids


class Index:
    """Base class: validation, id bookkeeping and checksummed save/load shared by every backend.

    Subclasses implement ``_build(vectors)``, ``_search(queries, k) -> (scores, positions)``, ``config()``,
    ``_arrays()`` and ``_from_arrays(arrays)``.
    """

    backend = "base"
    accepted_dtypes: tuple[str, ...] = DEVICE_DTYPES

    def __init__(self, *, metric: str = "ip"):
        check_metric(metric)
        self.metric = metric
        self._ids: np.ndarray | None = None
        self.dim: int | None = None
        self.dtype: str | None = None

    # -- public interface ------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of indexed documents N (0 before ``build``)."""
        return 0 if self._ids is None else len(self._ids)

    def build(self, vectors, ids=None) -> Index:
        """Indexes ``vectors`` [N, D] under ``ids`` [N] (default ``arange(N)``), replacing any previous content.

        Raises:
          ValueError: empty corpus, wrong rank or dtype, non-finite values, duplicate or negative ids.
        """
        check_vectors(vectors, name="vectors", dtypes=self.accepted_dtypes)
        if vectors.shape[0] == 0:
            raise ValueError("vectors: the corpus is empty (N = 0); nothing to index")
        ids = check_ids(ids, vectors.shape[0])
        self._build(vectors)
        self._ids, self.dim, self.dtype = ids, int(vectors.shape[1]), dtype_name(vectors)
        return self

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents for each query.

        Args:
          queries: ``[Q, D]``, same width and dtype as the indexed vectors.
          k: number of results per query; when ``k > N`` the tail is padded with id -1 and score -inf.

        Returns:
          ``(scores, ids)``: float32 ``[Q, k]`` sorted descending, int64 ``[Q, k]``.
        """
        if self._ids is None:
            raise RuntimeError(f"{type(self).__name__}.search called before build()")
        k = check_k(k)
        check_vectors(queries, name="queries", dtypes=self.accepted_dtypes, dim=self.dim)
        if dtype_name(queries) != self.dtype:
            raise ValueError(f"queries: expected dtype {self.dtype} (the indexed vectors'), got {dtype_name(queries)}")
        if queries.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        scores, pos = self._search(queries, min(k, self.size))
        scores, ids = _map_ids(pos, scores, self._ids)
        if k > self.size:
            pad = k - self.size
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, ids

    def config(self) -> dict:
        """Build-time settings that a saved index must match (backend, metric and backend parameters)."""
        return {"backend": self.backend, "metric": self.metric}

    def save(self, path: str, *, fingerprint: str = "") -> None:
        """Writes the index to ``path`` (a zip of raw arrays + JSON metadata + SHA-256 checksum).

        Args:
          path: output file.
          fingerprint: free text stored with the index (e.g. the training step of the encoder that produced the
            vectors); ``load(path, fingerprint=...)`` refuses a file whose fingerprint differs.
        """
        if self._ids is None:
            raise RuntimeError("save called before build()")
        arrays = dict(self._arrays(), ids=self._ids)
        meta = {
            "format": _FORMAT,
            "config": self.config(),
            "dim": self.dim,
            "dtype": self.dtype,
            "size": self.size,
            "fingerprint": fingerprint,
            "arrays": {n: [dtype_name(a), list(a.shape)] for n, a in arrays.items()},
        }
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
        raw = {n: np.ascontiguousarray(a).tobytes() for n, a in arrays.items()}
        tmp = f"{path}.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("meta.json", meta_bytes)
            for n, b in raw.items():
                zf.writestr(f"{n}.bin", b)
            zf.writestr("sha256", _checksum(meta_bytes, raw))
        os.replace(tmp, path)

    def load(self, path: str, *, fingerprint: str | None = None) -> Index:
        """Restores an index saved by ``save`` into this (identically configured) object.

        Raises:
          ValueError: the file is unreadable or its checksum fails (corrupted), or its backend / metric / parameters /
            fingerprint differ from this object's (mismatched). A bad file is never used.
        """
        try:
            with zipfile.ZipFile(path) as zf:
                meta_bytes = zf.read("meta.json")
                meta = json.loads(meta_bytes)
                raw = {n: zf.read(f"{n}.bin") for n in meta["arrays"]}
                stored = zf.read("sha256").decode()
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable saved index (corrupted or wrong file): {e}") from e
        if stored != _checksum(meta_bytes, raw):
            raise ValueError(f"{path}: checksum mismatch, the saved index is corrupted; rebuild it")
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path}: expected format {_FORMAT}, got {meta.get('format')!r}")
        if meta["config"] != self.config():
            raise ValueError(f"{path}: saved index config {meta['config']} does not match this index {self.config()}")
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            raise ValueError(f"{path}: saved fingerprint {meta['fingerprint']!r}, expected {fingerprint!r}")
        arrays = {
            n: np.frombuffer(raw[n], dtype=jnp.dtype(dt)).reshape(shape) for n, (dt, shape) in meta["arrays"].items()
        }
        self._ids = check_ids(arrays.pop("ids"), meta["size"])
        self.dim, self.dtype = meta["dim"], meta["dtype"]
        self._from_arrays(arrays)
        return self

    # -- backend hooks -----------------------------------------------------------------------------------------
    def _build(self, vectors) -> None:
        raise NotImplementedError

    def _search(self, queries, k: int):
        raise NotImplementedError

    def _arrays(self) -> dict:
        raise NotImplementedError

    def _from_arrays(self, arrays: dict) -> None:
        raise NotImplementedError


def _checksum(meta_bytes: bytes, raw: dict) -> str:
    h = hashlib.sha256(meta_bytes)
    for n in sorted(raw):
        h.update(n.encode())
        h.update(raw[n])
    return h.hexdigest()


def exact_scores(queries: np.ndarray, docs: np.ndarray, *, metric: str) -> np.ndarray:
    """Exact paired scores on the host: ``s[b, g] = sim(queries[b], docs[b, g])``.

    Args:
      queries: ``[B, D]``.
      docs: ``[B, G, D]``.
      metric: ``"ip"`` or ``"cosine"``.

    Returns:
      float32 ``[B, G]``.
    """
    check_metric(metric)
    q = np.asarray(queries, np.float32)
    d = np.asarray(docs, np.float32)
    if metric == "cosine":
        check_cosine_rows(q, name="queries")
        check_cosine_rows(d, name="docs")
        q, d = scorers.l2_normalize(q), scorers.l2_normalize(d)
    return np.einsum("bd,bgd->bg", q, d).astype(np.float32)
