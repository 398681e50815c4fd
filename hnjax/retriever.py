"""The entity retrievers of Zhang & Stratos (2021): two BERT towers, a score function and the NCE loss.

A retriever encodes a mention into m vectors and an entity into n vectors and scores the pair with one case of the
general score of :mod:`hnjax.scorers`:

========  ==========================  ==============================  ====================
scorer    mention vectors (m)         entity vectors (n)              score
========  ==========================  ==============================  ====================
dual      [CLS] (1)                   [CLS] (1)                       ⟨x, y⟩
multi     [CLS] (1)                   first n token states            max_j ⟨x, y_j⟩
som       all token states (masked)   all token states (masked)       Σ_i max_j ⟨x_i, y_j⟩
poly      m learned codes attending   [CLS] (1)                       soft attention
          over the mention tokens
========  ==========================  ==============================  ====================

No projection, normalisation or temperature: raw dot products, as in hard-nce-el ``retriever.py``. Unlike the
official SOM, which lets padding states into the sum and the max, padding is masked here.

Parameters are a plain dict ``{"mention": encoder, "entity": encoder, "codes": ...}`` (``"entity"`` absent when the
towers are shared). Training batches come in three layouts with the same loss: per row (``cand_ids`` [B, K, Le]),
de-duplicated (each distinct candidate entity once: ``entity_ids`` [U, Le] plus ``cand_index`` [B, K]), or packed
(:func:`pack_batch`: mentions and distinct candidate entities packed into rows of ``row_length`` tokens,
:mod:`hnjax.data.packing`), which computes neither padding nor repeated entities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import losses, scorers
from hnjax.data import batching, packing
from hnjax.models import bert, packed, poolers

SCORERS = ("dual", "multi", "som", "poly")


@dataclasses.dataclass(frozen=True)
class RetrieverConfig:
    """How mentions and entities become vectors, and how they are scored.

    Attributes:
      scorer: one of ``SCORERS``.
      num_entity_vectors: n of MULTI-n (leading entity token states).
      num_codes: m of POLY-m (learned mention codes).
      shared_encoder: one encoder for both towers (the official code uses two).
      block_size: candidates/entities scored per step inside the scorer (memory bound, see :mod:`hnjax.scorers`).
      row_length: tokens per row of packed batches (:func:`pack_batch` must use the same).
    """

    scorer: str = "som"
    num_entity_vectors: int = 8
    num_codes: int = 16
    shared_encoder: bool = False
    block_size: int = 256
    row_length: int = 256

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer: expected one of {SCORERS}, got {self.scorer!r}")
        for name in ("num_entity_vectors", "num_codes", "block_size", "row_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Retriever:
    """A retriever: the encoder module (shared architecture of both towers) and its configuration.

    All methods are pure functions of explicit parameters; the object itself holds no arrays and is hashable, so it
    can be closed over by ``jax.jit``.
    """

    encoder: bert.BertModel
    config: RetrieverConfig

    def init(self, encoder_params: dict, key: jax.Array) -> dict:
        """Parameters for both towers from one (pre-trained) encoder's parameters; codes N(0, 0.02²)."""
        params: dict[str, Any] = {"mention": encoder_params}
        if not self.config.shared_encoder:
            params["entity"] = jax.tree.map(jnp.array, encoder_params)  # a copy, trained separately
        if self.config.scorer == "poly":
            params["codes"] = poolers.init_poly_codes(key, self.config.num_codes, self.encoder.config.hidden_size)
        return params

    def _hidden(self, tower_params, ids, mask, key):
        deterministic = key is None
        rngs = None if deterministic else {"dropout": key}
        return self.encoder.apply({"params": tower_params}, ids, mask, deterministic=deterministic, rngs=rngs)

    def _entity_tower(self, params: dict) -> dict:
        return params["mention"] if self.config.shared_encoder else params["entity"]

    def _mention_vectors(self, params: dict, first: Callable[[int | None], tuple[jax.Array, jax.Array]]):
        """Mention vectors from ``first(n)``, the first n token states and mask ([..., n, D], [..., n]; None: all)."""
        scorer = self.config.scorer
        if scorer == "som":
            return first(None)
        if scorer == "poly":
            hidden, mask = first(None)
            lead = hidden.shape[:-2]
            flat, flat_mask = hidden.reshape((-1,) + hidden.shape[-2:]), mask.reshape((-1, mask.shape[-1]))
            codes = poolers.masked_attention_pool(params["codes"], flat, flat_mask)  # [N, m, D]
            codes = codes.reshape(lead + codes.shape[1:])
            return codes, jnp.ones(codes.shape[:-1], bool)
        return first(1)  # dual, multi: [CLS]

    def _entity_vectors(self, first: Callable[[int | None], tuple[jax.Array, jax.Array]], length: int):
        """Entity vectors from ``first(n)`` (see :meth:`_mention_vectors`); ``length`` is the entity length Le."""
        scorer = self.config.scorer
        if scorer == "som":
            return first(None)
        if scorer == "multi":
            n = self.config.num_entity_vectors
            if n > length:
                raise ValueError(f"num_entity_vectors={n} exceeds the entity length {length}")
            return first(n)
        return first(1)  # dual, poly: [CLS]

    def encode_mentions(self, params: dict, ids: jax.Array, mask: jax.Array, *, key: jax.Array | None = None):
        """Mention vectors.

        Args:
          params: retriever parameters.
          ids: [B, Lm] token ids; mask: [B, Lm] bool.
          key: dropout key (training) or None (deterministic).

        Returns:
          (vectors [B, m, D] float32, mask [B, m] bool).
        """
        hidden = self._hidden(params["mention"], ids, mask, key)  # [B, Lm, D]
        mask = mask.astype(bool)
        return self._mention_vectors(params, lambda n: (hidden, mask) if n is None else (hidden[:, :n], mask[:, :n]))

    def encode_entities(self, params: dict, ids: jax.Array, mask: jax.Array, *, key: jax.Array | None = None):
        """Entity vectors: (vectors [N, n, D] float32, mask [N, n] bool), ids/mask [N, Le]."""
        hidden = self._hidden(self._entity_tower(params), ids, mask, key)  # [N, Le, D]
        mask = mask.astype(bool)
        first = lambda n: (hidden, mask) if n is None else (hidden[:, :n], mask[:, :n])  # noqa: E731
        return self._entity_vectors(first, ids.shape[1])

    def _packed_first(self, tower_params, stream, key):
        rngs = None if key is None else {"dropout": key}
        flat = packed.encode(
            self.encoder, tower_params, stream, row_length=self.config.row_length, deterministic=key is None, rngs=rngs
        )  # [T, D]
        slots, mask = stream["slots"], stream["mask"].astype(bool)

        def first(n):
            s, m = (slots, mask) if n is None else (slots[..., :n], mask[..., :n])
            return packed.gather(flat, s, m), m

        return first

    def encode_mentions_packed(self, params: dict, stream: dict, *, key: jax.Array | None = None):
        """Mention vectors of a packed stream (:mod:`hnjax.models.packed`): slots [..., Lm] → ([..., m, D], [..., m]).

        Equal to :meth:`encode_mentions` of the same mentions padded (no dropout).
        """
        return self._mention_vectors(params, self._packed_first(params["mention"], stream, key))

    def encode_entities_packed(self, params: dict, stream: dict, *, key: jax.Array | None = None):
        """Entity vectors of a packed stream: slots [..., Le] → ([..., n, D], [..., n]); see :meth:`encode_entities`."""
        first = self._packed_first(self._entity_tower(params), stream, key)
        return self._entity_vectors(first, stream["slots"].shape[-1])

    def score(self, q, q_mask, d, d_mask) -> jax.Array:
        """Scores of mention vectors [B, m, D] against entity vectors [N, n, D] (→ [B, N]) or [B, K, n, D] (→ [B, K]).

        Padding vectors are masked; a multi-vector entity whose leading positions are padding still scores over its
        real ones.
        """
        return scorers.late_interaction(
            q,
            d,
            q_mask,
            d_mask,
            attention="soft" if self.config.scorer == "poly" else "hard",
            block_size=self.config.block_size,
            allow_empty=True,
        )

    def _padded_candidates(self, params: dict, batch: dict, key: jax.Array):
        if "cand_ids" in batch:  # per-row layout [B, K, Le]: shards with the mentions over devices
            b, k, length = batch["cand_ids"].shape
            d, dm = self.encode_entities(
                params, batch["cand_ids"].reshape(b * k, length), batch["cand_token_mask"].reshape(b * k, length),
                key=key,
            )  # fmt: skip
            return d.reshape(b, k, *d.shape[1:]), dm.reshape(b, k, -1)  # [B, K, n, D], [B, K, n]
        # deduplicated layout: each distinct entity once, [U, Le] + cand_index [B, K]
        d, dm = self.encode_entities(params, batch["entity_ids"], batch["entity_mask"], key=key)
        return d[batch["cand_index"]], dm[batch["cand_index"]]  # [B, K, n, D], [B, K, n]

    def loss(self, params: dict, batch: dict, key: jax.Array, axis_name: str | None = None):
        """NCE loss of one batch of mentions against their candidates (gold at column 0).

        Args:
          params: retriever parameters.
          batch: ``mention_ids``/``mention_mask`` [B, Lm]; the candidates either per row, ``cand_ids`` /
            ``cand_token_mask`` [B, K, Le] (the layout for data parallelism: every array has B rows), or
            deduplicated, ``entity_ids``/``entity_mask`` [U, Le] (distinct candidate entities) with ``cand_index``
            [B, K] int into U (one device); or packed (:func:`pack_batch`), streams ``mention_*`` (slots [B, Lm])
            and ``entity_*`` (slots [B, K, Le]), every array with B rows; optional ``cand_mask`` [B, K] bool,
            ``log_q`` [B, K] (log-q corrected NCE), ``valid`` [B] bool (padding rows of a batch that does not
            divide the device count).
          key: dropout key.
          axis_name: unused (candidates are per mention, not in-batch); accepted for the trainer's interface.

        Returns:
          (mean loss over valid rows, {"loss_sum": Σ valid losses, "count": number of valid rows}).
        """
        del axis_name
        k_mention, k_entity = jax.random.split(key)
        if packed.is_packed(batch, "mention_"):  # packed streams: no padding, each distinct entity once per group
            q, qm = self.encode_mentions_packed(params, packed.stream(batch, "mention_"), key=k_mention)
            d, dm = self.encode_entities_packed(params, packed.stream(batch, "entity_"), key=k_entity)  # [B, K, n, D]
        else:
            q, qm = self.encode_mentions(params, batch["mention_ids"], batch["mention_mask"], key=k_mention)
            d, dm = self._padded_candidates(params, batch, k_entity)
        scores = self.score(q, qm, d, dm)  # [B, K]
        per_row = losses.nce(scores, batch.get("cand_mask"), batch.get("log_q"), reduction="none")  # [B]
        valid = batch.get("valid")
        weight = jnp.ones(per_row.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
        total, count = jnp.sum(per_row * weight), jnp.sum(weight)
        return total / jnp.maximum(count, 1.0), {"loss_sum": total, "count": count}


@functools.partial(jax.jit, static_argnames=("retriever", "k"))
def _block_top_k(retriever: Retriever, q, q_mask, d, d_mask, *, k: int):
    """Top-k of one block of mentions [b, m, D] over all entities; compiled once per retriever, k and shapes."""
    return jax.lax.top_k(retriever.score(q, q_mask, d, d_mask), k)


def top_k(
    retriever: Retriever,
    q: jax.Array,
    q_mask: jax.Array,
    d: jax.Array,
    d_mask: jax.Array,
    k: int,
    *,
    query_block: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k entities for every mention by the retriever's own score, in blocks of mentions.

    Every block has ``query_block`` rows (the last is padded), so repeated calls with the same shapes reuse one
    compilation.

    Args:
      retriever: the model (for its scorer).
      q, q_mask: mention vectors [Q, m, D] and mask [Q, m].
      d, d_mask: entity vectors [N, n, D] and mask [N, n].
      k: entities returned per mention (clipped to N).
      query_block: mentions scored at a time; peak memory O(query_block · block_size · m · n) floats.

    Returns:
      (scores [Q, k] float32, indices [Q, k] int64 into the N entities), best first.
    """
    k = min(k, d.shape[0])
    q, q_mask, d, d_mask = jnp.asarray(q), jnp.asarray(q_mask), jnp.asarray(d), jnp.asarray(d_mask)
    out_s, out_i = [], []
    for index, n_real in batching.padded_batches(q.shape[0], query_block):
        s, i = _block_top_k(retriever, q[index], q_mask[index], d, d_mask, k=k)
        out_s.append(np.asarray(s)[:n_real])
        out_i.append(np.asarray(i)[:n_real])
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def pack_batch(
    mentions: Sequence[Sequence[int]],
    candidates: Sequence[Sequence[Sequence[int]]],
    *,
    row_length: int,
    mention_length: int,
    entity_length: int,
    candidate_keys: Sequence[Sequence[Hashable]] | None = None,
    rows: int | None = None,
    devices: int = 1,
    grad_accum: int = 1,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """A packed retriever batch: streams ``mention_*`` and ``entity_*`` (:mod:`hnjax.data.packing`) and ``valid``.

    Args:
      mentions: B mention token id sequences (special tokens included).
      candidates: B lists of K candidate entity token id sequences, gold first.
      row_length: tokens per packed row (the retriever's ``config.row_length``).
      mention_length, entity_length: Lm and Le of the slot maps (at least the longest mention / entity).
      candidate_keys: B lists of K entity ids; a group stores each distinct id once (its first sequence); None
        stores every candidate.
      rows: examples in the batch (≥ B; filler rows repeat the first example, ``valid = False``); default B.
      devices, grad_accum: the training step's layout (:func:`hnjax.data.packing.group_rows`).
      pad_id: padding token id.

    Returns:
      ``mention_{tokens,types,positions,segments}`` [rows, Cm], ``mention_slots``/``mention_mask`` [rows, Lm],
      ``entity_*`` chunks [rows, Ce], ``entity_slots``/``entity_mask`` [rows, K, Le], ``valid`` [rows] (NumPy).
    """
    if len(candidates) != len(mentions):
        raise ValueError(f"candidates: expected {len(mentions)} lists like mentions, got {len(candidates)}")
    total = len(mentions) if rows is None else rows
    examples, valid = packing.pad_examples(list(range(len(mentions))), total)
    groups = packing.group_rows(total, devices=devices, grad_accum=grad_accum)
    mention_stream = packing.pack(
        [[mentions[i]] for i in examples], row_length=row_length, length=mention_length, groups=groups,
        keys=[[i] for i in examples], pad_id=pad_id, squeeze=True,
    )  # fmt: skip
    keys = None
    if candidate_keys is not None:
        if len(candidate_keys) != len(mentions):
            raise ValueError(f"candidate_keys: expected {len(mentions)} lists like mentions, got {len(candidate_keys)}")
        keys = [list(candidate_keys[i]) for i in examples]
    else:  # filler rows share their original's candidates
        keys = [[(i, j) for j in range(len(candidates[i]))] for i in examples]
    entity_stream = packing.pack(
        [candidates[i] for i in examples], row_length=row_length, length=entity_length, groups=groups, keys=keys,
        pad_id=pad_id,
    )  # fmt: skip
    return {**mention_stream.as_batch("mention_"), **entity_stream.as_batch("entity_"), "valid": valid}
