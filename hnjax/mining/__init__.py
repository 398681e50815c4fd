"""Hard-negative mining: nearest-neighbour index backends and the ``Miner`` that refreshes candidate tables.

``from hnjax import mining`` gives the index backends (``mining.make_index``, ``DeviceIndex``, ``FaissIndex``,
``MultiVectorIndex``) and the ``Miner`` with its ``Recipe``; see docs/mining.md.
"""

from hnjax.mining import index, miner, multivector
from hnjax.mining.index import BACKENDS, DeviceIndex, FaissIndex, Index, exact_scores, make_index
from hnjax.mining.miner import RECIPES, Miner, Recipe, default_backend, encode
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
    "default_backend",
    "encode",
    "exact_scores",
    "index",
    "make_index",
    "miner",
    "multivector",
]
