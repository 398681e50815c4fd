"""How the K−1 negatives of a query are chosen: the ``Recipe`` of a ``Miner`` (Zhang & Stratos 2021's recipes).

- ``"hard"``: the top K−1 allowed documents of the query's shortlist (deterministic;
  ``hnjax.samplers.top_k_negatives``);
- ``"random"``: K−1 uniform draws without replacement from the whole corpus minus the golds (needs no encoding);
- ``"mixed"``: round(p·(K−1)) hard ones from the shortlist, the rest uniform from the corpus minus the golds and the
  hard ones (Zhang & Stratos 2021: p = 0.5, re-drawn every refresh);
- ``"model"``: K−1 draws without replacement from q(y) ∝ exp(s(y)/T) over the allowed shortlist (Gumbel top-k;
  ``hnjax.samplers.model_negatives``), returning log q for the log-q corrected loss. q is the model distribution
  truncated to the shortlist (exact when S = N).
"""

from __future__ import annotations

import dataclasses

from hnjax import samplers

RECIPES = ("hard", "random", "mixed", "model")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the K−1 negatives of a query are chosen.

    Attributes:
      kind: ``"hard"``, ``"random"``, ``"mixed"`` or ``"model"`` (see the module docstring).
      hard_share: p, share of hard negatives for ``"mixed"`` (hard count = ``samplers.mixed_hard_count(K−1, p)``).
      temperature: T of the model distribution for ``"model"``.
      smoothing: uniform mixing weight of the model distribution for ``"model"`` (see ``samplers.model_negatives``).
      false_negative_margin: None (off) or m: shortlisted documents with score > min_gold_score − m are never used
        as negatives (likely unlabeled positives; ``absolute_margin`` of sentence-transformers'
        ``mine_hard_negatives``). m may be negative to allow candidates slightly above the gold.

    References:
      Zhang & Stratos (2021), "Understanding Hard Negatives in Noise Contrastive Estimation" (hard-nce-el
      ``data_retriever.py``, ``get_hard_negative``).
    """

    kind: str = "mixed"
    hard_share: float = 0.5
    temperature: float = 1.0
    smoothing: float = 0.0
    false_negative_margin: float | None = None

    def __post_init__(self):
        if self.kind not in RECIPES:
            raise ValueError(f"recipe.kind: expected one of {RECIPES}, got {self.kind!r}")
        if not 0.0 <= self.hard_share <= 1.0:
            raise ValueError(f"recipe.hard_share: expected a value in [0, 1], got {self.hard_share}")
        if not self.temperature > 0:
            raise ValueError(f"recipe.temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"recipe.smoothing: expected a value in [0, 1], got {self.smoothing}")

    def num_hard(self, num_negatives: int) -> int:
        """Negatives taken from the shortlist (the rest are uniform over the corpus)."""
        if self.kind in ("hard", "model"):
            return num_negatives
        if self.kind == "random":
            return 0
        return samplers.mixed_hard_count(num_negatives, self.hard_share)
