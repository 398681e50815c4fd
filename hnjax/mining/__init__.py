"""Hard-negative mining: nearest-neighbour index backends and the ``Miner`` that refreshes candidate tables.

``from hnjax import mining`` gives the index backends (``mining.make_index``, ``DeviceIndex``, ``FaissIndex``,
``MultiVectorIndex``) and the ``Miner`` with its ``Recipe``; see docs/mining.md.

Modules: ``index`` (the interface, validation, checksummed save/load), ``device`` (exact / approximate search in
JAX), ``faiss_index`` (FAISS on the host), ``multivector`` (sum-of-max documents), ``backends`` (choice by name),
``miner`` (encoding, recipes, refresh schedule).
"""

from hnjax.mining import backends, device, faiss_index, index, miner, multivector
from hnjax.mining.backends import BACKENDS, default_backend, make_index
from hnjax.mining.device import DeviceIndex
from hnjax.mining.faiss_index import FaissIndex
from hnjax.mining.index import Index, exact_scores
from hnjax.mining.miner import RECIPES, Miner, Recipe, encode
from hnjax.mining.multivector import MultiVectorIndex

__all__ = [
    "BACKENDS",
    "RECIPES",
    "DeviceIndex",
    "FaissIndex",
    "Index",
    "Miner",
    "MultiVectorIndex",
    "Recipe",
    "backends",
    "default_backend",
    "device",
    "encode",
    "exact_scores",
    "faiss_index",
    "index",
    "make_index",
    "miner",
    "multivector",
]
