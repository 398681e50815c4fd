"""The cross-encoder reranker: pair scores, the NCE loss over candidates, dropout keys."""

import dataclasses

import jax
import numpy as np
import pytest
from numerics import assert_close

from hnjax import reranker
from hnjax.models import bert, loading

CFG = bert.EncoderConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _model(pooling="cls"):
    head, head_params = loading.init_cross_encoder_head(CFG, jax.random.key(1), dropout_rate=0.0, pooling=pooling)
    ce = reranker.CrossEncoder(bert.BertModel(CFG), head)
    return ce, {"encoder": bert.init_params(CFG, jax.random.key(0)), "head": head_params}


def _batch(rng, b, k, length):
    ids = rng.integers(1, CFG.vocab_size, size=(b, k, length)).astype(np.int32)
    mask = np.arange(length) < rng.integers(3, length + 1, size=(b, k, 1))
    types = (np.arange(length) >= 3).astype(np.int32) * mask
    return dict(pair_ids=np.where(mask, ids, 0), pair_mask=mask, pair_types=types)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_scores_equal_pairwise_encoding_and_loss_is_nce(pooling):
    ce, params = _model(pooling)
    batch = _batch(np.random.default_rng(0), 2, 3, 8)
    scores = jax.jit(ce.scores)
    s = np.asarray(scores(params, batch["pair_ids"], batch["pair_mask"], batch["pair_types"]))
    assert s.shape == (2, 3)
    for b in range(2):
        for k in range(3):  # every pair on its own gives the same score: pairs never see each other
            one = scores(params, *(batch[n][b : b + 1, k : k + 1] for n in ("pair_ids", "pair_mask", "pair_types")))
            assert_close(float(one[0, 0]), s[b, k])
    loss, aux = ce.loss(params, batch, jax.random.key(0))
    ref = np.mean([np.log(np.exp(row).sum()) - row[0] for row in s.astype(np.float64)])
    assert_close(float(loss), ref)
    assert float(aux["count"]) == 2


def test_dropout_keys_matter_only_in_training():
    cfg = dataclasses.replace(CFG, hidden_dropout_prob=0.3)
    head, head_params = loading.init_cross_encoder_head(cfg, jax.random.key(1), dropout_rate=0.3)
    ce = reranker.CrossEncoder(bert.BertModel(cfg), head)
    params = {"encoder": bert.init_params(cfg, jax.random.key(0)), "head": head_params}
    batch = _batch(np.random.default_rng(1), 1, 2, 6)
    args = (params, batch["pair_ids"], batch["pair_mask"], batch["pair_types"])
    a, b = ce.scores(*args, key=jax.random.key(1)), ce.scores(*args, key=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(ce.scores(*args, key=jax.random.key(1)), a)
    np.testing.assert_array_equal(ce.scores(*args), ce.scores(*args))
