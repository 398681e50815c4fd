"""A tiny dual encoder on generated retrieval data, for the training-loop tests and the resume script.

Documents are random bags of token ids; query i is document i's bag with each token replaced, with probability
``noise``, by a random token. The encoder is an embedding bag followed by a linear map and L2 normalisation; the loss is
in-batch InfoNCE (negatives all-gathered over devices) plus mined hard negatives per query.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hnjax import losses

TAU = 0.1


def make_data(n_docs=128, length=8, vocab=256, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, vocab, size=(n_docs, length)).astype(np.int32)
    replace = rng.random((n_docs, length)) < noise
    queries = np.where(replace, rng.integers(0, vocab, size=(n_docs, length)), docs).astype(np.int32)
    return queries, docs


def init_params(vocab=256, dim=16, seed=0):
    rng = np.random.default_rng(seed + 1000)
    return {
        "emb": (rng.normal(size=(vocab, dim)) * 0.1).astype(np.float32),
        "proj": (np.eye(dim) + rng.normal(size=(dim, dim)) * 0.01).astype(np.float32),
    }


def encode(params, tokens):
    """Tokens ``[..., L]`` -> unit vectors ``[..., D]``."""
    bag = jnp.mean(params["emb"][tokens], axis=-2)  # [..., D]
    z = bag @ params["proj"]
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)


def loss_fn(params, batch, key, axis_name=None, token_dropout=0.1):
    """In-batch + hard-negative softmax CE, global mean over valid rows; query tokens dropped with the step's key."""
    tokens = batch["query"]
    keep = jax.random.bernoulli(key, 1.0 - token_dropout, tokens.shape)
    q_bag = jnp.sum(params["emb"][tokens] * keep[..., None], -2) / jnp.maximum(jnp.sum(keep, -1, keepdims=True), 1)
    q = q_bag @ params["proj"]
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-6)  # [B, D]
    d = encode(params, batch["doc"])  # [B, D]
    valid = batch["valid"]
    d_all, offset = losses.gather_columns(d, axis_name)  # [B_g, D]
    v_all, _ = losses.gather_columns(valid, axis_name)
    inbatch = jnp.where(v_all[None, :], q @ d_all.T / TAU, -1e9)  # [B, B_g]
    logits = inbatch
    if "neg" in batch:
        negs = encode(params, batch["neg"])  # [B, K-1, D]
        logits = jnp.concatenate([inbatch, jnp.einsum("bd,bkd->bk", q, negs) / TAU], axis=1)
    labels = offset + jnp.arange(q.shape[0])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    num, den = jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid.astype(jnp.float32))
    if axis_name is not None:
        num, den = lax.psum((num, den), axis_name)
    return num / jnp.maximum(den, 1.0), {}


def make_batch_fn(queries, docs):
    def batch_fn(indices, candidates):
        batch = {"query": queries[indices], "doc": docs[indices]}
        if candidates is not None:
            batch["neg"] = docs[candidates[0]]  # [b, K-1, L]
        return batch

    return batch_fn


def recall_at(params, queries, docs, ks=(1, 5)):
    """Recall@k of every query against the whole corpus (gold of query i is document i), computed in NumPy."""
    q = np.asarray(encode(params, jnp.asarray(queries)), np.float64)
    d = np.asarray(encode(params, jnp.asarray(docs)), np.float64)
    scores = q @ d.T
    rank = (scores > np.diag(scores)[:, None]).sum(1)  # documents scored above the gold
    return {f"recall@{k}": float(np.mean(rank < k)) for k in ks}


def make_miner(queries, docs, *, num_negatives=3, refresh_every=5, seed=0, asynchronous=False):
    from hnjax import mining

    return mining.Miner(
        lambda params, tokens: encode(params, tokens),
        docs,
        queries,
        [[i] for i in range(len(docs))],
        index="exact",
        recipe="hard",
        num_negatives=num_negatives,
        refresh_every=refresh_every,
        seed=seed,
        asynchronous=asynchronous,
        progress=False,
    )
