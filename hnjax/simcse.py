"""Unsupervised SimCSE with InfoNCE or Focal-InfoNCE: the model and its training loss.

Each sentence of a batch is encoded twice with independent dropout keys; the two views' pooled vectors are the
positives of each other and the other sentences' second views are the negatives (Gao et al. 2021). With
``pooling="cls"`` the [CLS] state passes through an MLP head (Linear + tanh) during training only, SimCSE's
unsupervised setting (``--pooler_type cls --mlp_only_train``), which Focal-InfoNCE (Hou & Li 2023) keeps; with
``pooling="mean"`` the masked mean of the token states is used directly. The loss is
:func:`hnjax.losses.infonce` or :func:`hnjax.losses.focal_infonce` (``loss_impl="dense"``), or their blockwise
versions :func:`hnjax.blockwise.blockwise_infonce` / :func:`~hnjax.blockwise.blockwise_focal_infonce`
(``loss_impl="blockwise"``: the same loss and gradients without a B×B logit matrix); inside ``pmap``/``shard_map`` the
second views are all-gathered so every sentence of the global batch is a negative.

Huge batches: with ``grad_cache_chunk=C`` the loss is :func:`hnjax.gradcache.cached_loss`: both views of every chunk
of C sentences (per device) are encoded without keeping activations, the contrastive loss and its gradient with
respect to the embeddings are computed on the whole batch, and each chunk is encoded again (same dropout keys) to pull
that gradient back to the parameters. Encoder activations of one chunk are alive at a time, so with the blockwise
loss a training step's memory grows linearly in B. Chunk c's views use ``fold_in(fold_in(key, c), v)``; without
chunks the views use ``fold_in(key, v)``.

Parameters are ``{"encoder": ..., "mlp": ...}`` (``"mlp"`` only with ``pooling="cls"``). :func:`compare_runs`
summarises finished runs over seeds.

Two batch layouts, the same loss: padded (``input_ids``/``attention_mask`` [B, L], each view one encoder pass) or
packed (:func:`pack_batch`: both views of every sentence packed into rows of ``row_length`` tokens and encoded in one
pass, :mod:`hnjax.data.packing`), which computes the real tokens and little else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import blockwise, gradcache, losses
from hnjax import eval as ev
from hnjax.data import packing
from hnjax.models import bert, packed, poolers

LOSSES = ("infonce", "focal")
POOLINGS = ("cls", "mean")
LOSS_IMPLS = ("dense", "blockwise")


@dataclasses.dataclass(frozen=True)
class SimCSE:
    """A SimCSE sentence encoder and its contrastive loss; pure methods of explicit parameters.

    Attributes:
      encoder: the BERT-family encoder module.
      pooling: "cls" (+ MLP head in training) or "mean".
      loss: "infonce" or "focal".
      temperature: τ (0.05 in both papers).
      margin: m of Focal-InfoNCE (0.3).
      loss_impl: "dense" (the [B, B·devices] logits held at once) or "blockwise" (tiles of ``block_size``).
      block_size: rows and columns per tile of the blockwise loss.
      grad_cache_chunk: C, sentences per encoder chunk with GradCache (``None``: plain backpropagation). The rows of
        each device's (micro-)batch must divide by C.
      row_length: tokens per row of packed batches (:func:`pack_batch` must use the same).
    """

    encoder: bert.BertModel
    pooling: str = "cls"
    loss: str = "focal"
    temperature: float = 0.05
    margin: float = 0.3
    loss_impl: str = "dense"
    block_size: int = 1024
    grad_cache_chunk: int | None = None
    row_length: int = 128

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {self.pooling!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES}, got {self.loss!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl: expected one of {LOSS_IMPLS}, got {self.loss_impl!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size: expected an int >= 1, got {self.block_size!r}")
        if self.grad_cache_chunk is not None and (
            not isinstance(self.grad_cache_chunk, int) or self.grad_cache_chunk < 1
        ):
            raise ValueError(f"grad_cache_chunk: expected None or an int >= 1, got {self.grad_cache_chunk!r}")
        if not isinstance(self.row_length, int) or self.row_length < 1:
            raise ValueError(f"row_length: expected a positive integer, got {self.row_length!r}")

    @property
    def head(self) -> poolers.MLPHead:
        return poolers.MLPHead()

    def init(self, encoder_params: dict, key: jax.Array) -> dict:
        """Parameters: the (pre-trained) encoder's, plus a new MLP head N(0, 0.02²) for ``pooling="cls"``."""
        params = {"encoder": encoder_params}
        if self.pooling == "cls":
            width = self.encoder.config.hidden_size
            params["mlp"] = self.head.init(key, jnp.zeros((1, width), jnp.float32))["params"]
        return params

    def embed(self, params: dict, ids: jax.Array, mask: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Sentence vectors [B, D]; with a dropout ``key`` (training) the MLP head is applied for "cls" pooling."""
        training = key is not None
        hidden = self.encoder.apply(
            {"params": params["encoder"]}, ids, mask, deterministic=not training,
            rngs={"dropout": key} if training else None,
        )  # [B, L, D]  # fmt: skip
        if self.pooling == "mean":
            return poolers.mean(hidden, mask)
        pooled = poolers.cls(hidden, mask)  # [B, D]
        return self.head.apply({"params": params["mlp"]}, pooled) if training else pooled

    def views(self, params: dict, ids: jax.Array, mask: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The two training views ``(z1, z2)`` [B, D]: dropout keys ``fold_in(key, 0)`` and ``fold_in(key, 1)``."""
        return (self.embed(params, ids, mask, key=jax.random.fold_in(key, 0)),
                self.embed(params, ids, mask, key=jax.random.fold_in(key, 1)))  # fmt: skip

    def contrastive_loss(self, z1: jax.Array, z2: jax.Array, *, axis_name: str | None = None,
                         valid: jax.Array | None = None) -> jax.Array:  # fmt: skip
        """The in-batch loss of two views (``loss``, ``loss_impl``): mean over the valid rows of the global batch."""
        if self.loss_impl == "blockwise":
            tiles = dict(valid=valid, block_size=self.block_size)
            if self.loss == "focal":
                return blockwise.blockwise_focal_infonce(z1, z2, self.temperature, self.margin, axis_name, **tiles)
            return blockwise.blockwise_infonce(z1, z2, self.temperature, axis_name=axis_name, **tiles)
        if self.loss == "focal":
            return losses.focal_infonce(z1, z2, self.temperature, self.margin, axis_name, valid=valid)
        return losses.infonce(z1, z2, self.temperature, axis_name=axis_name, valid=valid)

    def embed_packed(self, params: dict, stream: dict, *, key: jax.Array | None = None) -> jax.Array:
        """Sentence vectors of a packed stream (:mod:`hnjax.models.packed`): slots [B, (K,) L] → [B, (K,) D].

        Equal to :meth:`embed` of the same sentences padded (no dropout); with a dropout ``key`` every packed copy of
        a sentence gets its own mask, and the MLP head is applied for "cls" pooling.
        """
        training = key is not None
        flat = packed.encode(
            self.encoder, params["encoder"], stream, row_length=self.row_length, deterministic=not training,
            rngs={"dropout": key} if training else None,
        )  # [T, D]  # fmt: skip
        slots, mask = stream["slots"], stream["mask"]
        if self.pooling == "mean":
            hidden = packed.gather(flat, slots, mask)  # [..., L, D]
            lead = slots.shape[:-1]
            flat_hidden = hidden.reshape((-1,) + hidden.shape[-2:])
            return poolers.mean(flat_hidden, mask.reshape(flat_hidden.shape[:2])).reshape(lead + (-1,))
        pooled = packed.first(flat, slots)  # [..., D]
        return self.head.apply({"params": params["mlp"]}, pooled) if training else pooled

    def loss_fn(self, params: dict, batch: dict, key: jax.Array, axis_name: str | None = None):
        """The training loss of one batch of sentences.

        Args:
          params: ``{"encoder", "mlp"}``.
          batch: padded, ``input_ids`` and ``attention_mask`` [B, L]; or packed (:func:`pack_batch`), the two views
            of every sentence in one stream with ``slots`` [B, 2, L]; optional ``valid`` [B] bool (rows added to
            fill a batch, which are neither anchors nor negatives).
          key: the step's key; padded: the two views use ``fold_in(key, 0)`` and ``fold_in(key, 1)`` (with GradCache,
            chunk c's views use ``fold_in(fold_in(key, c), 0)`` and ``fold_in(fold_in(key, c), 1)``); packed: one
            pass with ``fold_in(key, 0)`` (each copy of a sentence gets its own dropout mask).
          axis_name: mapped axis to gather negatives over (data parallelism), or None.

        Returns:
          (loss, {}) — the mean over the valid rows of the global batch.

        Raises:
          ValueError: with ``grad_cache_chunk``, the batch rows (per device) do not divide by it.
        """
        valid = batch.get("valid")
        if packed.is_packed(batch):
            if self.grad_cache_chunk is not None:
                raise ValueError("grad_cache_chunk: GradCache chunks padded batches (input_ids, attention_mask), got a "
                                 "packed batch")  # fmt: skip
            views = self.embed_packed(params, packed.stream(batch), key=jax.random.fold_in(key, 0))  # [B, 2, D]
            if views.ndim != 3 or views.shape[1] != 2:
                raise ValueError(f"batch: expected a packed stream of 2 views per sentence, got vectors {views.shape}")
            return self.contrastive_loss(views[:, 0], views[:, 1], axis_name=axis_name, valid=valid), {}
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.grad_cache_chunk is None:
            z1, z2 = self.views(params, ids, mask, key)  # [B, D] each
            return self.contrastive_loss(z1, z2, axis_name=axis_name, valid=valid), {}
        if ids.shape[0] % self.grad_cache_chunk:
            raise ValueError(
                f"grad_cache_chunk: the {ids.shape[0]} rows of a (per-device, per-micro-batch) batch do not divide "
                f"by {self.grad_cache_chunk}"
            )
        encode = lambda p, chunk, k: self.views(p, chunk["input_ids"], chunk["attention_mask"], k)  # noqa: E731
        contrastive = lambda e: self.contrastive_loss(e[0], e[1], axis_name=axis_name, valid=valid)  # noqa: E731
        value = gradcache.cached_loss(encode, contrastive, params, {"input_ids": ids, "attention_mask": mask},
                                      chunk_size=self.grad_cache_chunk, key=key)  # fmt: skip
        return value, {}


def pack_batch(
    sentences: Sequence[Sequence[int]],
    *,
    row_length: int,
    length: int,
    rows: int | None = None,
    devices: int = 1,
    grad_accum: int = 1,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """A packed SimCSE batch: both views of every sentence in one stream, filled up to ``rows`` examples.

    Args:
      sentences: B token id sequences (special tokens included), each 1 to ``length`` tokens.
      row_length: tokens per packed row (the model's ``row_length``).
      length: L of the per-view slot maps (e.g. the tokenizer's bucket of the longest sentence).
      rows: examples in the batch (≥ B; filler rows repeat the first sentence, ``valid = False``); default B.
      devices, grad_accum: the training step's layout (:func:`hnjax.data.packing.group_rows`).
      pad_id: padding token id.

    Returns:
      ``tokens``, ``types``, ``positions``, ``segments`` [rows, C], ``slots``/``mask`` [rows, 2, L] and ``valid``
      [rows] (NumPy).
    """
    examples, valid = packing.pad_examples(list(sentences), len(sentences) if rows is None else rows)
    groups = packing.group_rows(len(examples), devices=devices, grad_accum=grad_accum)
    order = list(range(len(sentences))) + [0] * (len(examples) - len(sentences))
    out = packing.pack(
        [[s, s] for s in examples], row_length=row_length, length=length, groups=groups, pad_id=pad_id,
        keys=[[(i, 0), (i, 1)] for i in order],
    ).as_batch()  # fmt: skip
    out["valid"] = valid
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Comparing finished runs (the results.json of experiments/simcse_focal.py)
# ---------------------------------------------------------------------------------------------------------------------

RUN_FIELDS = ("loss", "seed", "best_dev_spearman", "dev_curve", "final")


def compare_runs(runs: Sequence[dict]) -> dict[str, dict]:
    """Per loss, over the runs' seeds: the best STS-B dev Spearman of each run, its mean ± std, the final sets' means.

    Args:
      runs: ``results.json`` contents of ``experiments/simcse_focal.py`` runs (fields ``RUN_FIELDS`` and
        ``steps``), in any order.

    Returns:
      ``{loss: {"seeds", "steps", "best_dev_spearman": [per seed], "mean", "std" (sample std, 0 for one seed),
      "start_dev_spearman": [step-0 value per run that has one], "final_mean": {set: mean Spearman}}}``, losses in
      sorted order, runs of a loss in seed order.
    """
    out = {}
    for loss in sorted({r["loss"] for r in runs}):
        rs = sorted((r for r in runs if r["loss"] == loss), key=lambda r: r["seed"])
        best = [r["best_dev_spearman"] for r in rs]
        finals: dict[str, list[float]] = {}
        for r in rs:
            for name, v in r["final"].items():
                if isinstance(v, dict) and "spearman" in v:
                    finals.setdefault(name, []).append(v["spearman"])
        stats = ev.mean_std(best)
        out[loss] = {
            "seeds": [r["seed"] for r in rs],
            "steps": sorted({r["steps"] for r in rs}),
            "best_dev_spearman": best,
            "mean": stats["mean"],
            "std": stats["std"],
            "start_dev_spearman": [r["dev_curve"][0]["stsb_dev_spearman"] for r in rs if r["dev_curve"]],
            "final_mean": {k: ev.mean_std(v)["mean"] for k, v in finals.items()},
        }
    return out
