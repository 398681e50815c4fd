"""Benchmark inputs: generated batches of random word pieces with given length ranges, and their layouts.

Every implementation of a case gets the same token ids, lengths and candidate table; the layouts differ only in how
much padding and repetition they compute:

- ``padded``: every sequence padded to a fixed length (the reference's ``max_len``), all B·K candidates encoded;
- ``bucketed``: padded to the smallest bucket (8, 16, 32, …) that holds the batch's longest sequence;
- ``dedup``: bucketed, and each distinct candidate entity encoded once (``entity_ids`` + ``cand_index``);
- ``packed``: sequences packed into rows of ``row_length`` tokens (:mod:`hnjax.data.packing`), each distinct
  candidate once per batch (``packed_no_dedup``: every candidate slot packed).

:func:`token_counts` says what a layout costs: real and computed tokens, distinct and total candidates.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from hnjax import retriever, simcse
from hnjax.data import packing, tokenize

CLS, SEP, PAD, FIRST_WORD = 101, 102, 0, 1000  # BERT uncased vocabulary layout
LAYOUTS = ("padded", "bucketed", "dedup", "packed", "packed_no_dedup")


@dataclasses.dataclass(frozen=True)
class RetrieverSizes:
    """Retriever batches: B mentions, K candidates (gold + K−1), lengths uniform in [min_len, max_len].

    ``neg_repeat``: each hard negative is a candidate of this many mentions of the batch (mentions sharing mined
    negatives, as namesake entities do); 1 = no repeated candidates. ``pad_length``: the reference's padding.
    """

    batch: int = 2
    cands: int = 64
    min_len: int = 32
    max_len: int = 128
    neg_repeat: int = 2
    pad_length: int = 128

    def __post_init__(self):
        if self.batch < 1 or self.cands < 2 or self.neg_repeat < 1:
            raise ValueError(f"expected batch ≥ 1, cands ≥ 2, neg_repeat ≥ 1, got {self}")
        if not 3 <= self.min_len <= self.max_len <= self.pad_length:
            raise ValueError(f"expected 3 <= min_len <= max_len <= pad_length, got {self}")
        slots = self.batch * (self.cands - 1)
        if slots % self.neg_repeat:
            raise ValueError(f"neg_repeat: expected a divisor of B·(K−1) = {slots}, got {self.neg_repeat}")
        if slots // self.neg_repeat < self.cands - 1:
            raise ValueError(f"neg_repeat: too large, a mention needs {self.cands - 1} distinct negatives")


@dataclasses.dataclass(frozen=True)
class SimCSESizes:
    """SimCSE batches: B sentences, lengths uniform in [min_len, max_len] (max_len = max_seq_length)."""

    batch: int = 64
    min_len: int = 8
    max_len: int = 32

    def __post_init__(self):
        if self.batch < 1 or not 3 <= self.min_len <= self.max_len:
            raise ValueError(f"expected batch ≥ 1 and 3 <= min_len <= max_len, got {self}")


def sequence(rng: np.random.Generator, length: int, vocab: int) -> np.ndarray:
    """[CLS] w_1 … w_{length−2} [SEP], random word pieces."""
    ids = rng.integers(FIRST_WORD, vocab, size=length).astype(np.int32)
    ids[0], ids[-1] = CLS, SEP
    return ids


def retriever_batches(sizes: RetrieverSizes, *, count: int, vocab: int, seed: int) -> list[dict]:
    """Mentions, distinct candidate entities and the [B, K] candidate table (gold at column 0) of each batch.

    Hard negatives repeat across mentions: the B·(K−1) negative slots are filled from a pool of
    B·(K−1)/neg_repeat entities, each used by ``neg_repeat`` mentions (never twice by one mention).
    """
    rng = np.random.default_rng(seed)
    b, k, r = sizes.batch, sizes.cands, sizes.neg_repeat
    draw = lambda: sequence(rng, int(rng.integers(sizes.min_len, sizes.max_len + 1)), vocab)  # noqa: E731
    batches = []
    for _ in range(count):
        n_pool = b * (k - 1) // r
        entities = [draw() for _ in range(b + n_pool)]  # golds first, then the negative pool
        slots = np.arange(b * (k - 1)) % n_pool  # consecutive K−1 slots of a row are distinct pool entries
        negatives = b + rng.permutation(n_pool)[slots].reshape(b, k - 1)
        cand_index = np.concatenate([np.arange(b)[:, None], negatives], axis=1).astype(np.int32)  # [B, K]
        mentions = [draw() for _ in range(b)]
        batches.append({"mentions": mentions, "entities": entities, "cand_index": cand_index})
    return batches


def simcse_batches(sizes: SimCSESizes, *, count: int, vocab: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    draw = lambda: sequence(rng, int(rng.integers(sizes.min_len, sizes.max_len + 1)), vocab)  # noqa: E731
    return [{"sentences": [draw() for _ in range(sizes.batch)]} for _ in range(count)]


def pad(seqs: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [n, length] int32 and mask [n, length] bool."""
    ids = np.full((len(seqs), length), PAD, np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, ids != PAD


def bucket_length(seqs: list[np.ndarray], max_length: int) -> int:
    """The smallest default bucket (:func:`hnjax.data.tokenize.default_buckets`) that holds the longest sequence."""
    return tokenize.choose_bucket(max(len(s) for s in seqs), tokenize.default_buckets(max_length))


def retriever_arrays(batch: dict, layout: str, *, pad_length: int, row_length: int = 256) -> dict:
    """The retriever batch in a layout (module docstring): per row (``cand_ids`` [B, K, Le]) for padded/bucketed,
    ``entity_ids`` [U, Le] + ``cand_index`` for dedup, packed streams (:func:`hnjax.retriever.pack_batch`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    mentions, entities, cand_index = batch["mentions"], batch["entities"], batch["cand_index"]
    if layout.startswith("packed"):
        keys = cand_index.tolist() if layout == "packed" else None
        return retriever.pack_batch(
            mentions, [[entities[j] for j in row] for row in cand_index], candidate_keys=keys,
            row_length=row_length, mention_length=bucket_length(mentions, pad_length),
            entity_length=bucket_length(entities, pad_length), pad_id=PAD,
        )  # fmt: skip
    bucket = layout != "padded"
    lm = bucket_length(mentions, pad_length) if bucket else pad_length
    out = dict(zip(("mention_ids", "mention_mask"), pad(mentions, lm)))
    if layout == "dedup":
        out["entity_ids"], out["entity_mask"] = pad(entities, bucket_length(entities, pad_length))
        out["cand_index"] = cand_index
        return out
    rows = [entities[j] for j in cand_index.reshape(-1)]
    le = bucket_length(rows, pad_length) if bucket else pad_length
    ids, mask = pad(rows, le)
    out["cand_ids"] = ids.reshape(cand_index.shape + (le,))
    out["cand_token_mask"] = mask.reshape(cand_index.shape + (le,))
    return out


def simcse_arrays(batch: dict, layout: str, *, max_length: int, row_length: int = 128) -> dict:
    """SimCSE sentences padded to the batch's longest (``padded``, the Hugging Face collator's default), to a bucket
    (``bucketed``), or both views packed (``packed``, :func:`hnjax.simcse.pack_batch`)."""
    sentences = batch["sentences"]
    if layout == "packed":
        return simcse.pack_batch(sentences, row_length=row_length, length=bucket_length(sentences, max_length))
    if layout not in ("padded", "bucketed"):
        raise ValueError(f"layout: expected padded, bucketed or packed for SimCSE, got {layout!r}")
    length = bucket_length(sentences, max_length) if layout == "bucketed" else max(len(s) for s in sentences)
    ids, mask = pad(sentences, length)
    return {"input_ids": ids, "attention_mask": mask}


def token_counts(arrays: dict, *, row_length: int | None = None, views: int = 1) -> dict:
    """What one step of a layout makes the encoders compute.

    Args:
        arrays: a batch from :func:`retriever_arrays` or :func:`simcse_arrays`.
        row_length: the packing row length (packed layouts).
        views: encoder passes over a padded batch (2 for SimCSE's two views; packed batches hold both views).

    Returns:
        ``{"tokens_real", "tokens_computed", "padding_fraction"}`` (real = non-padding tokens the encoders process,
        repeated sequences included; computed = the token grid, padding included) and for retriever batches
        ``{"candidates_total", "candidates_encoded"}``.
    """
    out: dict = {}
    real = computed = 0
    if "slots" in arrays or "mention_slots" in arrays:
        for prefix in ("", "mention_", "entity_"):
            if prefix + "segments" in arrays:
                c = packing.counts(arrays[prefix + "segments"], row_length=row_length)
                real, computed = real + c["real_tokens"], computed + c["grid_tokens"]
                if prefix == "entity_":
                    out["candidates_encoded"] = c["stored"]
    else:
        for ids_key, mask_key in (("input_ids", "attention_mask"), ("mention_ids", "mention_mask"),
                                  ("entity_ids", "entity_mask"), ("cand_ids", "cand_token_mask")):  # fmt: skip
            if ids_key in arrays:
                real += views * int(np.count_nonzero(arrays[mask_key]))
                computed += views * int(arrays[ids_key].size)
        if "entity_ids" in arrays:
            out["candidates_encoded"] = int(arrays["entity_ids"].shape[0])
        elif "cand_ids" in arrays:
            out["candidates_encoded"] = int(np.prod(arrays["cand_ids"].shape[:2]))
    if "candidates_encoded" in out:
        index = arrays.get("cand_index", arrays.get("entity_slots", arrays.get("cand_ids")))
        out["candidates_total"] = int(np.prod(index.shape[:2]))
    out.update(tokens_real=real, tokens_computed=computed, padding_fraction=1.0 - real / max(computed, 1))
    return out


def head(width: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The SimCSE MLP head every implementation starts from: kernel [D, D] ~ N(0, 0.02²), bias 0."""
    rng = np.random.default_rng(seed)
    return (0.02 * rng.standard_normal((width, width))).astype(np.float32), np.zeros(width, np.float32)


def vectors(sizes: RetrieverSizes, *, loss_batch: int, width: int, seed: int) -> dict:
    """Fixed inputs of ``loss_only`` (scores [B, K], views [B, D]) and ``scorer_only`` (token vectors with masks)."""
    rng = np.random.default_rng(seed)
    b, k, sb, length = loss_batch, sizes.cands, sizes.batch, sizes.max_len
    lengths = lambda *shape: rng.integers(sizes.min_len, sizes.max_len + 1, size=shape)  # noqa: E731
    return {
        "scores": rng.standard_normal((b, k)).astype(np.float32),
        "z1": rng.standard_normal((b, width)).astype(np.float32),
        "z2": rng.standard_normal((b, width)).astype(np.float32),
        "q": (0.1 * rng.standard_normal((sb, length, width))).astype(np.float32),
        "q_mask": np.arange(length) < lengths(sb)[:, None],
        "d": (0.1 * rng.standard_normal((sb, k, length, width))).astype(np.float32),
        "d_mask": np.arange(length) < lengths(sb, k)[..., None],
    }


# Encoder shapes for throughput runs without trained weights (a GPU machine with no model files, tests).
RANDOM_ENCODERS = {
    "minilm-random": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base-random": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def encoder_checkpoint(name: str, directory: str, *, seed: int = 0, **overrides) -> str:
    """A checkpoint directory for ``name``: a known checkpoint as is, or for a :data:`RANDOM_ENCODERS` name random
    weights (BERT initialisation, uncased BERT vocabulary) saved in Hugging Face layout under ``directory``, so that
    hnjax and PyTorch start from the same parameters. ``overrides`` change the random config (e.g. a tiny vocabulary
    and fewer positions in tests)."""
    from hnjax import models  # noqa: PLC0415

    if name not in RANDOM_ENCODERS:
        return str(models.resolve_checkpoint(name))
    import jax  # noqa: PLC0415

    fields = dict(vocab_size=30522, max_position_embeddings=512, **RANDOM_ENCODERS[name])
    config = models.EncoderConfig(**{**fields, **overrides})
    return str(
        models.save_pretrained(os.path.join(directory, name), config, models.init_params(config, jax.random.key(seed)))
    )


def mining_vectors(kind: str, n: int, n_queries: int, dim: int, *, noise: float, n_centres: int, seed: int):
    """Corpus [n, dim] and queries [n_queries, dim], float32, unit norm, for the index benchmark.

    ``clustered``: ``n_centres`` random unit centres; each vector = a uniformly chosen centre + noise · g / sqrt(D),
    g ~ N(0, I), then normalised (‖noise‖ ≈ ``noise``); queries are fresh draws from the same mixture.
    ``gaussian``: isotropic N(0, I) vectors, normalised (the worst case for any ANN index).
    """
    if kind not in ("clustered", "gaussian"):
        raise ValueError(f"kind: expected 'clustered' or 'gaussian', got {kind!r}")
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    if kind == "gaussian":
        return unit(rng.standard_normal((n, dim), np.float32)), unit(rng.standard_normal((n_queries, dim), np.float32))
    centres = unit(rng.standard_normal((n_centres, dim), np.float32))

    def draw(m):
        out = np.empty((m, dim), np.float32)
        for s in range(0, m, 100_000):  # bounded temporaries
            e = min(s + 100_000, m)
            noise_part = rng.standard_normal((e - s, dim), np.float32) * np.float32(noise / np.sqrt(dim))
            out[s:e] = centres[rng.integers(0, n_centres, e - s)] + noise_part
        return unit(out)

    return draw(n), draw(n_queries)
