"""Hard-negative mining: nearest-neighbour index backends and the ``Miner`` that refreshes candidate tables.

``from hnjax import mining`` gives the index backends (``mining.make_index``, ``DeviceIndex``, ``FaissIndex``,
``MultiVectorIndex``) and the ``Miner`` with its ``Recipe``; see docs/mining.md.

Modules: ``index`` (the interface, validation, checksummed save/load), ``device`` (exact / approximate search in
JAX), ``faiss_index`` (FAISS on the host), ``multivector`` (sum-of-max documents), ``backends`` (choice by name),
``encoding`` (batched encoding, per-process shares), ``recipe`` (how negatives are chosen), ``negatives`` (picks from
the shortlist, uniform fill-in), ``miner`` (refresh schedule, synchronous or background refreshes, state).
"""

from hnjax.mining import backends, device, encoding, faiss_index, index, miner, multivector, negatives, recipe
from hnjax.mining.backends import BACKENDS, default_backend, make_index
from hnjax.mining.device import DeviceIndex
from hnjax.mining.encoding import encode
from hnjax.mining.faiss_index import FaissIndex
from hnjax.mining.index import Index, exact_scores
from hnjax.mining.miner import Miner
from hnjax.mining.multivector import MultiVectorIndex
from hnjax.mining.recipe import RECIPES, Recipe

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
    "encoding",
    "exact_scores",
    "faiss_index",
    "index",
    "make_index",
    "miner",
    "multivector",
    "negatives",
    "recipe",
]
