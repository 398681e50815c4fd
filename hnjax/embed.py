"""Sentence embeddings from an hnjax encoder: tokenize, encode in batches under jit, pool, return NumPy.

Used by STS evaluation (`hnjax.eval.evaluate_sts`) and by any code that needs one vector per sentence.

Batches are formed from sentences sorted by length (longest first), padded to the tokenizer's bucket lengths and to
a fixed batch size, so the jitted encoder compiles once per bucket; the vectors are returned in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hnjax import scorers
from hnjax.data import batching, tokenize
from hnjax.models import poolers, st_format

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
    encode_fn: EncodeFn | None = None,
    progress: bool = True,
    pipeline: st_format.SentencePipeline | None = None,
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
      encode_fn: a function from `make_encode_fn` to reuse; built from model, pooling and normalize when None.
      progress: show a tqdm progress bar.
      pipeline: a sentence-transformers pipeline replacing pooling and normalize (see `make_encode_fn`).

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
