"""The cross-encoder reranker of Zhang & Stratos (2021) and the pieces to train and evaluate it on candidate lists.

Each of a mention's K candidates is paired with the mention window, ``[CLS] mention [SEP] entity [SEP]`` (token
types 0/1), encoded jointly, and scored by a head on the encoder's states (:class:`~hnjax.models.poolers.
CrossEncoderHead`: BERT's pooled [CLS], as hard-nce-el ``reranker.py`` ``FullRanker``, or the masked mean of the
states). Training uses :func:`hnjax.losses.nce` over the K scores with the gold at column 0. Unlike the official code,
padding is masked in attention.

Optionally the score adds the first stage's: ``s = head(pair) + w · prior`` with ``w`` learned (``params
["prior_weight"]``) and the head's last layer starting at zero, so that the untrained reranker ranks exactly as the
retriever did and training learns a correction (a residual over the first stage; the paper's reranker is the
cross-encoder alone).

Host-side pieces (NumPy, no device work): :func:`with_gold_first` (the training list), :class:`PairBuilder` (token
arrays of the K pairs of a batch of mentions), :func:`rerank` (scores of candidate lists in batches),
:func:`prediction_rows` and :func:`accuracies` (normalized / unnormalized accuracy, micro and macro),
:func:`ceiling` (the best accuracy any reranker can reach when some candidates cannot be told from the gold).

Example (from your own JAX code; ``data`` a loaded :class:`hnjax.data.zeshel.Zeshel`)::

    cross, params = reranker.from_pretrained("all-MiniLM-L6-v2", jax.random.key(0), prior=True)
    lists, scores = zeshel.read_candidates("run/candidates/val.jsonl", data, "val", k=8)
    priors = [reranker.standardize(s) for s in scores]
    pairs = reranker.PairBuilder(tokenizer, data, length=64)
    scores = reranker.rerank(jax.jit(cross.batch_scores), params, pairs, data.mentions["val"], lists, priors)
    table = reranker.accuracies(reranker.prediction_rows(data.mentions["val"], lists, scores))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from hnjax import eval as ev
from hnjax import losses
from hnjax.data import batching, zeshel
from hnjax.models import bert, loading, poolers
from hnjax.train import state as state_lib

PAIR_KEYS = ("pair_ids", "pair_mask", "pair_types")


@dataclasses.dataclass(frozen=True)
class CrossEncoder:
    """Encoder + score head; all methods are pure functions of explicit parameters.

    Parameters are ``{"encoder": ..., "head": ...}`` (see :func:`hnjax.models.init_cross_encoder_head`), plus
    ``"prior_weight"`` (a float32 scalar) when the first stage's scores are added.
    """

    encoder: bert.BertModel
    head: poolers.CrossEncoderHead

    def scores(
        self,
        params: dict,
        ids: jax.Array,
        mask: jax.Array,
        types: jax.Array,
        *,
        prior: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Scores of K pairs per mention.

        Args:
          params: ``{"encoder", "head"}`` (+ ``"prior_weight"``).
          ids, mask, types: [B, K, L] token ids, bool mask and token types of the pairs.
          prior: [B, K] first-stage scores, required when ``params`` has ``"prior_weight"`` (ignored otherwise).
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
        s = s.reshape(b, k)
        if "prior_weight" in params:
            if prior is None:
                raise ValueError("these parameters add the first stage's scores: pass prior [B, K]")
            s = s + params["prior_weight"] * prior.astype(jnp.float32)
        return s

    def batch_scores(self, params: dict, batch: dict, key: jax.Array | None = None) -> jax.Array:
        """:meth:`scores` of a batch from :meth:`PairBuilder.build` (``pair_*`` [B, K, L], optional ``prior``)."""
        return self.scores(params, *(batch[n] for n in PAIR_KEYS), prior=batch.get("prior"), key=key)

    def loss(self, params: dict, batch: dict, key: jax.Array, axis_name: str | None = None):
        """NCE over the K candidates (gold at column 0) of each mention.

        Args:
          batch: ``pair_ids``, ``pair_mask``, ``pair_types`` [B, K, L]; optional ``prior`` and ``cand_mask`` [B, K]
            and ``valid`` [B].

        Returns:
          (mean loss over valid rows, {"loss_sum", "count"}).
        """
        del axis_name
        s = self.batch_scores(params, batch, key)
        per_row = losses.nce(s, batch.get("cand_mask"), reduction="none")
        valid = batch.get("valid")
        weight = jnp.ones(per_row.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
        total, count = jnp.sum(per_row * weight), jnp.sum(weight)
        return total / jnp.maximum(count, 1.0), {"loss_sum": total, "count": count}


def from_pretrained(
    checkpoint: str,
    key: jax.Array,
    *,
    pooling: str = "cls",
    dropout: float | None = None,
    encoder_dropout: float | None = None,
    prior: bool = False,
    prior_weight: float = 1.0,
    dtype=jnp.float32,
) -> tuple[CrossEncoder, dict]:
    """A cross-encoder on a checkpoint's encoder, with a fresh score head.

    Args:
      checkpoint: checkpoint directory or a name known to :func:`hnjax.models.resolve_checkpoint`.
      key: PRNG key of the head's parameters not taken from the checkpoint.
      pooling: ``"cls"`` (BERT's pooled [CLS]; the paper) or ``"mean"`` (masked mean, for mean-pooled sentence
        encoders such as all-MiniLM-L6-v2).
      dropout: dropout before the score layer (default: the encoder's hidden dropout).
      encoder_dropout: hidden and attention dropout inside the encoder (default: the checkpoint's).
      prior: add ``prior_weight · first-stage score`` and start the head's last layer at zero (the untrained
        reranker ranks as the first stage did).
      prior_weight: starting weight of the first-stage score (see :func:`standardize`).
      dtype: encoder compute dtype.

    Returns:
      ``(CrossEncoder, params)``.
    """
    encoder, encoder_params = loading.from_pretrained(checkpoint, dtype=dtype)
    if encoder_dropout is not None:
        config = dataclasses.replace(
            encoder.config, hidden_dropout_prob=encoder_dropout, attention_probs_dropout_prob=encoder_dropout
        )
        encoder = bert.BertModel(config, dtype=encoder.dtype, remat=encoder.remat)
    head, head_params = loading.init_cross_encoder_head(
        encoder.config, key, checkpoint=checkpoint, dropout_rate=dropout, pooling=pooling
    )
    return CrossEncoder(encoder, head), init_params(encoder_params, head_params, prior=prior, prior_weight=prior_weight)


def init_params(encoder_params: dict, head_params: dict, *, prior: bool = False, prior_weight: float = 1.0) -> dict:
    """``{"encoder", "head"}``; with ``prior``, also ``"prior_weight"`` and a zero score layer (kernel and bias), so
    that the scores start as ``prior_weight · prior``."""
    params = {"encoder": encoder_params, "head": dict(head_params)}
    if prior:
        score = params["head"]["score"]
        params["head"]["score"] = {name: jnp.zeros_like(value) for name, value in score.items()}
        params["prior_weight"] = jnp.asarray(prior_weight, jnp.float32)
    return params


def standardize(scores: Sequence[float]) -> list[float]:
    """First-stage scores of one list on a common scale: ``(s - mean) / std`` over the list (zeros when they are all
    equal). Raw retriever scores (dot products) have an arbitrary, model-dependent scale; standardized, a prior
    weight of 1 makes the top candidate a few times likelier than the median one, whatever the retriever.

    Example:
      >>> standardize([3.0, 1.0])
      [1.0, -1.0]
    """
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return []
    std = s.std()
    return [float(x) for x in ((s - s.mean()) / std if std > 0 else np.zeros_like(s))]


def make_optimizer(
    *, lr: float, head_lr: float | None, clip_norm: float | None = 1.0, **settings
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with one schedule for the encoder (peak ``lr``) and one for the rest (head, prior weight; peak
    ``head_lr``), after one global-norm clip of all gradients.

    A fresh head on a pretrained encoder is commonly trained faster than the encoder (e.g. discriminative
    fine-tuning, Howard & Ruder 2018, "Universal Language Model Fine-tuning for Text Classification"); ``head_lr =
    None`` uses ``lr`` everywhere.

    Args:
      lr, head_lr: peak learning rates of the encoder and of the rest.
      clip_norm: clip all gradients together to this global L2 norm; ``None`` or 0 disables clipping.
      settings: ``total_steps`` and the other keywords of :func:`hnjax.train.state.make_optimizer` (warmup, decay,
        end_factor, weight_decay, b1, b2, eps), shared by both groups.

    Returns:
      ``(optimizer, encoder schedule)``.
    """
    if head_lr is None:
        return state_lib.make_optimizer(lr=lr, clip_norm=clip_norm or None, **settings)
    encoder, schedule = state_lib.make_optimizer(lr=lr, clip_norm=None, **settings)
    head, _ = state_lib.make_optimizer(lr=head_lr, clip_norm=None, **settings)

    def labels(params):
        return {name: jax.tree.map(lambda _, n=name: "encoder" if n == "encoder" else "head", sub)
                for name, sub in params.items()}  # fmt: skip

    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    return optax.chain(*parts, optax.multi_transform({"encoder": encoder, "head": head}, labels)), schedule


# ----------------------------------------------------------------------------------------------------------------
# Host side: candidate lists, pairs, predictions, accuracy tables


def with_gold_first(candidates: Sequence[str], gold: str, k: int) -> list[str]:
    """Training list: the gold at slot 0, then the other candidates in order, at most ``k`` (paper 1 §3.2: a missed
    gold replaces the last candidate).

    Example:
      >>> with_gold_first(["a", "b", "c"], "g", 3)
      ['g', 'a', 'b']
    """
    return ([gold] + [c for c in candidates if c != gold])[:k]


def gold_first_scores(candidates: Sequence[str], scores: Sequence[float], gold: str, k: int) -> list[float]:
    """First-stage scores in the order of :func:`with_gold_first`. ``candidates``/``scores`` are the first stage's
    whole list (e.g. its top 64); a gold missing from it gets the list's lowest score, an upper bound of its own.

    Example:
      >>> gold_first_scores(["a", "b", "c"], [3.0, 2.0, 1.0], "g", 3)
      [1.0, 3.0, 2.0]
    """
    if len(candidates) != len(scores):
        raise ValueError(f"{len(candidates)} candidates but {len(scores)} scores")
    by_id = dict(zip(candidates, scores))
    gold_score = by_id.get(gold, min(scores) if len(scores) else 0.0)
    return [gold_score] + [by_id[c] for c in with_gold_first(candidates, gold, k)[1:]]


class PairBuilder:
    """Builds [b, K, L] cross-encoder inputs from token-id caches of mentions and entities.

    Args:
      tokenizer: a BERT tokenizer with ``[unused0..2]`` (see :mod:`hnjax.data.zeshel`).
      data: the loaded Zeshel folder.
      length: tokens per pair.
      mention_length: word pieces of the mention window in a pair (default ``(length - 3) // 2``; see
        :func:`hnjax.data.zeshel.pair_input_ids`).
    """

    def __init__(self, tokenizer, data: zeshel.Zeshel, length: int, *, mention_length: int | None = None):
        self.tokenizer, self.data, self.length, self.mention_length = tokenizer, data, length, mention_length
        self.entity: dict[tuple[str, str], list[int]] = {}
        self.mention: dict[str, list[int]] = {}
        # The shortest valid pair ([CLS] [SEP] [SEP]) fills masked candidate slots.
        self.filler = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id]

    def add_entities(self, keys) -> None:
        """Tokenizes the (world, document_id) pairs not cached yet."""
        new = sorted({key for key in keys if key not in self.entity})
        if new:
            docs = [self.data.document(w, d) for w, d in new]
            ids = zeshel.entity_input_ids(self.tokenizer, docs, max_length=self.length)
            self.entity.update(zip(new, ids))

    def add_mentions(self, mentions: Sequence[zeshel.Mention]) -> None:
        """Tokenizes the mention windows not cached yet (each as long as a pair, cut to the pair's share later)."""
        new = [m for m in dict.fromkeys(mentions) if m.mention_id not in self.mention]
        if new:
            ids = zeshel.mention_input_ids(self.tokenizer, self.data, new, max_length=self.length)
            self.mention.update((m.mention_id, row) for m, row in zip(new, ids))

    def build(
        self,
        mentions: Sequence[zeshel.Mention],
        lists: Sequence[Sequence[str]],
        k: int,
        priors: Sequence[Sequence[float]] | None = None,
    ) -> dict:
        """Pairs of each mention with its candidates (at most ``k``; missing slots masked by ``cand_mask``).

        Returns:
          ``pair_ids``, ``pair_types`` int32 and ``pair_mask`` bool [b, k, length]; ``cand_mask`` bool [b, k];
          ``prior`` float32 [b, k] (0 in masked slots) when ``priors`` is given.
        """
        self.add_mentions(mentions)
        self.add_entities((m.world, c) for m, cands in zip(mentions, lists) for c in cands)
        b, length = len(lists), self.length
        ids = np.zeros((b, k, length), np.int32)
        mask = np.zeros((b, k, length), bool)
        types = np.zeros((b, k, length), np.int32)
        cand_mask = np.zeros((b, k), bool)
        m_rows, e_rows, slots = [], [], []
        for i, (m, cands) in enumerate(zip(mentions, lists)):
            if len(cands) > k:
                raise ValueError(f"mention {m.mention_id!r}: {len(cands)} candidates for {k} slots")
            for j, c in enumerate(cands):
                m_rows.append(self.mention[m.mention_id])
                e_rows.append(self.entity[(m.world, c)])
                slots.append((i, j))
        rows, row_types = zeshel.pair_input_ids(
            self.tokenizer, m_rows, e_rows, max_length=length, mention_length=self.mention_length
        )
        for (i, j), r, t in zip(slots, rows, row_types):
            ids[i, j, : len(r)] = r
            types[i, j, : len(t)] = t
            mask[i, j, : len(r)] = True
            cand_mask[i, j] = True
        for i, j in zip(*np.nonzero(~cand_mask)):
            ids[i, j, :3] = self.filler
            types[i, j, 2] = 1
            mask[i, j, :3] = True
        batch = {"pair_ids": ids, "pair_mask": mask, "pair_types": types, "cand_mask": cand_mask}
        if priors is not None:
            prior = np.zeros((b, k), np.float32)
            for i, p in enumerate(priors):
                prior[i, : len(p)] = p
            batch["prior"] = prior
        return batch


