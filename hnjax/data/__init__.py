"""Datasets and tokenization: parsing and validation on the host, NumPy batches out.

Submodules are imported on demand (``from hnjax.data import tokenize``) so that importing one dataset does not load
the tokenizers of another.
"""
