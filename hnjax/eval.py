"""Evaluation metrics: STS correlation, embedding geometry, retrieval and reranking, paired significance tests.

Everything here is host-side NumPy in float64: metrics are computed once per evaluation on arrays that already left
the device, and float64 keeps rank statistics and log-mean-exp exact enough to compare with SciPy and the reference
implementations to 1e-12.

Conventions:
  * `spearman` returns the plain correlation in [-1, 1]; `sts_spearman` returns it ×100, the unit every STS table
    (SentEval, SimCSE, focal-InfoNCE) reports.
  * Retrieval and accuracy metrics are fractions in [0, 1].
  * Shapes: P pairs, N vectors, D width, Q queries, K ranked candidates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hnjax import scorers

logger = logging.getLogger(__name__)

# Names of the seven SentEval STS tasks averaged in SimCSE Table 5 (STS-B and SICK-R on their test splits).
SEVEN_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark-test", "SICK-R")


def _as_1d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected 1-D [P], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


def average_ranks(x: Any) -> np.ndarray:
    """Ranks 1..P of a vector, tied values sharing the mean of their ranks (as `scipy.stats.rankdata`).

    Args:
      x: values, shape [P].

    Returns:
      Ranks, float64 [P].

    Example:
      >>> average_ranks([10.0, 20.0, 10.0]).tolist()
      [1.5, 3.0, 1.5]
    """
    x = _as_1d(x, "x")
    n = x.shape[0]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts_group = np.concatenate([[True], xs[1:] != xs[:-1]])  # [P] first element of each tie group
    group = np.cumsum(starts_group) - 1  # [P] tie-group index in sorted order
    first = np.flatnonzero(starts_group)  # [G] 0-based start of each group
    last = np.concatenate([first[1:], [n]]) - 1  # [G] 0-based end of each group (inclusive)
    mean_rank = (first + last) / 2.0 + 1.0  # [G]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation ρ(x, y) in [-1, 1], ties given average ranks.

    ρ = Pearson(rank(x), rank(y)) = Σ (rx − r̄x)(ry − r̄y) / sqrt(Σ (rx − r̄x)² · Σ (ry − r̄y)²).

    Args:
      x: first variable, shape [P], finite.
      y: second variable, shape [P], finite.

    Returns:
      ρ as a Python float; NaN when either input is constant (the correlation is undefined), as SciPy returns.

    Raises:
      ValueError: shapes differ, are not 1-D, P < 2, or values are not finite.

    Example:
      >>> spearman([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
      0.5

    References:
      Spearman, "The proof and measurement of association between two things", 1904.
    """
    x = _as_1d(x, "x")
    y = _as_1d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y: expected the same shape, got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"spearman needs at least 2 pairs, got {x.shape[0]}")
    rx = average_ranks(x)
    ry = average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(rx, ry) / denom, -1.0, 1.0))


def sts_spearman(predicted: Any, gold: Any) -> float:
    """Spearman correlation ×100 between predicted similarities and gold scores, the unit STS tables report.

    Args:
      predicted: model similarities (e.g. cosine), shape [P].
      gold: human scores (0–5 for STS, 1–5 for SICK-R), shape [P].

    Returns:
      100·ρ(predicted, gold).

    Example:
      >>> sts_spearman([0.1, 0.5, 0.9], [1.0, 2.0, 4.5])
      100.0

    References:
      Conneau & Kiela, "SentEval", LREC 2018 (`senteval/sts.py`); Gao et al., "SimCSE", EMNLP 2021, App. B.
    """
    return 100.0 * spearman(predicted, gold)