def rerank(
    score_fn,
    params,
    pairs: PairBuilder,
    mentions: Sequence[zeshel.Mention],
    lists: Sequence[Sequence[str]],
    priors: Sequence[Sequence[float]] | None = None,
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "rerank",
) -> list[np.ndarray]:
    """Scores of every mention's candidate list, as they are (no gold inserted).

    Args:
      score_fn: ``score_fn(params, batch) -> [b, K]``, e.g. ``jax.jit(cross.batch_scores)``.
      params: the cross-encoder's parameters.
      pairs: the pair builder.
      mentions, lists, priors: one entry per mention (``priors`` when the parameters add the first stage's).
      batch_size: mentions per call; the last batch is padded to full size (one compilation).

    Returns:
      One float32 array per mention, as long as its list (empty for an empty list).
    """
    if not mentions:
        return []
    k = max(1, max(len(c) for c in lists))
    out = []
    batches = batching.padded_batches(len(mentions), batch_size)
    for take, n_real in tqdm.tqdm(batches, total=-(-len(mentions) // batch_size), desc=desc, disable=not progress,
                                  leave=False):  # fmt: skip
        batch = pairs.build([mentions[i] for i in take], [lists[i] for i in take], k,
                            None if priors is None else [priors[i] for i in take])  # fmt: skip
        s = np.asarray(score_fn(params, batch))
        for row, i in enumerate(take[:n_real]):
            out.append(s[row, : len(lists[i])].astype(np.float32))
    return out


def prediction_rows(
    mentions: Sequence[zeshel.Mention], lists: Sequence[Sequence[str]], scores: Sequence[np.ndarray]
) -> list[dict]:
    """``{"mention_id", "world", "gold", "prediction", "candidates", "scores"}`` per mention; the prediction is the
    top-scoring candidate (the first on ties), ``None`` for an empty list."""
    return [
        {"mention_id": m.mention_id, "world": m.world, "gold": m.label_document_id,
         "prediction": list(c)[int(np.argmax(s))] if len(c) else None, "candidates": list(c),
         "scores": [float(x) for x in s]}
        for m, c, s in zip(mentions, lists, scores)
    ]  # fmt: skip


def accuracies(rows: list[dict]) -> dict:
    """Micro (pooled) and macro (per-world mean) normalized and unnormalized accuracy of prediction rows.

    Normalized accuracy counts the mentions whose gold is among the candidates; unnormalized accuracy all mentions
    (a gold the first stage missed is wrong). A world without any retrieved gold is left out of the macro
    normalized average.
    """

    def pair(sub: list[dict]) -> tuple[float, float, int]:
        width = max(1, max(len(r["candidates"]) for r in sub))
        cands = np.array([r["candidates"] + [""] * (width - len(r["candidates"])) for r in sub], dtype=object)
        pred = np.array([r["prediction"] for r in sub], dtype=object)
        gold = np.array([r["gold"] for r in sub], dtype=object)
        covered = int(sum(r["gold"] in r["candidates"] for r in sub))
        return ev.normalized_accuracy(pred, gold, cands), ev.unnormalized_accuracy(pred, gold), covered

    norm, unnorm, covered = pair(rows)
    per_world = {}
    for world in dict.fromkeys(r["world"] for r in rows):
        sub = [r for r in rows if r["world"] == world]
        n, u, c = pair(sub)
        per_world[world] = {"normalized_accuracy": n, "unnormalized_accuracy": u, "mentions": len(sub),
                            "mentions_with_gold": c}  # fmt: skip
    worlds = list(per_world.values())
    normalized = [w["normalized_accuracy"] for w in worlds if w["mentions_with_gold"]]
    return {
        "normalized_accuracy": norm,
        "unnormalized_accuracy": unnorm,
        "macro_normalized_accuracy": float(np.mean(normalized)) if normalized else float("nan"),
        "macro_unnormalized_accuracy": float(np.mean([w["unnormalized_accuracy"] for w in worlds])),
        "mentions": len(rows),
        "mentions_with_gold": covered,
        "per_world": per_world,
    }


def first_stage_accuracy(golds: Sequence[str], lists: Sequence[Sequence[str]]) -> float:
    """Share of mentions whose first candidate is the gold (the first stage's R@1 over these lists)."""
    if not golds:
        raise ValueError("no mentions")
    return float(np.mean([bool(c) and c[0] == g for g, c in zip(golds, lists)]))


def ceiling(golds: Sequence[str], lists: Sequence[Sequence[str]], matching: Sequence[Sequence[str]]) -> float:
    """The best expected unnormalized accuracy of any reranker over these lists.

    A reranker can tell the gold apart from every candidate except those in ``matching`` (the documents that the
    mention's own information cannot tell from the gold, gold included); among the ones in its list it can only
    guess. So a mention counts ``1 / |list ∩ matching|`` when the gold is in its list and 0 otherwise.

    Args:
      golds: the gold document id per mention.
      lists: the candidate list per mention.
      matching: per mention, the documents indistinguishable from the gold (must contain the gold).

    Returns:
      The mean over mentions, in [0, 1].

    Example:
      >>> ceiling(["a", "b"], [["a", "x", "y"], ["c"]], [["a", "x"], ["b"]])
      0.25
    """
    if not (len(golds) == len(lists) == len(matching)) or not golds:
        raise ValueError(f"need as many golds, lists and matching sets (> 0): {len(golds)}, {len(lists)}, "
                         f"{len(matching)}")  # fmt: skip
    total = 0.0
    for i, (g, c, same) in enumerate(zip(golds, lists, matching)):
        if g not in same:
            raise ValueError(f"mention {i}: the matching set {list(same)[:5]} does not contain the gold {g!r}")
        if g in c:
            total += 1.0 / len(set(c) & set(same))
    return total / len(golds)
