"""Tokenization into fixed-shape NumPy batches with a fast Hugging Face tokenizer.

Sequences are padded to the smallest of a few bucket lengths that holds the longest one, so a jitted encoder
compiles once per bucket rather than once per batch. Truncation is counted and logged, never silent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import transformers

from hnjax.data import pretrained

logger = logging.getLogger(__name__)

MIN_BUCKET = 8


class Encoded(NamedTuple):
    """A tokenized batch.

    Attributes:
        input_ids: [B, L] int32 token ids, padded with the tokenizer's pad id.
        attention_mask: [B, L] bool, true for real tokens.
        token_type_ids: [B, L] int32 segment ids (0 for the first text, 1 for the pair; zeros without pairs or for
            tokenizers without segments).
        n_truncated: number of texts (or pairs) cut to ``max_length``.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    n_truncated: int


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """Loads the fast tokenizer stored with a local checkpoint (offline).

    Args:
        name_or_path: checkpoint directory or a name known to :func:`hnjax.data.pretrained.resolve_checkpoint`.

    Returns:
        A ``transformers`` fast tokenizer.
    """
    directory = pretrained.resolve_checkpoint(name_or_path)
    return transformers.AutoTokenizer.from_pretrained(str(directory), use_fast=True, local_files_only=True)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 8 below ``max_length``, then ``max_length``: e.g. 128 → (8, 16, 32, 64, 128)."""
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length: expected a positive integer, got {max_length!r}")
    buckets, b = [], MIN_BUCKET
    while b < max_length:
        buckets.append(b)
        b *= 2
    return tuple(buckets) + (max_length,)


def choose_bucket(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ≥ ``longest``.

    Raises:
        ValueError: ``longest`` exceeds every bucket.
    """
    for b in sorted(buckets):
        if b >= longest:
            return b
    raise ValueError(f"longest: expected at most the largest bucket {max(buckets)}, got {longest}")


def _check_buckets(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    if buckets is None:
        return default_buckets(max_length)
    values = sorted(set(buckets))
    for b in values:
        if not isinstance(b, (int, np.integer)) or b < 1 or b > max_length:
            raise ValueError(f"buckets: expected integers in [1, max_length={max_length}], got {list(buckets)}")
    return tuple(int(b) for b in values if b < max_length) + (max_length,)


def batch_encode(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    buckets: Sequence[int] | None = None,
    text_pairs: Sequence[str] | None = None,
) -> Encoded:
    """Tokenizes texts (or text pairs) into a padded batch.

    The padded length is the smallest bucket ≥ the longest tokenized sequence; sequences longer than
    ``max_length`` (special tokens included) are truncated (pairs: longest first) and counted.

    Args:
        tokenizer: a ``transformers`` tokenizer (see :func:`load_tokenizer`).
        texts: B strings.
        max_length: longest sequence, special tokens included.
        buckets: allowed padded lengths; default :func:`default_buckets`; ``max_length`` is always added.
        text_pairs: optional B second segments (cross-encoder input "[CLS] a [SEP] b [SEP]").

    Returns:
        :class:`Encoded` with arrays [B, L], L a bucket.

    Raises:
        ValueError: empty or non-string input, mismatched pairs, bad buckets.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("texts: expected at least one text, got none")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}]: expected a string, got {type(t).__name__}")
    if text_pairs is not None:
        text_pairs = list(text_pairs)
        if len(text_pairs) != len(texts):
            raise ValueError(f"text_pairs: expected {len(texts)} texts like texts, got {len(text_pairs)}")
        for i, t in enumerate(text_pairs):
            if not isinstance(t, str):
                raise ValueError(f"text_pairs[{i}]: expected a string, got {type(t).__name__}")
    buckets = _check_buckets(buckets, max_length)

    # Tokenize once without truncation to see every true length (verbose=False: we report overlength ourselves).
    full = tokenizer(texts, text_pairs, truncation=False, padding=False, verbose=False)
    ids = [list(x) for x in full["input_ids"]]
    types = [list(x) for x in full["token_type_ids"]] if "token_type_ids" in full else [[0] * len(x) for x in ids]
    long_rows = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long_rows:
        cut = tokenizer(
            [texts[i] for i in long_rows],
            None if text_pairs is None else [text_pairs[i] for i in long_rows],
            truncation=True,
            max_length=max_length,
            padding=False,
            verbose=False,
        )
        for j, i in enumerate(long_rows):
            ids[i] = list(cut["input_ids"][j])
            types[i] = list(cut["token_type_ids"][j]) if "token_type_ids" in cut else [0] * len(ids[i])
            if len(ids[i]) > max_length:
                raise ValueError(
                    f"texts[{i}]: cannot truncate to max_length={max_length} (the special tokens alone need more)"
                )
        logger.warning(
            "batch_encode: truncated %d of %d %s to max_length=%d tokens",
            len(long_rows),
            len(texts),
            "pairs" if text_pairs is not None else "texts",
            max_length,
        )

    length = choose_bucket(max(len(x) for x in ids), buckets)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((len(ids), length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(ids), length), dtype=bool)
    token_type_ids = np.zeros((len(ids), length), dtype=np.int32)
    for i, (row, row_types) in enumerate(zip(ids, types, strict=True)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = True
        token_type_ids[i, : len(row)] = row_types
    return Encoded(input_ids, attention_mask, token_type_ids, len(long_rows))