def _as_2d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected 2-D [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


def cosine_similarity(a: Any, b: Any, *, eps: float = 1e-8) -> np.ndarray:
    """Row-wise cosine similarity cos(a_i, b_i) = ⟨a_i, b_i⟩ / (max(‖a_i‖, eps) · max(‖b_i‖, eps)).

    Args:
      a: first vectors, shape [P, D].
      b: second vectors, shape [P, D].
      eps: floor of each norm, so a zero vector has similarity 0 with everything (as `torch.cosine_similarity`).

    Returns:
      float64 [P].

    Example:
      >>> cosine_similarity([[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [2.0, 2.0]]).round(6).tolist()
      [0.0, 1.0]
    """
    a = _as_2d(a, "a")
    b = _as_2d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b: expected the same shape [P, D], got {a.shape} and {b.shape}")
    return np.einsum("pd,pd->p", scorers.l2_normalize(a, eps=eps), scorers.l2_normalize(b, eps=eps))


def alignment(x: Any, y: Any, *, alpha: float = 2.0, normalize: bool = True) -> float:
    """Alignment of positive pairs: ℓ_align = E_(x,x⁺) ‖f(x) − f(x⁺)‖₂^α (lower is better).

    Args:
      x: embeddings of the first members of positive pairs, shape [P, D].
      y: embeddings of their positives, shape [P, D].
      alpha: exponent α > 0 (2 in Wang & Isola and SimCSE).
      normalize: L2-normalise rows first (the definition assumes unit vectors; pass False if they already are).

    Returns:
      The mean over the P pairs, in [0, 2^α] for unit vectors.

    Example:
      >>> round(alignment([[1.0, 0.0]], [[0.0, 1.0]]), 6)
      2.0

    References:
      Wang & Isola, "Understanding contrastive representation learning through alignment and uniformity on the
      hypersphere", ICML 2020 (`align_loss`); Gao et al., "SimCSE", EMNLP 2021, Eq. 2 (pairs with gold score > 4).
    """
    x = _as_2d(x, "x")
    y = _as_2d(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y: expected the same shape [P, D], got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("alignment needs at least one pair, got P = 0")
    if not alpha > 0:
        raise ValueError(f"alpha: expected > 0, got {alpha}")
    if normalize:
        x, y = scorers.l2_normalize(x), scorers.l2_normalize(y)
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x: Any, *, t: float = 2.0, normalize: bool = True, block_size: int = 1024) -> float:
    """Uniformity: ℓ_uniform = log E_{i<j} exp(−t ‖f(x_i) − f(x_j)‖₂²) over all distinct pairs (lower is better).

    Computed block by block as a log-sum-exp, so memory is O(block_size²) and N may be large.

    Args:
      x: embeddings, shape [N, D], N ≥ 2.
      t: scale t > 0 (2 in Wang & Isola and SimCSE).
      normalize: L2-normalise rows first.
      block_size: rows per block of the pairwise-distance computation.

    Returns:
      The log of the mean Gaussian potential over the N(N−1)/2 pairs, in [−4t, 0] for unit vectors.

    Example:
      >>> round(uniformity([[1.0, 0.0], [-1.0, 0.0]]), 6)  # one pair at squared distance 4
      -8.0

    References:
      Wang & Isola, ICML 2020 (`uniform_loss`: `torch.pdist(x).pow(2).mul(-t).exp().mean().log()`);
      Gao et al., "SimCSE", EMNLP 2021, Eq. 3.
    """
    x = _as_2d(x, "x")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 vectors, got N = {n}")
    if not t > 0:
        raise ValueError(f"t: expected > 0, got {t}")
    if block_size < 1:
        raise ValueError(f"block_size: expected >= 1, got {block_size}")
    if normalize:
        x = scorers.l2_normalize(x)
    sq = np.einsum("nd,nd->n", x, x)  # [N]
    # Running log-sum-exp over the strict upper triangle, one row block at a time.
    total = -np.inf
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        cols = slice(start + 1, n)
        if start + 1 >= n:
            break
        d2 = sq[start:stop, None] + sq[None, cols] - 2.0 * x[start:stop] @ x[cols].T  # [b, N-start-1]
        d2 = np.maximum(d2, 0.0)
        # Keep j > i only: row r of the block is i = start + r, column c is j = start + 1 + c.
        upper = np.arange(stop - start)[:, None] <= np.arange(n - start - 1)[None, :]
        v = -t * d2[upper]
        if v.size:
            m = float(np.max(v))
            block_lse = m + math.log(float(np.sum(np.exp(v - m))))
            total = np.logaddexp(total, block_lse)
    n_pairs = n * (n - 1) / 2.0
    return float(total - math.log(n_pairs))


def _gold_sets(gold_ids: Any, q: int) -> list[frozenset]:
    """One frozenset of gold ids per query, from a [Q] array or a sequence of ids or iterables of ids."""

    def plain(v: Any) -> Any:
        return v.item() if isinstance(v, np.generic) else v

    if isinstance(gold_ids, np.ndarray):
        if gold_ids.ndim != 1:
            raise ValueError(
                f"gold_ids: expected [Q] or a sequence of gold sets, got an array of shape {gold_ids.shape}"
            )
        sets = [frozenset([g]) for g in gold_ids.tolist()]
    else:
        sets = []
        for i, g in enumerate(gold_ids):
            if isinstance(g, str | bytes) or not isinstance(g, Iterable):
                sets.append(frozenset([plain(g)]))
                continue
            gold = frozenset(plain(v) for v in g)
            if not gold:
                raise ValueError(f"gold_ids[{i}] is an empty gold set; every query needs at least one gold id")
            sets.append(gold)
    if len(sets) != q:
        raise ValueError(f"gold_ids: expected one entry per query (Q = {q}), got {len(sets)}")
    return sets


def recall_at_k(ranked_ids: Any, gold_ids: Any, ks: Sequence[int] = (1, 10, 64), *, multi_gold: str = "fraction"):
    """Recall@k of ranked candidate lists: the share of gold ids found among the first k candidates.

    For one gold id per query, recall@k = (1/Q) Σ_q 1[gold_q ∈ top_k(q)] (the "gold in the top 64" recall of
    Zeshel retrievers). For gold sets G_q: with multi_gold="fraction", (1/Q) Σ_q |G_q ∩ top_k(q)| / |G_q| (IR
    recall); with multi_gold="any", (1/Q) Σ_q 1[G_q ∩ top_k(q) ≠ ∅] (hit rate).

    Args:
      ranked_ids: candidate ids best first, shape [Q, K]; padding ids that are never gold (e.g. −1) are allowed.
      gold_ids: one gold id per query, shape [Q], or a sequence of Q non-empty iterables of gold ids.
      ks: cut-offs, each 1 ≤ k ≤ K.
      multi_gold: "fraction" or "any", how a query with several gold ids counts.

    Returns:
      dict {"recall@k": float in [0, 1]} for every k in ks.

    Example:
      >>> recall_at_k([[3, 1, 2], [5, 6, 7]], [1, 9], ks=(1, 2))
      {'recall@1': 0.0, 'recall@2': 0.5}

    References:
      Logeswaran et al., "Zero-shot entity linking by reading entity descriptions", ACL 2019; Wu et al.,
      "Scalable zero-shot entity linking with dense entity retrieval", EMNLP 2020 (BLINK recall@64).
    """
    ranked = np.asarray(ranked_ids)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_ids: expected 2-D [Q, K], got shape {ranked.shape}")
    q, k_max = ranked.shape
    if q == 0:
        raise ValueError("ranked_ids must hold at least one query, got Q = 0")
    if multi_gold not in ("fraction", "any"):
        raise ValueError(f"multi_gold: expected 'fraction' or 'any', got {multi_gold!r}")
    ks = [int(k) for k in ks]
    for k in ks:
        if not 1 <= k <= k_max:
            raise ValueError(f"ks: expected every k in [1, K = {k_max}], got {k}")
    sets = _gold_sets(gold_ids, q)
    rows = ranked.tolist()
    out = {}
    for k in ks:
        per_query = np.empty(q, dtype=np.float64)
        for i, (row, gold) in enumerate(zip(rows, sets)):
            found = len(gold.intersection(row[:k]))
            per_query[i] = found / len(gold) if multi_gold == "fraction" else float(found > 0)
        out[f"recall@{k}"] = float(per_query.mean())
    return out


def _check_ids(predicted_ids: Any, gold_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(predicted_ids)
    gold = np.asarray(gold_ids)
    if pred.ndim != 1 or gold.ndim != 1:
        raise ValueError(f"predicted_ids and gold_ids: expected 1-D [Q], got shapes {pred.shape} and {gold.shape}")
    if pred.shape != gold.shape:
        raise ValueError(f"predicted_ids and gold_ids: expected the same shape, got {pred.shape} and {gold.shape}")
    if pred.shape[0] == 0:
        raise ValueError("need at least one mention, got Q = 0")
    return pred, gold


def unnormalized_accuracy(predicted_ids: Any, gold_ids: Any) -> float:
    """Unnormalized accuracy: correct predictions over all mentions, (1/Q) Σ_q 1[pred_q = gold_q].

    A mention whose gold entity was not retrieved among the candidates cannot be predicted correctly and counts as
    wrong, so this is the end-to-end (retrieve, then rerank) accuracy.

    Args:
      predicted_ids: the reranker's top entity per mention, shape [Q].
      gold_ids: the gold entity per mention, shape [Q].

    Returns:
      Accuracy in [0, 1].

    Example:
      >>> unnormalized_accuracy([1, 2, 3, 4], [1, 2, 0, 0])
      0.5

    References:
      Logeswaran et al., ACL 2019 (Zeshel); Wu, Stratos et al., hard negatives for entity linking (reranker
      `micro_eval`).
    """
    pred, gold = _check_ids(predicted_ids, gold_ids)
    return float(np.mean(pred == gold))


def normalized_accuracy(predicted_ids: Any, gold_ids: Any, candidate_ids: Any) -> float:
    """Normalized accuracy: accuracy over the mentions whose gold entity is among their candidates.

    acc_norm = Σ_q 1[gold_q ∈ C_q] · 1[pred_q = gold_q] / Σ_q 1[gold_q ∈ C_q]; the other mentions are culled. So
    unnormalized = normalized × (share of mentions whose gold is among the candidates) when predictions are drawn
    from the candidates.

    Args:
      predicted_ids: the reranker's top entity per mention, shape [Q].
      gold_ids: the gold entity per mention, shape [Q].
      candidate_ids: the candidates each mention was reranked over, shape [Q, K].

    Returns:
      Accuracy in [0, 1]; NaN when no mention has its gold among its candidates (the ratio is undefined).

    Example:
      >>> normalized_accuracy([1, 2, 3, 4], [1, 2, 0, 0], [[1, 5], [2, 1], [3, 0], [4, 7]])
      0.6666666666666666

    References:
      Logeswaran et al., ACL 2019 (Zeshel); Wu, Stratos et al., hard negatives for entity linking (reranker
      `micro_eval`).
    """
    pred, gold = _check_ids(predicted_ids, gold_ids)
    cands = np.asarray(candidate_ids)
    if cands.ndim != 2 or cands.shape[0] != pred.shape[0]:
        raise ValueError(f"candidate_ids: expected [Q, K] with Q = {pred.shape[0]}, got shape {cands.shape}")
    covered = np.any(cands == gold[:, None], axis=1)  # [Q]
    if not covered.any():
        return float("nan")
    return float(np.mean(pred[covered] == gold[covered]))


def mean_std(values: Iterable[float | None]) -> dict[str, float | None]:
    """Mean and sample standard deviation (ddof = 1) of the values that are not None, e.g. one metric over seeds.

    Args:
      values: numbers; None entries (a metric a run did not reach) are left out.

    Returns:
      ``{"mean": float, "std": float}``; ``std`` is 0.0 for a single value; both None when no value is left.

    Example:
      >>> mean_std([1.0, None, 3.0])
      {'mean': 2.0, 'std': 1.4142135623730951}
    """
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of two systems scored on the same items.

    Of the n = only_a + only_b discordant items (one system right, the other wrong), the p-value is the probability
    under Binomial(n, 1/2) of a split at least as uneven: p = min(1, 2 · Σ_{i ≤ min(only_a, only_b)} C(n, i) / 2ⁿ);
    1.0 when no item is discordant. It answers whether the two accuracies differ by more than the luck of which items
    each system gets right; it says nothing of seed-to-seed variation.

    Args:
      only_a: items system A gets right and B wrong, >= 0.
      only_b: items system B gets right and A wrong, >= 0.

    Returns:
      The p-value in (0, 1].

    Example:
      >>> mcnemar_exact(1, 3)  # 2 · (C(4, 0) + C(4, 1)) / 16
      0.625

    References:
      McNemar, "Note on the sampling error of the difference between correlated proportions or percentages",
      Psychometrika 1947 (exact binomial form); equals ``scipy.stats.binomtest(only_b, n, 0.5).pvalue``.
    """
    for name, value in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    n = int(only_a) + int(only_b)
    if n == 0:
        return 1.0
    low = min(int(only_a), int(only_b))
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_comparison(correct_a: Any, correct_b: Any) -> dict[str, float | int]:
    """Accuracies of two systems on the same items and the exact McNemar test of their difference.

    Args:
      correct_a: bool [Q], whether system A is right on each item.
      correct_b: bool [Q], the same items for system B.

    Returns:
      ``{"items": Q, "accuracy_a", "accuracy_b", "only_a", "only_b", "mcnemar_p"}`` (see :func:`mcnemar_exact`).

    Example:
      >>> paired_comparison([True, True, False, False], [True, False, True, True])["only_b"]
      2
    """
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.dtype != np.bool_ or b.dtype != np.bool_ or a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"correct_a, correct_b: expected two bool arrays [Q] of one shape, got {a.dtype}{a.shape} and "
                         f"{b.dtype}{b.shape}")  # fmt: skip
    if a.shape[0] == 0:
        raise ValueError("correct_a: expected at least one item, got Q = 0")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return {
        "items": int(a.shape[0]),
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def sts_cosine_agreement(sets: Mapping[str, Any], vectors_a: Mapping[str, Any], vectors_b: Mapping[str, Any]) -> dict:
    """How closely two embedding pipelines agree on STS sets: per set, max over its pairs of |cos_a − cos_b|.

    Args:
      sets: set name → ``hnjax.data.sts.STSSet`` (its subsets' sentence pairs).
      vectors_a, vectors_b: sentence → vector [D] of each pipeline, covering every sentence of ``sets``.

    Returns:
      ``{set name: float}``, the largest difference of a pair's cosine similarity between the two pipelines.

    Raises:
      KeyError: a sentence of a set has no vector in one of the pipelines.
    """
    out = {}
    for name, s in sets.items():
        pairs = [p for sub in s.subsets.values() for p in zip(sub.sentences1, sub.sentences2)]
        cos = [cosine_similarity([v[a] for a, _ in pairs], [v[b] for _, b in pairs]) for v in (vectors_a, vectors_b)]
        out[name] = float(np.max(np.abs(cos[0] - cos[1])))
    return out


def evaluate_sts(
    embed_fn: Callable[[Sequence[str]], Any],
    sets: Mapping[str, Any],
    *,
    align_threshold: float = 4.0,
    geometry: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluates a sentence embedding on STS sets: Spearman ×100 of the cosine similarity with the gold scores.

    For each set, every pair of every subset is scored by cos(embed(s1), embed(s2)); the set's "spearman" is the
    SentEval "all" setting, Spearman over the pairs of all its subsets concatenated (for STS-B and SICK-R, which have
    one subset, simply that subset). Sets with several subsets (STS12–16) also get "mean" (plain average of the
    per-subset Spearman), "wmean" (weighted by subset size) and "subsets". When the seven SentEval tasks
    (`SEVEN_TASKS`) are all present, "avg7" holds their average.

    Each distinct sentence of all sets is embedded once, in a single call of `embed_fn`.

    Args:
      embed_fn: maps a list of S sentences to embeddings [S, D] (any array-like).
      sets: name → set, where a set has `subsets`, a mapping name → pairs with `sentences1`, `sentences2` (P
        strings each), `scores` (gold [P]) and optionally `skipped_empty_gold` (see `hnjax.data.sts.STSSet`).
      align_threshold: pairs with gold > this are the positives of the alignment metric (4.0 as in SimCSE).
      geometry: also report "alignment" (over positive pairs; omitted when a set has none) and "uniformity"
        (over the sentences of both sides, duplicates included) of the L2-normalised embeddings.

    Returns:
      name → {"spearman": float, "pairs": int, ...}; for sets with subsets also "mean", "wmean", "subsets":
      {subset: {"spearman", "pairs"}}; "skipped_empty_gold" where the loader skipped lines; plus "avg7":
      {"spearman": mean of the seven, "pairs": total, "sets": names} when all seven are present.

    References:
      Conneau & Kiela, "SentEval", LREC 2018; Gao et al., "SimCSE", EMNLP 2021, §B (the "all" setting, no
      regressor); Wang & Isola, ICML 2020 (alignment, uniformity).
    """
    if not sets:
        raise ValueError("sets is empty: nothing to evaluate")
    index: dict[str, int] = {}
    for s in sets.values():
        for pairs in s.subsets.values():
            for sent in (*pairs.sentences1, *pairs.sentences2):
                index.setdefault(sent, len(index))
    sentences = list(index)
    emb = np.asarray(embed_fn(sentences), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(sentences):
        raise ValueError(f"embed_fn must return [S, D] with S = {len(sentences)}, got shape {emb.shape}")
    emb = scorers.l2_normalize(_as_2d(emb, "emb"))

    results: dict[str, dict[str, Any]] = {}
    for name, s in sets.items():
        cos_all, gold_all, left_all, right_all, per_subset = [], [], [], [], {}
        skipped = 0
        for sub_name, pairs in s.subsets.items():
            left = emb[[index[t] for t in pairs.sentences1]]  # [P, D]
            right = emb[[index[t] for t in pairs.sentences2]]  # [P, D]
            cos = cosine_similarity(left, right)
            gold = np.asarray(pairs.scores, dtype=np.float64)
            per_subset[sub_name] = {"spearman": sts_spearman(cos, gold), "pairs": int(gold.shape[0])}
            cos_all.append(cos)
            gold_all.append(gold)
            left_all.append(left)
            right_all.append(right)
            skipped += int(getattr(pairs, "skipped_empty_gold", 0))
        cos = np.concatenate(cos_all)
        gold = np.concatenate(gold_all)
        entry: dict[str, Any] = {"spearman": sts_spearman(cos, gold), "pairs": int(gold.shape[0])}
        if len(per_subset) > 1:
            values = np.array([v["spearman"] for v in per_subset.values()])
            sizes = np.array([v["pairs"] for v in per_subset.values()], dtype=np.float64)
            entry["mean"] = float(values.mean())
            entry["wmean"] = float(np.sum(values * sizes) / np.sum(sizes))
            entry["subsets"] = per_subset
        if skipped:
            entry["skipped_empty_gold"] = skipped
        if geometry:
            left, right = np.concatenate(left_all), np.concatenate(right_all)
            positive = gold > align_threshold
            if positive.any():
                entry["alignment"] = alignment(left[positive], right[positive], normalize=False)
            entry["uniformity"] = uniformity(np.concatenate([left, right]), normalize=False)
        results[name] = entry
        logger.info("%s: Spearman %.2f over %d pairs", name, entry["spearman"], entry["pairs"])

    if all(task in results for task in SEVEN_TASKS):
        results["avg7"] = {
            "spearman": float(np.mean([results[task]["spearman"] for task in SEVEN_TASKS])),
            "pairs": int(sum(results[task]["pairs"] for task in SEVEN_TASKS)),
            "sets": list(SEVEN_TASKS),
        }
    return results
