"""SimCSE / Focal-InfoNCE training loss against the official PyTorch formulation, and the text corpus reader.

The reference is Focal-InfoNCE's ``cl_forward`` written out in PyTorch (tests only): [CLS] → Linear + tanh (the
training-time MLP) → cosine matrix of the two views → ``sp_logits`` (positive s², negative s(s + m), both / τ) →
``CrossEntropyLoss`` with labels ``arange(N)``. SimCSE's InfoNCE is the same with logits cos / τ.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_close

from hnjax import simcse
from hnjax.data import text
from hnjax.models import bert, loading

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TAU, M = 0.05, 0.3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random BERT (dropout off) saved by transformers and loaded by hnjax, plus a padded batch."""
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    ref = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    path = tmp_path_factory.mktemp("tiny_bert")
    ref.save_pretrained(path, safe_serialization=True)
    encoder, params = loading.from_pretrained(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 60, size=(5, 9)).astype(np.int32)
    mask = np.arange(9)[None, :] < np.array([[9], [4], [7], [2], [6]])
    return ref, encoder, params, {"input_ids": np.where(mask, ids, 0), "attention_mask": mask}


def _official_loss(ref, mlp, batch, loss):
    """hard-coded official formulation (PyTorch): both views through BERT, [CLS], MLP, cosine, logits, CE."""
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    mask = torch.from_numpy(batch["attention_mask"].astype(np.int64))
    views = [torch.tanh(mlp(ref(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])) for _ in range(2)]
    cos = torch.nn.functional.cosine_similarity(views[0].unsqueeze(1), views[1].unsqueeze(0), dim=-1)
    labels = torch.arange(cos.shape[0])
    if loss == "focal":  # Focal-InfoNCE focalNCE/models.py sp_logits
        eye = torch.nn.functional.one_hot(labels, cos.shape[0]).float()
        logits = ((cos * eye) * cos + ((cos + M) * (1 - eye)) * cos) / TAU
    else:  # SimCSE: cos / temp
        logits = cos / TAU
    return torch.nn.functional.cross_entropy(logits, labels)


@pytest.mark.torch
@pytest.mark.parametrize("loss", simcse.LOSSES)
def test_loss_and_gradients_equal_the_official_pytorch_formulation(tiny, loss):
    ref, encoder, enc_params, batch = tiny
    net = simcse.SimCSE(encoder, pooling="cls", loss=loss, temperature=TAU, margin=M)
    params = net.init(enc_params, jax.random.key(1))
    mlp = torch.nn.Linear(32, 32)
    with torch.no_grad():
        mlp.weight.copy_(torch.from_numpy(np.asarray(params["mlp"]["Dense_0"]["kernel"]).T.copy()))
        mlp.bias.copy_(torch.from_numpy(np.asarray(params["mlp"]["Dense_0"]["bias"])))
    ref.zero_grad()
    expected = _official_loss(ref, mlp, batch, loss)
    expected.backward()

    value, grads = jax.jit(jax.value_and_grad(lambda p: net.loss_fn(p, batch, jax.random.key(0))[0]))(params)
    assert_close(float(value), float(expected))
    ours = loading.params_to_hf(jax.device_get(grads["encoder"]), encoder.config)
    theirs = {name: p.grad.numpy() for name, p in ref.named_parameters()}
    assert set(ours) == set(theirs)
    scale = max(float(np.abs(g).max()) for g in theirs.values())
    for name, g in theirs.items():
        np.testing.assert_allclose(ours[name], g, atol=1e-4 * scale, rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(np.asarray(grads["mlp"]["Dense_0"]["kernel"]).T, mlp.weight.grad.numpy(),
                               atol=1e-4 * scale, rtol=1e-3)  # fmt: skip


def test_views_use_independent_dropout_and_formula_holds(tiny):
    """With dropout on, the two views differ; the loss is the official formula of exactly those two views."""
    _, encoder, enc_params, batch = tiny
    cfg = dataclasses.replace(encoder.config, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    net = simcse.SimCSE(bert.BertModel(cfg), pooling="cls", loss="focal", temperature=TAU, margin=M)
    params = net.init(enc_params, jax.random.key(1))
    key = jax.random.key(7)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    z1 = np.asarray(net.embed(params, ids, mask, key=jax.random.fold_in(key, 0)), np.float64)
    z2 = np.asarray(net.embed(params, ids, mask, key=jax.random.fold_in(key, 1)), np.float64)
    assert not np.allclose(z1, z2)
    cos = (z1 / np.linalg.norm(z1, axis=1, keepdims=True)) @ (z2 / np.linalg.norm(z2, axis=1, keepdims=True)).T
    eye = np.eye(len(cos), dtype=bool)
    logits = np.where(eye, cos * cos, cos * (cos + M)) / TAU
    ref = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    assert_close(float(net.loss_fn(params, batch, key)[0]), ref)
    # evaluation embeddings: [CLS] without the MLP, deterministic
    plain = np.asarray(net.embed(params, ids, mask))
    hidden = encoder.apply({"params": enc_params}, ids, mask)
    assert_close(plain, np.asarray(hidden[:, 0]))


def test_padding_rows_are_neither_anchors_nor_negatives(tiny):
    _, encoder, enc_params, batch = tiny
    for loss in simcse.LOSSES:
        net = simcse.SimCSE(encoder, pooling="mean", loss=loss)
        params = net.init(enc_params, jax.random.key(0))
        key = jax.random.key(3)
        first3 = {k: v[:3] for k, v in batch.items()}
        padded = {**batch, "valid": np.array([True, True, True, False, False])}
        assert_close(float(net.loss_fn(params, padded, key)[0]), float(net.loss_fn(params, first3, key)[0]))


def test_config_validation(tiny):
    _, encoder, _, _ = tiny
    with pytest.raises(ValueError, match="pooling"):
        simcse.SimCSE(encoder, pooling="max")
    with pytest.raises(ValueError, match="loss"):
        simcse.SimCSE(encoder, loss="triplet")
    with pytest.raises(ValueError, match="temperature"):
        simcse.SimCSE(encoder, temperature=0.0)


def test_line_corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first sentence\n\n   \nsecond one\n" + "x" * 50 + "\nlast\n", encoding="utf-8")
    corpus = text.LineCorpus(path, max_chars=20)
    assert len(corpus) == 4
    assert corpus.stats() == {"sentences": 4, "blank_lines": 2, "overlong_lines": 1}
    assert corpus[0] == "first sentence"
    assert corpus[[3, 1, 2]] == ["last", "second one", "x" * 20]
    with pytest.raises(IndexError):
        corpus[4]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no non-blank lines"):
        text.LineCorpus(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not valid UTF-8"):
        text.LineCorpus(tmp_path / "bad.txt")
