"""FAISS backends on the host (``faiss-cpu``, the ``faiss`` extra, imported lazily): flat, HNSW, IVF, IVF-PQ."""

from __future__ import annotations

import math

import numpy as np

from hnjax import scorers
from hnjax.mining import index as index_lib


def import_faiss():
    """The ``faiss`` module (optional dependency, imported on first use); ImportError names the package to install."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError as e:
        raise ImportError("FAISS backends need faiss-cpu: pip install 'hnjax[faiss]' (or faiss-cpu)") from e
    return faiss


class FaissIndex(index_lib.Index):
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
        faiss = import_faiss()
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
            index_lib.check_cosine_rows(x, name=name)
            x = scorers.l2_normalize(x)
        return np.ascontiguousarray(x)

    def _build(self, vectors) -> None:
        faiss = import_faiss()
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
        return {"faiss": import_faiss().serialize_index(self._index)}

    def _from_arrays(self, arrays: dict) -> None:
        faiss = import_faiss()
        self._index = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"]))
        if self._index.ntotal != self.size:
            raise ValueError(f"saved FAISS index holds {self._index.ntotal} vectors, metadata says {self.size}")
        if self.kind in ("ivf", "ivfpq"):
            self.nlist_used = faiss.extract_index_ivf(self._index).nlist
