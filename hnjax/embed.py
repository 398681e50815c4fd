"""Sentence embeddings from an hnjax encoder: tokenize, encode in batches under jit, pool, return NumPy.

Used by STS evaluation (`hnjax.eval.evaluate_sts`) and by any code that needs one vector per sentence.

By default sentences are packed (:mod:`hnjax.data.packing`): laid end to end in rows of ``row_length`` tokens, in
groups of one static shape, so the encoder computes almost no padding and compiles once. With ``packing=False``,
batches are formed from sentences sorted by length (longest first), padded to the tokenizer's bucket lengths and to a
fixed batch size, so the jitted encoder compiles once per bucket. Either way the vectors are returned in input order
and agree to float32 rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hnjax import scorers
from hnjax.data import batching, packing, tokenize
from hnjax.models import packed, poolers, st_format

logger = logging.getLogger(__name__)

POOLINGS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"mean": poolers.mean, "cls": poolers.cls}

EncodeFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def make_encode_fn(
    model: Any, *, pooling: str = "mean", normalize: bool = False, pipeline: st_format.SentencePipeline | None = None
) -> EncodeFn:
    """A jitted function `(params, input_ids, attention_mask, token_type_ids) -> vectors [B, D]`.

    v_b = pool(encoder(x_b)), optionally v_b / max(‖v_b‖₂, 1e-8) (:func:`hnjax.scorers.l2_normalize`); computed
    deterministically (no dropout). With a `pipeline` (e.g. `hnjax.models.load_pretrained(path).pipeline` of a
    sentence-transformers folder), v_b = pipeline.apply(encoder(x_b)): its pooling, Dense layers and normalisation.

    Args:
      model: a Flax encoder with `apply({"params": params}, input_ids, attention_mask, token_type_ids=...,
        deterministic=True) -> [B, L, D]` (e.g. from `hnjax.models.from_pretrained`).
      pooling: "mean" (masked mean of the last hidden states, as sentence-transformers' all-MiniLM-L6-v2) or "cls"
        (the first token, as SimCSE's `cls_before_pooler`).
      normalize: L2-normalise the pooled vectors.
      pipeline: replaces `pooling` and `normalize` when given.

    Returns:
      The jitted function; keep it to reuse its compilations (e.g. evaluating every few hundred training steps).

    References:
      Reimers & Gurevych, "Sentence-BERT", EMNLP 2019 (mean pooling); Gao et al., "SimCSE", EMNLP 2021 ([CLS]).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {sorted(POOLINGS)}, got {pooling!r}")
    pool = POOLINGS[pooling] if pipeline is None else pipeline.apply
    normalize = normalize and pipeline is None

    def encode(params, input_ids, attention_mask, token_type_ids):
        hidden = model.apply({"params": params}, input_ids, attention_mask, token_type_ids, deterministic=True)
        vectors = pool(hidden, attention_mask).astype(jnp.float32)  # [B, D]
        if normalize:
            vectors = scorers.l2_normalize(vectors)
        return vectors

    return jax.jit(encode)


class PackedEncodeFn:
    """A jitted ``(params, stream) -> vectors [B, D]`` over packed streams of rows of ``row_length`` tokens."""

    def __init__(self, fn: Callable[[Any, dict], jax.Array], row_length: int):
        self._fn, self.row_length = fn, row_length

    def __call__(self, params: Any, stream: dict) -> jax.Array:
        return self._fn(params, stream)


def make_packed_encode_fn(
    model: Any,
    *,
    pooling: str = "mean",
    normalize: bool = False,
    row_length: int,
    pipeline: st_format.SentencePipeline | None = None,
) -> PackedEncodeFn:
    """A jitted ``(params, stream) -> vectors [B, D]`` over a packed stream (:mod:`hnjax.models.packed`), equal to
    :func:`make_encode_fn` on the same sentences padded (see there for ``pooling``, ``normalize``, ``pipeline``)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {sorted(POOLINGS)}, got {pooling!r}")
    normalize = normalize and pipeline is None

    def encode(params, stream):
        flat = packed.encode(model, params, stream, row_length=row_length)  # [T, D]
        if pipeline is not None:
            hidden = packed.gather(flat, stream["slots"], stream["mask"])  # [B, L, D]
            vectors = pipeline.apply(hidden, stream["mask"]).astype(jnp.float32)
        elif pooling == "cls":
            vectors = packed.first(flat, stream["slots"])
        else:
            vectors = poolers.mean(packed.gather(flat, stream["slots"], stream["mask"]), stream["mask"])
        if normalize:
            vectors = vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        return vectors

    return PackedEncodeFn(jax.jit(encode), row_length)


class PackedGroup(NamedTuple):
    """One call's worth of packed sequences: the ``stream`` (:func:`hnjax.data.packing.pack` ``.as_batch()``, slots
    [batch_size, L]) and how many of its slots are real sequences (``count``; the rest repeat the first)."""

    stream: dict[str, np.ndarray]
    count: int


def packed_groups(
    sequences: Sequence[np.ndarray],
    *,
    row_length: int,
    length: int,
    batch_size: int = 64,
    types: Sequence[np.ndarray] | None = None,
    rows: int | None = None,
    pad_id: int = 0,
) -> list[PackedGroup]:
    """Sequences cut, in order, into packed groups of one static shape (``batch_size`` slots, ``rows`` rows of
    ``row_length`` tokens), so that an encoder over them compiles once; arguments as :func:`encode_packed`.

    The groups are ready batches for :func:`hnjax.mining.encode` and :class:`hnjax.mining.Miner` through
    :func:`trim_to_group`.
    """
    if not len(sequences):
        raise ValueError("sequences: expected at least one sequence, got none")
    lengths = np.array([len(s) for s in sequences])
    if rows is None:
        need = max(int(np.ceil(1.1 * batch_size * lengths.mean() / row_length)), 1)
        rows = packing.bucket_rows(need)
    out = []
    for group in packing.fixed_groups(lengths, row_length=row_length, rows=rows, max_sequences=batch_size):
        index = list(group) + [group[0]] * (batch_size - len(group))  # fillers share the first one's tokens
        p = packing.pack(
            [[sequences[i]] for i in index], row_length=row_length, length=length, rows=rows, pad_id=pad_id,
            types=None if types is None else [[types[i]] for i in index], keys=[[i] for i in index], squeeze=True,
        )  # fmt: skip
        out.append(PackedGroup(p.as_batch(), len(group)))
    return out


def trim_to_group(encode_fn: Callable[[Any, dict], Any]) -> Callable[[Any, PackedGroup], Any]:
    """``(params, group) -> outputs of its real sequences``: ``encode_fn(params, group.stream)`` (an array or a tuple
    of arrays with a leading slot axis) cut to ``group.count`` rows on the host."""

    def encode(params: Any, group: PackedGroup):
        out = jax.device_get(encode_fn(params, group.stream))
        if isinstance(out, (tuple, list)):
            return tuple(np.asarray(x)[: group.count] for x in out)
        return np.asarray(out)[: group.count]

    return encode


def encode_packed(
    encode_fn: Callable[[Any, dict], Any],
    params: Any,
    sequences: Sequence[np.ndarray],
    *,
    row_length: int,
    length: int,
    batch_size: int = 64,
    types: Sequence[np.ndarray] | None = None,
    rows: int | None = None,
    pad_id: int = 0,
    progress: bool = True,
    desc: str = "encoding",
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Encodes token sequences packed into groups of one static shape: ``batch_size`` sequence slots and ``rows`` rows
    of ``row_length`` tokens per call, so ``encode_fn`` compiles once.

    Args:
      encode_fn: jitted ``(params, stream) -> [batch_size, ...]`` or a tuple of such arrays (e.g. multi-vector
        ``(vectors [b, n, D], mask [b, n])``), stream as :func:`hnjax.data.packing.pack` ``.as_batch()`` with
        ``slots`` [batch_size, length].
      params: passed to ``encode_fn``.
      sequences: S token id arrays (1 to ``min(length, row_length)`` tokens each).
      row_length: tokens per packed row.
      length: L of the slot maps (at least the longest sequence).
      batch_size: sequences per call at most.
      types: token types of each sequence, or None.
      rows: rows per call; default enough for ``batch_size`` sequences of the mean length, with 10% to spare.
      pad_id: padding token id.
      progress: show a tqdm progress bar.
      desc: progress-bar label.

    Returns:
      The outputs of every sequence in input order: [S, ...], or a tuple of such arrays.
    """
    groups = packed_groups(
        sequences, row_length=row_length, length=length, batch_size=batch_size, types=types, rows=rows, pad_id=pad_id
    )
    encode = trim_to_group(encode_fn)
    outputs = [encode(params, g) for g in tqdm.tqdm(groups, desc=desc, unit="batch", disable=not progress)]
    if isinstance(outputs[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*outputs))
    return np.concatenate(outputs)


def encode_sentences(
    model: Any,
    params: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    pooling: str = "mean",
    normalize: bool = False,
    batch_size: int = 64,
    max_length: int = 128,
    buckets: Sequence[int] | None = None,
    encode_fn: EncodeFn | PackedEncodeFn | None = None,
    progress: bool = True,
    pipeline: st_format.SentencePipeline | None = None,
    pack: bool | None = None,
    row_length: int | None = None,
    packing_rows: int | None = None,
) -> np.ndarray:
    """Embeds sentences with an encoder, in batches under jit.

    Args:
      model: Flax encoder (see `make_encode_fn`).
      params: its parameters.
      tokenizer: a fast tokenizer (`hnjax.data.tokenize.load_tokenizer`).
      sentences: S strings.
      pooling: "mean" or "cls" (ignored when `encode_fn` is given).
      normalize: L2-normalise the vectors (ignored when `encode_fn` is given).
      batch_size: sentences per encoder call (at most S); the last batch is padded to this size so that it does not
        compile again.
      max_length: tokens per sentence, special tokens included; longer sentences are truncated, counted and
        logged.
      buckets: padded lengths (default `hnjax.data.tokenize.default_buckets(max_length)`).
      encode_fn: a function from `make_packed_encode_fn` (packed) or `make_encode_fn` (padded) to reuse; built from
        model, pooling and normalize when None.
      progress: show a tqdm progress bar.
      pipeline: a sentence-transformers pipeline replacing pooling and normalize (see `make_encode_fn`).
      pack: pack the sentences (True) or pad them (False; `buckets` then applies); default: packed, unless
        `encode_fn` is a padded function.
      row_length: tokens per packed row (default: the one of `encode_fn`, else twice `max_length`).
      packing_rows: packed rows per call (default: see `encode_packed`).

    Returns:
      float32 [S, D], row i the vector of sentences[i].

    Raises:
      ValueError: no sentences, or batch_size < 1.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("sentences: expected at least one sentence, got none")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    batch_size = min(batch_size, len(sentences))
    if pack is None:
        pack = encode_fn is None or isinstance(encode_fn, PackedEncodeFn)
    if pack:
        if encode_fn is None:
            row_length = 2 * max_length if row_length is None else row_length
            encode_fn = make_packed_encode_fn(
                model, pooling=pooling, normalize=normalize, row_length=row_length, pipeline=pipeline
            )
        elif not isinstance(encode_fn, PackedEncodeFn):
            raise ValueError("encode_fn: packing needs a function from make_packed_encode_fn, got a padded one")
        row_length = encode_fn.row_length
        seqs, types, truncated = [], [], 0
        for start in range(0, len(sentences), 1024):
            enc = tokenize.batch_encode(tokenizer, sentences[start : start + 1024], max_length=max_length)
            truncated += enc.n_truncated
            s, t = packing.unpad(enc.input_ids, enc.attention_mask, enc.token_type_ids)
            seqs += s
            types += t
        if truncated:
            logger.warning(
                "encode_sentences: %d of %d sentences truncated to %d tokens", truncated, len(sentences), max_length
            )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return encode_packed(
            encode_fn, params, seqs, types=types, row_length=row_length, length=max_length, batch_size=batch_size,
            rows=packing_rows, pad_id=pad_id, progress=progress,
        ).astype(np.float32)  # fmt: skip
    if encode_fn is None:
        encode_fn = make_encode_fn(model, pooling=pooling, normalize=normalize, pipeline=pipeline)
    # Longest first, so similar lengths share a batch and the first batch reveals memory trouble early.
    order = np.argsort([-len(s) for s in sentences], kind="stable")
    out: np.ndarray | None = None
    truncated = 0
    batches = list(batching.padded_batches(len(sentences), batch_size))
    for take, n in tqdm.tqdm(batches, desc="encoding", unit="batch", disable=not progress):
        idx = order[take[:n]]
        enc = tokenize.batch_encode(tokenizer, [sentences[i] for i in idx], max_length=max_length, buckets=buckets)
        truncated += enc.n_truncated
        # Pad the batch to a fixed size with copies of its first row (dropped below): one compilation per bucket.
        pad = batching.padded_index(n, batch_size)
        vectors = np.asarray(encode_fn(params, *(jnp.asarray(a[pad]) for a in enc[:3])))[:n]  # [n, D]
        if out is None:
            out = np.empty((len(sentences), vectors.shape[1]), dtype=np.float32)
        out[idx] = vectors
    if truncated:
        logger.warning(
            "encode_sentences: %d of %d sentences truncated to %d tokens", truncated, len(sentences), max_length
        )
    return out
