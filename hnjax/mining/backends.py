"""Choosing a backend by name: ``make_index`` and the Miner's default, ``default_backend``."""

from __future__ import annotations

import jax

from hnjax.mining import device, faiss_index
from hnjax.mining import index as index_lib

BACKENDS = ("exact", "approx", "flat", "hnsw", "ivf", "ivfpq")


def make_index(backend: str = "flat", *, metric: str = "ip", **params) -> index_lib.Index:
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
        return device.DeviceIndex(metric=metric, approx=backend == "approx", **params)
    if backend in faiss_index.FaissIndex.KINDS:
        return faiss_index.FaissIndex(backend, metric=metric, **params)
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def default_backend(n_docs: int) -> str:
    """The backend ``index="auto"`` picks: exact search, on the accelerator if there is one.

    - a GPU or TPU is the default JAX device: ``"exact"`` (blocked matmul + ``lax.top_k`` on the device; no build,
      no transfer of the corpus to the host);
    - CPU only: ``"flat"`` (FAISS ``IndexFlatIP``), the fastest exact search measured on CPU (docs/mining.md);
      ``"exact"`` if FAISS is not installed.

    Approximate backends are opt-in: their recall depends on how clustered the embeddings are (docs/mining.md shows
    IVF far above 10x exact speed at recall >= 0.95 on tight clusters, and no gain on isotropic data), and a miss
    silently changes which hard negatives are mined. Check recall on your own vectors with
    ``experiments/bench_mining.py`` before switching.
    """
    del n_docs  # the choice does not depend on the corpus size yet
    if jax.default_backend() != "cpu":
        return "exact"
    try:
        faiss_index.import_faiss()
    except ImportError:
        return "exact"
    return "flat"
