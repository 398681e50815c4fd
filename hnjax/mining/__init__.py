"""Hard-negative mining: nearest-neighbour index backends and the ``Miner`` that refreshes candidate tables.

``from hnjax import mining`` gives ``mining.make_index``, ``mining.DeviceIndex``, ``mining.FaissIndex``,
``mining.MultiVectorIndex`` and ``mining.Miner``; see docs/mining.md.
"""

from hnjax.mining import index
from hnjax.mining.index import BACKENDS, DeviceIndex, FaissIndex, Index, exact_scores, make_index

__all__ = ["BACKENDS", "DeviceIndex", "FaissIndex", "Index", "exact_scores", "index", "make_index"]
