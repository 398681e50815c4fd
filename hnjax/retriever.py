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
towers are shared). Training batches carry each distinct candidate entity once: ``entity_ids [U, Le]`` plus
``cand_index [B, K]`` pointing into them, with the gold in column 0, so an entity that is a candidate of several
mentions is encoded once per step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import losses, scorers
from hnjax.data import batching
from hnjax.models import bert, poolers

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
    """

    scorer: str = "som"
    num_entity_vectors: int = 8
    num_codes: int = 16
    shared_encoder: bool = False
    block_size: int = 256

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer: expected one of {SCORERS}, got {self.scorer!r}")
        for name in ("num_entity_vectors", "num_codes", "block_size"):
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
        scorer = self.config.scorer
        if scorer == "som":
            return hidden, mask
        if scorer == "poly":
            poly = poolers.PolyCodes(self.config.num_codes)
            codes = poly.apply({"params": {"codes": params["codes"]}}, hidden, mask)  # [B, m, D]
            return codes, jnp.ones(codes.shape[:2], bool)
        return hidden[:, :1], mask[:, :1]  # dual, multi: [CLS]

    def encode_entities(self, params: dict, ids: jax.Array, mask: jax.Array, *, key: jax.Array | None = None):
        """Entity vectors: (vectors [N, n, D] float32, mask [N, n] bool), ids/mask [N, Le]."""
        tower = params["mention"] if self.config.shared_encoder else params["entity"]
        hidden = self._hidden(tower, ids, mask, key)  # [N, Le, D]
        mask = mask.astype(bool)
        scorer = self.config.scorer
        if scorer == "som":
            return hidden, mask
        if scorer == "multi":
            n = self.config.num_entity_vectors
            if n > hidden.shape[1]:
                raise ValueError(f"num_entity_vectors={n} exceeds the entity length {hidden.shape[1]}")
            return hidden[:, :n], mask[:, :n]
        return hidden[:, :1], mask[:, :1]  # dual, poly: [CLS]

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

    def loss(self, params: dict, batch: dict, key: jax.Array, axis_name: str | None = None):
        """NCE loss of one batch of mentions against their candidates (gold at column 0).

        Args:
          params: retriever parameters.
          batch: ``mention_ids``/``mention_mask`` [B, Lm]; the candidates either per row, ``cand_ids`` /
            ``cand_token_mask`` [B, K, Le] (the layout for data parallelism: every array has B rows), or
            deduplicated, ``entity_ids``/``entity_mask`` [U, Le] (distinct candidate entities) with ``cand_index``
            [B, K] int into U (one device); optional ``cand_mask`` [B, K] bool,
            ``log_q`` [B, K] (log-q corrected NCE), ``valid`` [B] bool (padding rows of a batch that does not
            divide the device count).
          key: dropout key.
          axis_name: unused (candidates are per mention, not in-batch); accepted for the trainer's interface.

        Returns:
          (mean loss over valid rows, {"loss_sum": Σ valid losses, "count": number of valid rows}).
        """
        del axis_name
        k_mention, k_entity = jax.random.split(key)
        q, qm = self.encode_mentions(params, batch["mention_ids"], batch["mention_mask"], key=k_mention)
        if "cand_ids" in batch:  # per-row layout [B, K, Le]: shards with the mentions over devices
            b, k, length = batch["cand_ids"].shape
            d, dm = self.encode_entities(
                params, batch["cand_ids"].reshape(b * k, length), batch["cand_token_mask"].reshape(b * k, length),
                key=k_entity,
            )  # fmt: skip
            d, dm = d.reshape(b, k, *d.shape[1:]), dm.reshape(b, k, -1)  # [B, K, n, D], [B, K, n]
        else:  # deduplicated layout: each distinct entity once, [U, Le] + cand_index [B, K]
            d, dm = self.encode_entities(params, batch["entity_ids"], batch["entity_mask"], key=k_entity)
            d, dm = d[batch["cand_index"]], dm[batch["cand_index"]]  # [B, K, n, D], [B, K, n]
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
