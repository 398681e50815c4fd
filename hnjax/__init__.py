"""hnjax: hard negatives for retrievers and sentence encoders in JAX.

Submodules are imported on demand (``from hnjax import losses``) so that ``import hnjax`` stays fast and does not
initialise any device.
"""

__version__ = "0.1.0"
