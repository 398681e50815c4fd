"""Nearest-neighbour index backends for hard-negative mining.

Every backend has the same small interface::

    index.build(vectors, ids=None)          # vectors [N, D]; ids [N] (default arange(N))
    scores, ids = index.search(queries, k)  # queries [Q, D] -> scores float32 [Q, k], ids int64 [Q, k]
    index.save(path); index.load(path)      # checksummed; a corrupted or mismatched file raises ValueError

Backends (see ``make_index``):

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

import functools
import hashlib
import json
import logging
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

METRICS = ("ip", "cosine")
_DEVICE_DTYPES = ("float32", "float16", "bfloat16")
_FORMAT = "hnjax-index-v1"


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")


def _dtype_name(x) -> str:
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
    if _dtype_name(vectors) not in dtypes:
        raise ValueError(f"{name}: expected dtype in {dtypes}, got {_dtype_name(vectors)} (cast it explicitly)")
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


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    return int(k)


def l2_normalize(x: np.ndarray, *, name: str) -> np.ndarray:
    """Row-wise L2 normalisation on the host in float32; a zero row raises ValueError (cosine is undefined)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = np.flatnonzero(norms.reshape(-1) == 0)
    if bad.size:
        raise ValueError(f"{name}: cosine metric needs non-zero vectors, row {int(bad[0])} has norm 0")
    return x / norms


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
    accepted_dtypes: tuple[str, ...] = _DEVICE_DTYPES

    def __init__(self, *, metric: str = "ip"):
        _check_metric(metric)
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
        self._ids, self.dim, self.dtype = ids, int(vectors.shape[1]), _dtype_name(vectors)
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
        k = _check_k(k)
        check_vectors(queries, name="queries", dtypes=self.accepted_dtypes, dim=self.dim)
        if _dtype_name(queries) != self.dtype:
            raise ValueError(f"queries: expected dtype {self.dtype} (the indexed vectors'), got {_dtype_name(queries)}")
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
            "arrays": {n: [_dtype_name(a), list(a.shape)] for n, a in arrays.items()},
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


# ----------------------------------------------------------------------------------------------------------------
# Device backends
# ----------------------------------------------------------------------------------------------------------------


