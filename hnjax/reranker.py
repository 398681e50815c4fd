"""The cross-encoder reranker of Zhang & Stratos (2021): BERT over [mention ; entity] pairs, softmax CE over K.

Each of a mention's K candidates is paired with the mention window, ``[CLS] mention [SEP] entity [SEP]``
(token types 0/1), encoded jointly, and scored by a linear layer on BERT's pooled [CLS] state (hard-nce-el
``reranker.py`` ``FullRanker``). Training uses :func:`hnjax.losses.nce` over the K scores with the gold at column 0.
Unlike the official code, padding is masked in attention.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from hnjax import losses
from hnjax.models import bert, poolers


@dataclasses.dataclass(frozen=True)
class CrossEncoder:
    """Encoder + score head; all methods are pure functions of explicit parameters.

    Parameters are ``{"encoder": ..., "head": ...}`` (see :func:`hnjax.models.init_cross_encoder_head`).
    """

    encoder: bert.BertModel
    head: poolers.CrossEncoderHead

    def scores(self, params: dict, ids: jax.Array, mask: jax.Array, types: jax.Array, *, key=None) -> jax.Array:
        """Scores of K pairs per mention.

        Args:
          params: ``{"encoder", "head"}``.
          ids, mask, types: [B, K, L] token ids, bool mask and token types of the pairs.
          key: dropout key (training) or None.

        Returns:
          [B, K] float32.
        """
        b, k, length = ids.shape
        deterministic = key is None
        rngs = None if deterministic else {"dropout": key}
        flat = lambda x: x.reshape(b * k, length)  # noqa: E731
        hidden = self.encoder.apply(
            {"params": params["encoder"]}, flat(ids), flat(mask), flat(types), deterministic=deterministic, rngs=rngs
        )  # [B·K, L, D]
        head_rngs = None if deterministic else {"dropout": jax.random.fold_in(key, 1)}
        s = self.head.apply({"params": params["head"]}, hidden, flat(mask), deterministic=deterministic, rngs=head_rngs)
        return s.reshape(b, k)

    def loss(self, params: dict, batch: dict, key: jax.Array, axis_name: str | None = None):
        """NCE over the K candidates (gold at column 0) of each mention.

        Args:
          batch: ``pair_ids``, ``pair_mask``, ``pair_types`` [B, K, L]; optional ``cand_mask`` [B, K] and
            ``valid`` [B].

        Returns:
          (mean loss over valid rows, {"loss_sum", "count"}).
        """
        del axis_name
        s = self.scores(params, batch["pair_ids"], batch["pair_mask"], batch["pair_types"], key=key)
        per_row = losses.nce(s, batch.get("cand_mask"), reduction="none")
        valid = batch.get("valid")
        weight = jnp.ones(per_row.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
        total, count = jnp.sum(per_row * weight), jnp.sum(weight)
        return total / jnp.maximum(count, 1.0), {"loss_sum": total, "count": count}