def _scan_top_k(queries, blocks, valid, offsets, *, k: int, approx: bool, recall_target: float):
    """Running top-k over corpus blocks (``lax.scan``): never more than one ``[Bq, Bn]`` score block at a time.

    Args:
      queries: ``[Bq, D]``.
      blocks: corpus ``[nb, Bn, D]``.
      valid: bool ``[nb, Bn]``, False on padding rows.
      offsets: int32 ``[nb]``, corpus position of each block's first row.

    Returns:
      scores float32 ``[Bq, k]`` (descending) and positions int32 ``[Bq, k]``.
    """
    _, block, _ = blocks.shape
    kb = min(k, block)
    bq = queries.shape[0]

    def step(carry, xs):
        best_s, best_i = carry  # [Bq, k]
        docs, ok, offset = xs
        s = jnp.einsum("qd,nd->qn", queries, docs, preferred_element_type=jnp.float32)  # [Bq, Bn]
        s = jnp.where(ok[None, :], s, -jnp.inf)
        if approx:
            bs, bi = jax.lax.approx_max_k(s, kb, recall_target=recall_target)
        else:
            bs, bi = jax.lax.top_k(s, kb)
        cat_s = jnp.concatenate([best_s, bs], axis=1)  # [Bq, k + kb]
        cat_i = jnp.concatenate([best_i, bi.astype(jnp.int32) + offset], axis=1)
        top_s, where = jax.lax.top_k(cat_s, k)
        return (top_s, jnp.take_along_axis(cat_i, where, axis=1)), None

    init = (jnp.full((bq, k), -jnp.inf, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
    (scores, pos), _ = jax.lax.scan(step, init, (blocks, valid, offsets))
    return scores, pos


@functools.partial(jax.jit, static_argnames=("k", "cosine", "approx", "recall_target", "mesh"))
def _blocked_top_k(
    queries, blocks, valid, offsets, *, k: int, cosine: bool, approx: bool, recall_target: float, mesh=None
):
    """Top-k of ``queries`` [Bq, D] over the corpus blocks, on one device or sharded over ``mesh``'s first axis.

    Sharded: each device scans its own blocks, the per-device top-k lists are all-gathered ([Bq, n_dev·k]) and
    merged by one more top-k, so only k candidates per query and device cross the interconnect.

    Returns:
      scores float32 ``[Bq, k]`` and positions int32 ``[Bq, k]`` (-1 where fewer than k valid rows exist).
    """
    if cosine:
        q32 = queries.astype(jnp.float32)
        queries = (q32 * jax.lax.rsqrt(jnp.sum(q32 * q32, axis=-1, keepdims=True))).astype(queries.dtype)
    scan = functools.partial(_scan_top_k, k=k, approx=approx, recall_target=recall_target)
    if mesh is None:
        scores, pos = scan(queries, blocks, valid, offsets)
    else:
        axis = mesh.axis_names[0]

        def local(q, b, v, o):
            s, p = scan(q, b, v, o)  # [Bq, k] of this device's shard
            s = jax.lax.all_gather(s, axis, axis=1, tiled=True)  # [Bq, n_dev * k]
            p = jax.lax.all_gather(p, axis, axis=1, tiled=True)
            top, where = jax.lax.top_k(s, k)
            return top, jnp.take_along_axis(p, where, axis=1)

        spec = jax.sharding.PartitionSpec
        scores, pos = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(spec(), spec(axis), spec(axis), spec(axis)),
            out_specs=(spec(), spec()),
            check_vma=False,  # outputs are identical on every device after the all-gather
        )(queries, blocks, valid, offsets)
    return scores, jnp.where(jnp.isneginf(scores), -1, pos)


class DeviceIndex(Index):
    """Exact (``approx=False``) or ``lax.approx_max_k`` (``approx=True``) search on the default JAX device.

    The corpus is stored as ``[ceil(N/Bn), Bn, D]`` blocks; one jit-compiled ``lax.scan`` per query block of
    ``Bq`` queries keeps a running top-k, so peak device memory for scores is ``Bq · Bn`` floats.

    Args:
      metric: ``"ip"`` or ``"cosine"``.
      approx: use ``lax.approx_max_k`` per corpus block.
      recall_target: recall target of ``approx_max_k`` (only approximate on TPU; exact elsewhere).
      query_block: Bq, queries per compiled call (queries are padded up to a multiple).
      corpus_block: Bn, documents per scored block.
    """

    accepted_dtypes = _DEVICE_DTYPES

    def __init__(
        self,
        *,
        metric: str = "ip",
        approx: bool = False,
        recall_target: float = 0.95,
        query_block: int = 256,
        corpus_block: int = 16384,
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(metric=metric)
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target: expected a value in (0, 1], got {recall_target}")
        if query_block < 1 or corpus_block < 1:
            raise ValueError(f"query_block, corpus_block: expected >= 1, got {query_block}, {corpus_block}")
        self.approx, self.recall_target = bool(approx), float(recall_target)
        self.query_block, self.corpus_block = int(query_block), int(corpus_block)
        self.backend = "approx" if approx else "exact"
        self.mesh = mesh
        self._blocks = self._valid = self._offsets = None

    def config(self) -> dict:
        cfg = super().config()
        if self.approx:
            cfg["recall_target"] = self.recall_target
        return cfg

    def _build(self, vectors) -> None:
        x = jnp.asarray(vectors)
        if self.metric == "cosine":
            x32 = x.astype(jnp.float32)
            norms = jnp.linalg.norm(x32, axis=-1)
            if bool((norms == 0).any()):
                raise ValueError(f"vectors: cosine metric needs non-zero vectors, row {int(jnp.argmin(norms))} is 0")
            x = (x32 / norms[:, None]).astype(x.dtype)
        self._set_blocks(x)

    def _set_blocks(self, x: jax.Array) -> None:
        n = x.shape[0]
        n_dev = 1 if self.mesh is None else self.mesh.shape[self.mesh.axis_names[0]]
        block = min(self.corpus_block, -(-n // n_dev))
        n_blocks = -(-math.ceil(n / block) // n_dev) * n_dev  # a whole number of blocks per device
        pad = n_blocks * block - n
        blocks = jnp.pad(x, ((0, pad), (0, 0))).reshape(n_blocks, block, x.shape[1])
        valid = (jnp.arange(n_blocks * block) < n).reshape(n_blocks, block)
        offsets = jnp.arange(n_blocks, dtype=jnp.int32) * block
        if self.mesh is not None:
            shard = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))
            blocks, valid, offsets = jax.device_put((blocks, valid, offsets), shard)
        self._blocks, self._valid, self._offsets = blocks, valid, offsets

    def _search(self, queries, k: int):
        q = jnp.asarray(queries)
        if self.metric == "cosine":
            norms = jnp.linalg.norm(q.astype(jnp.float32), axis=-1)
            if bool((norms == 0).any()):
                raise ValueError(f"queries: cosine metric needs non-zero vectors, row {int(jnp.argmin(norms))} is 0")
        n_q = q.shape[0]
        bq = self.query_block
        q = jnp.pad(q, ((0, -n_q % bq), (0, 0)))
        out_s, out_i = [], []
        for start in range(0, q.shape[0], bq):
            chunk = q[start : start + bq]
            if self.metric == "cosine" and start + bq > n_q:  # padded rows would be 0/0
                chunk = chunk.at[n_q - start :].set(1)
            s, i = _blocked_top_k(
                chunk,
                self._blocks,
                self._valid,
                self._offsets,
                k=k,
                cosine=self.metric == "cosine",
                approx=self.approx,
                recall_target=self.recall_target,
                mesh=self.mesh,
            )
            out_s.append(s)
            out_i.append(i)
        scores = np.asarray(jnp.concatenate(out_s))[:n_q]
        pos = np.asarray(jnp.concatenate(out_i))[:n_q]
        return scores, pos

    def _arrays(self) -> dict:
        n = self.size
        flat = np.asarray(self._blocks).reshape(-1, self.dim)[:n]
        return {"vectors": flat}

    def _from_arrays(self, arrays: dict) -> None:
        self._set_blocks(jnp.asarray(arrays["vectors"]))  # stored already normalised


# ----------------------------------------------------------------------------------------------------------------
# FAISS backends (host)
# ----------------------------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as e:
        raise ImportError("FAISS backends need faiss-cpu: pip install 'hnjax[faiss]' (or faiss-cpu)") from e
    return faiss


class FaissIndex(Index):
    """FAISS inner-product index on the host: ``kind`` in ``flat``, ``hnsw``, ``ivf``, ``ivfpq``.

    Args:
      kind: ``"flat"`` (exact, ``IndexFlatIP``), ``"hnsw"`` (``IndexHNSWFlat``), ``"ivf"`` (``IndexIVFFlat``) or
        ``"ivfpq"`` (``IndexIVFPQ`` wrapped in ``IndexRefineFlat``: PQ shortlist of ``rerank``·k, exact re-rank).
      metric: ``"ip"`` or ``"cosine"`` (vectors are L2-normalised on the host before indexing / searching).
      M: HNSW graph degree.
      ef_construction: HNSW build-time beam width.
      ef_search: HNSW search beam width (recall/speed knob; FAISS uses max(ef_search, k)).
      nlist: IVF lists; default ``round(2·sqrt(N))`` (below FAISS's 4·sqrt(N) guideline, to keep k-means training
        cheap on CPU), capped so that each list trains on ≥ 39 points. The value used is ``nlist_used``.
      nprobe: IVF lists visited per query (recall/speed knob).
      pq_m: PQ sub-quantisers (must divide D); default D / 8 (a 4-dim sub-vector, 8 bits each).
      pq_bits: bits per PQ code.
      rerank: IVF-PQ re-rank factor (candidates re-scored exactly = rerank · k).
      train_size: at most this many vectors (a fixed-seed sample) train the IVF / PQ quantisers.
      threads: FAISS OpenMP threads (None = FAISS default).
    """

    accepted_dtypes = ("float32",)
    KINDS = ("flat", "hnsw", "ivf", "ivfpq")

    def __init__(
        self,
        kind: str = "flat",
        *,
        metric: str = "ip",
        M: int = 32,  # noqa: N803  (FAISS's name)
        ef_construction: int = 80,
        ef_search: int = 128,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        pq_bits: int = 8,
        rerank: int = 4,
        train_size: int = 100_000,
        threads: int | None = None,
    ):
        super().__init__(metric=metric)
        if kind not in self.KINDS:
            raise ValueError(f"kind: expected one of {self.KINDS}, got {kind!r}")
        for name, v in [("M", M), ("ef_construction", ef_construction), ("ef_search", ef_search), ("nprobe", nprobe)]:
            if v < 1:
                raise ValueError(f"{name}: expected >= 1, got {v}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist: expected >= 1, got {nlist}")
        if rerank < 1:
            raise ValueError(f"rerank: expected >= 1, got {rerank}")
        self.kind, self.backend = kind, f"faiss-{kind}"
        self.M, self.ef_construction, self.ef_search = int(M), int(ef_construction), int(ef_search)
        self.nlist, self.nprobe = nlist, int(nprobe)
        self.pq_m, self.pq_bits, self.rerank = pq_m, int(pq_bits), int(rerank)
        self.train_size, self.threads = int(train_size), threads
        self._index = None
        self.nlist_used: int | None = None

    def config(self) -> dict:
        cfg = super().config()
        if self.kind == "hnsw":
            cfg.update(M=self.M, ef_construction=self.ef_construction)
        if self.kind in ("ivf", "ivfpq"):
            cfg.update(nlist=self.nlist)
        if self.kind == "ivfpq":
            cfg.update(pq_m=self.pq_m, pq_bits=self.pq_bits)
        return cfg

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None, rerank=None) -> None:
        """Changes the search-time knobs without rebuilding (HNSW ``ef_search``, IVF ``nprobe``, PQ ``rerank``)."""
        if ef_search is not None:
            self.ef_search = int(ef_search)
        if nprobe is not None:
            self.nprobe = int(nprobe)
        if rerank is not None:
            self.rerank = int(rerank)
        if self._index is not None:
            self._apply_search_params(1)

    def _apply_search_params(self, k: int) -> None:
        faiss = _faiss()
        if self.threads is not None:
            faiss.omp_set_num_threads(int(self.threads))
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.ef_search
        elif self.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self._index).nprobe = min(self.nprobe, self.nlist_used)
        if self.kind == "ivfpq":
            self._index.k_factor = float(self.rerank)

    def _prepare(self, x, name: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.metric == "cosine":
            x = l2_normalize(x, name=name)
        return np.ascontiguousarray(x)

    def _build(self, vectors) -> None:
        faiss = _faiss()
        if self.threads is not None:
            faiss.omp_set_num_threads(int(self.threads))
        x = self._prepare(vectors, "vectors")
        n, d = x.shape
        ip = faiss.METRIC_INNER_PRODUCT
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.M, ip)
            index.hnsw.efConstruction = self.ef_construction
        else:
            nlist = self.nlist or max(1, min(round(2 * math.sqrt(n)), n // 39))
            nlist = min(nlist, n)
            quantizer = faiss.IndexFlatIP(d)
            if self.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
            else:
                pq_m = self.pq_m or max(1, d // 8)
                if d % pq_m:
                    raise ValueError(f"pq_m: must divide D = {d}, got {pq_m}")
                index = faiss.IndexRefineFlat(faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, self.pq_bits, ip))
            self._keep = quantizer  # the IVF index holds a raw pointer to its quantizer
            train = x
            if n > self.train_size:
                rows = np.sort(np.random.default_rng(0).choice(n, self.train_size, replace=False))
                train = x[rows]
            if n < 2**self.pq_bits and self.kind == "ivfpq":
                raise ValueError(f"ivfpq: needs N >= 2**pq_bits = {2**self.pq_bits} training vectors, got N = {n}")
            index.train(train)
            self.nlist_used = nlist
        index.add(x)
        self._index = index

    def _search(self, queries, k: int):
        self._apply_search_params(k)
        scores, pos = self._index.search(self._prepare(queries, "queries"), k)
        return scores, pos

    def _arrays(self) -> dict:
        return {"faiss": _faiss().serialize_index(self._index)}

    def _from_arrays(self, arrays: dict) -> None:
        faiss = _faiss()
        self._index = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"]))
        if self._index.ntotal != self.size:
            raise ValueError(f"saved FAISS index holds {self._index.ntotal} vectors, metadata says {self.size}")
        if self.kind in ("ivf", "ivfpq"):
            self.nlist_used = faiss.extract_index_ivf(self._index).nlist


BACKENDS = ("exact", "approx", "flat", "hnsw", "ivf", "ivfpq")


def make_index(backend: str = "flat", *, metric: str = "ip", **params) -> Index:
    """Creates an (unbuilt) index by name.

    Args:
      backend: ``"exact"`` / ``"approx"`` (device, ``DeviceIndex``) or ``"flat"`` / ``"hnsw"`` / ``"ivf"`` /
        ``"ivfpq"`` (host FAISS, ``FaissIndex``).
      metric: ``"ip"`` or ``"cosine"``.
      **params: backend parameters (see ``DeviceIndex`` and ``FaissIndex``).

    Example:
      >>> index = make_index("ivf", metric="cosine", nlist=64, nprobe=8)  # doctest: +SKIP
      >>> scores, ids = index.build(doc_vectors).search(query_vectors, k=64)  # doctest: +SKIP
    """
    if backend in ("exact", "approx"):
        return DeviceIndex(metric=metric, approx=backend == "approx", **params)
    if backend in FaissIndex.KINDS:
        return FaissIndex(backend, metric=metric, **params)
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def exact_scores(queries: np.ndarray, docs: np.ndarray, *, metric: str) -> np.ndarray:
    """Exact paired scores on the host: ``s[b, g] = sim(queries[b], docs[b, g])``.

    Args:
      queries: ``[B, D]``.
      docs: ``[B, G, D]``.
      metric: ``"ip"`` or ``"cosine"``.

    Returns:
      float32 ``[B, G]``.
    """
    _check_metric(metric)
    q = np.asarray(queries, np.float32)
    d = np.asarray(docs, np.float32)
    if metric == "cosine":
        q = l2_normalize(q, name="queries")
        d = l2_normalize(d, name="docs")
    return np.einsum("bd,bgd->bg", q, d).astype(np.float32)
