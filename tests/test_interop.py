"""Round trips between hnjax and the PyTorch libraries: sentence-transformers folders, cross-encoders, retrievers.

Each model is saved by hnjax and loaded by sentence-transformers / transformers themselves (CPU torch, offline, local
files only), which must give the same vectors and scores; and hnjax reads their folders back.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub

import jax
import jax.numpy as jnp
import numerics
import numpy as np
import optax
import pytest
import sentence_transformers
import torch
import transformers
from safetensors import numpy as safetensors_numpy

from hnjax import embed, export, models, reranker, retriever
from hnjax import eval as ev
from hnjax.data import sts, tokenize
from hnjax.models import st_format

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer.modules import Pooling as StPooling
except ImportError:
    from sentence_transformers.models import Pooling as StPooling

pytestmark = pytest.mark.torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
STS_DEV = ROOT / "tests" / "data" / "sts" / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"
SENTENCES = [
    "A man is playing a guitar.",
    "Hard negatives make contrastive retrievers learn fine distinctions between similar entities.",
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Two dogs run across a snowy field while a child watches from the porch.",
]
PAIRS = [
    ("who plays the guitar", "A man is playing a guitar."),
    ("who plays the guitar", "The quick brown fox jumps over the lazy dog."),
    ("dogs in snow", "Two dogs run across a snowy field."),
    ("dogs in snow", "Hi"),
    ("hard negatives", "Hard negatives make retrievers learn fine distinctions."),
    ("hard negatives", "A cat sleeps."),
]


def _close(got, ref, scale=None):
    """Two frameworks through a whole encoder: 1e-4 of the magnitudes involved (DESIGN.md's encoder parity bound)."""
    scale = float(np.max(np.abs(np.asarray(ref, np.float64)))) if scale is None else scale
    numerics.assert_close(got, ref, atol=1e-4 * max(scale, 1.0), rtol=1e-4)


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_dir():
    return models.resolve_checkpoint("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return tokenize.load_tokenizer(minilm_dir)


def _tiny_config(model_type="bert", **kw):
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_act="gelu")  # fmt: skip
    if model_type == "roberta":
        base.update(model_type="roberta", type_vocab_size=1, pad_token_id=1, max_position_embeddings=66)
    base.update(kw)
    return models.EncoderConfig(vocab_size=30522, **base)


def _perturbed(config, seed):
    """Random BERT init with biases and LayerNorms moved away from 0 / 1, so that every tensor matters."""
    params = models.init_params(config, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ pooling modes


@pytest.mark.parametrize("mode", st_format.POOLING_MODES)
def test_pooling_modes_match_sentence_transformers(mode):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], bool)
    module = StPooling(8, pooling_mode=mode)
    with torch.no_grad():
        out = module({"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask).long()})
    ref = out["sentence_embedding"].numpy()
    got = np.asarray(jax.jit(st_format.pool, static_argnums=0)(mode, hidden, mask))
    _close(got, ref)


# -------------------------------------------------------------------------------------- sentence encoders: out


@pytest.fixture(scope="module")
def st_export(tmp_path_factory, minilm_dir):
    """A tiny encoder with pooling mean → Dense 32→16 tanh → Dense 16→8 identity → Normalize, exported."""
    config = _tiny_config()
    params = _perturbed(config, 3)
    rng = np.random.default_rng(1)
    w1, b1, w2 = (
        rng.normal(0, s, shape).astype(np.float32) for s, shape in ((0.3, (32, 16)), (0.1, 16), (0.3, (16, 8)))
    )
    dense = (st_format.DenseLayer(w1, b1), st_format.DenseLayer(w2, None, "identity"))
    pipeline = st_format.SentencePipeline(("mean",), dense, True, max_seq_length=12, similarity="cosine")
    path = models.save_sentence_transformer(
        tmp_path_factory.mktemp("st") / "enc", config, params, pipeline, tokenizer_from=minilm_dir
    )
    return config, params, pipeline, path


def test_sentence_transformer_export_matches_hnjax(st_export, tokenizer):
    config, params, pipeline, path = st_export
    model = sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    theirs = model.encode(SENTENCES, convert_to_numpy=True, batch_size=8)
    ours = embed.encode_sentences(models.BertModel(config), params, tokenizer, SENTENCES, pipeline=pipeline,
                                  max_length=12, progress=False)  # fmt: skip
    assert theirs.shape == ours.shape == (len(SENTENCES), 8)
    assert np.min(_cosines(ours, theirs)) >= 0.9999
    _close(ours, theirs, scale=1.0)
    # The encoder at the root still loads with plain transformers.
    base = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    assert type(base).__name__ == "BertModel"


def test_sentence_transformer_folder_loads_back(st_export, caplog):
    config, params, pipeline, path = st_export
    with caplog.at_level("INFO", logger="hnjax.models.interop"):
        pre = models.load_pretrained(path)
    assert pre.pipeline.describe() == "pooling mean → Dense 32→16 tanh → Dense 16→8 identity → Normalize"
    assert pre.pipeline.max_seq_length == 12 and pre.pipeline.similarity == "cosine"
    for got, want in zip(pre.pipeline.dense, pipeline.dense):
        np.testing.assert_array_equal(got.kernel, want.kernel)
        assert (got.bias is None) == (want.bias is None) and got.activation == want.activation
    jax.tree.map(np.testing.assert_array_equal, pre.params, jax.device_get(params))
    assert "Normalize" in pre.summary()["used"] and "Dense 32→16 tanh" in caplog.text
    # from_pretrained reads the same encoder and says that the pipeline is not applied by it
    with caplog.at_level("INFO", logger="hnjax.models.loading"):
        models.from_pretrained(path)
    assert "sentence-transformers folder (pooling mean → Dense" in caplog.text


def test_minilm_sentence_transformers_layout_gives_its_embeddings(minilm_dir, tokenizer):
    pre = models.load_pretrained(minilm_dir)
    assert pre.pipeline.describe() == "pooling mean → Normalize" and pre.pipeline.max_seq_length == 256
    ours = embed.encode_sentences(pre.model, pre.params, tokenizer, SENTENCES, pipeline=pre.pipeline,
                                  max_length=pre.pipeline.max_seq_length, progress=False)  # fmt: skip
    model = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    theirs = model.encode(SENTENCES, convert_to_numpy=True)
    assert np.min(_cosines(ours, theirs)) >= 0.9999
    _close(ours, theirs, scale=1.0)


def test_old_layout_and_unsupported_modules(tmp_path, st_export):
    config, params, _, path = st_export
    # Old layout: the encoder in 0_Transformer, a Dropout (inert), prompts (reported as ignored).
    old = tmp_path / "old"
    models.save_pretrained(old / "0_Transformer", config, params)
    (old / "1_Pooling").mkdir()
    (old / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    entries = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(
            [("0_Transformer", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dropout", "Dropout")]
        )
    ]
    (old / "modules.json").write_text(json.dumps(entries))
    (old / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    pre = models.load_pretrained(old)
    assert pre.pipeline.pooling == ("cls",) and not pre.pipeline.dense and not pre.pipeline.normalize
    assert any(line.startswith("Dropout") for line in pre.ignored) and any("prompts" in x for x in pre.ignored)
    jax.tree.map(np.testing.assert_array_equal, pre.params, jax.device_get(params))
    # A module that changes the vectors and that hnjax cannot compute is an error naming the file and entry.
    entries[2] = {"idx": 2, "name": "2", "path": "2_LSTM", "type": "sentence_transformers.models.LSTM"}
    (old / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"modules.json: entry 2 .*LSTM.* not supported"):
        models.load_pretrained(old)
    _, encoder_only = models.from_pretrained(old)  # the encoder alone still loads
    jax.tree.map(np.testing.assert_array_equal, encoder_only, jax.device_get(params))
    entries.pop()
    (old / "modules.json").write_text(json.dumps(entries))
    (old / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(ValueError, match=r"1_Pooling/config.json: field 'pooling_mode'"):
        models.load_pretrained(old)
    dense_dir = path / "2_Dense"
    raw = json.loads((dense_dir / "config.json").read_text())
    bad = tmp_path / "bad_dense"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**raw, "activation_function": "my.custom.Act"}))
    (bad / "model.safetensors").write_bytes((dense_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"bad_dense/config.json: field 'activation_function'"):
        st_format.read_dense(bad)


# ------------------------------------------------------------------------------------- SimCSE: OUT/best in ST


def test_simcse_focal_best_is_a_sentence_transformers_folder(tmp_path, minilm_dir):
    """OUT/best loads with SentenceTransformer and gives the STS-B dev Spearman the run reported (±0.01)."""
    config = models.EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=160)  # fmt: skip
    ckpt = models.save_pretrained(tmp_path / "tiny", config, _perturbed(config, 0), tokenizer_from=minilm_dir)
    words = "the cat dog sat ran on mat fast slow red blue green big small".split()
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=6)) for _ in range(16)) + "\n")
    (tmp_path / "dev" / "STSBenchmark").mkdir(parents=True)
    (tmp_path / "dev" / "STSBenchmark" / "sts-dev.csv").write_text(STS_DEV.read_text())
    out = tmp_path / "run"
    results = _script("simcse_focal").main([
        "--corpus", str(corpus), "--sts-dev", str(tmp_path / "dev"), "--model", str(ckpt), "--max-steps", "2",
        "--batch-size", "8", "--max-length", "16", "--eval-every", "2", "--out", str(out), "--no-progress",
        "--no-tensorboard", "--no-start-eval", "--lr", "1e-3",
    ])  # fmt: skip
    best = out / "best"
    modules = json.loads((best / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]  # [CLS], no MLP, no norm
    model = sentence_transformers.SentenceTransformer(str(best), device="cpu", local_files_only=True)
    dev = sts.load_sts_sets(tmp_path / "dev", names=["STSBenchmark-dev"])
    theirs = ev.evaluate_sts(lambda s: model.encode(list(s), convert_to_numpy=True), dev, geometry=False)
    assert abs(theirs["STSBenchmark-dev"]["spearman"] - results["best_dev_spearman"]) <= 0.01
    # Per sentence: the vectors hnjax evaluated ([CLS] of the selected encoder) and SentenceTransformer's agree.
    encoder, params = models.from_pretrained(best)
    sentences = sorted({s for sub in dev["STSBenchmark-dev"].subsets.values() for s in sub.sentences1})
    ours = embed.encode_sentences(encoder, params, tokenize.load_tokenizer(best), sentences, pooling="cls",
                                  max_length=128, progress=False)  # fmt: skip
    assert np.min(_cosines(ours, model.encode(sentences, convert_to_numpy=True))) >= 0.9999


# ------------------------------------------------------------------------------------------------ cross-encoder


def _pair_batch(tok, max_length=24):
    enc = tokenize.batch_encode(tok, [q for q, _ in PAIRS], text_pairs=[d for _, d in PAIRS], max_length=max_length)
    return enc.input_ids, enc.attention_mask, enc.token_type_ids


def _train_reranker(config, key, ids, mask, types, steps=4):
    """A few AdamW steps of the NCE loss on one batch of [gold, negative] pairs; returns (model, params, losses)."""
    encoder = models.BertModel(config)
    head = models.poolers.CrossEncoderHead(dropout_rate=0.1)
    head_params = head.init(key, jnp.zeros((1, 1, config.hidden_size)), jnp.ones((1, 1), bool))["params"]
    cross = reranker.CrossEncoder(encoder, head)
    params = {"encoder": _perturbed(config, 5), "head": head_params}
    n = ids.shape[0] // 2
    batch = {name: x.reshape(n, 2, -1) for name, x in (("pair_ids", ids), ("pair_mask", mask), ("pair_types", types))}
    opt = optax.adamw(1e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        (loss, _), grads = jax.value_and_grad(cross.loss, has_aux=True)(params, batch, key)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for i in range(steps):
        params, state, loss = step(params, state, jax.random.fold_in(key, i))
        losses.append(float(loss))
    return cross, params, losses


def test_trained_reranker_exports_to_transformers_and_cross_encoder(tmp_path, tokenizer, minilm_dir):
    config = _tiny_config()
    ids, mask, types = _pair_batch(tokenizer)
    cross, params, losses = _train_reranker(config, jax.random.key(0), ids, mask, types)
    assert losses[-1] < losses[0]  # it trained (gold pairs are the even rows)
    ours = np.asarray(jax.jit(cross.scores)(params, ids[None], mask[None], types[None]))[0]  # [P]
    path = export.export_reranker(tmp_path / "ce", cross, params, tokenizer_from=minilm_dir, max_length=24)

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True).eval()
    assert type(hf).__name__ == "BertForSequenceClassification" and hf.config.num_labels == 1
    with torch.no_grad():
        logits = hf(input_ids=torch.from_numpy(np.asarray(ids, np.int64)),
                    attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
                    token_type_ids=torch.from_numpy(np.asarray(types, np.int64))).logits[:, 0].numpy()  # fmt: skip
    np.testing.assert_allclose(logits, ours, atol=1e-4, rtol=0)
    ce = sentence_transformers.CrossEncoder(str(path), device="cpu", local_files_only=True)
    predicted = ce.predict(PAIRS, convert_to_numpy=True)
    np.testing.assert_allclose(predicted, ours, atol=1e-4, rtol=0)  # raw scores: no sigmoid
    for q in range(0, len(PAIRS), 2):  # same ranking of each query's two documents
        assert np.argmax(predicted[q : q + 2]) == np.argmax(ours[q : q + 2])
    ranked = ce.rank(PAIRS[0][0], [d for _, d in PAIRS[:2]])
    assert ranked[0]["corpus_id"] == int(np.argmax(ours[:2]))

    # Back into hnjax: the encoder and both head layers resume as they were.
    _, encoder_params = models.from_pretrained(path)
    _, head_params = models.init_cross_encoder_head(config, jax.random.key(9), checkpoint=path, dropout_rate=0.0)
    jax.tree.map(np.testing.assert_array_equal, encoder_params, jax.device_get(params["encoder"]))
    jax.tree.map(np.testing.assert_array_equal, head_params, jax.device_get(params["head"]))
    pre = models.load_pretrained(path)
    assert sorted(pre.head) == ["pooler", "score"] and pre.pipeline is None and not pre.ignored


def test_roberta_cross_encoder_and_refused_heads(tmp_path, minilm_dir):
    config = _tiny_config("roberta")
    head = models.poolers.CrossEncoderHead(dropout_rate=0.0)
    head_params = head.init(jax.random.key(1), jnp.zeros((1, 1, 32)), jnp.ones((1, 1), bool))["params"]
    head_params = jax.tree.map(lambda x: x + 0.1, head_params)
    encoder_params = _perturbed(config, 2)
    path = models.save_cross_encoder(tmp_path / "rob", config, encoder_params, head, head_params,
                                     tokenizer_from=minilm_dir)  # fmt: skip
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 30522, (3, 10))
    mask = np.ones((3, 10), bool)
    mask[1, 6:] = False
    ids[0, 0] = ids[1, 0] = ids[2, 0] = 0
    ids = np.where(mask, ids, 1)  # RoBERTa pads with 1
    cross = reranker.CrossEncoder(models.BertModel(config), head)
    score = jax.jit(lambda p, i, m: cross.scores(p, i[None], m[None], jnp.zeros_like(i)[None])[0])
    ours = np.asarray(score({"encoder": encoder_params, "head": head_params}, ids, mask))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True).eval()
    assert type(hf).__name__ == "RobertaForSequenceClassification"
    with torch.no_grad():
        logits = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64))).logits
    np.testing.assert_allclose(logits[:, 0].numpy(), ours, atol=1e-4, rtol=0)
    _, back = models.init_cross_encoder_head(config, jax.random.key(3), checkpoint=path)
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(head_params))
    # Heads no other library computes are refused with the reason.
    with pytest.raises(ValueError, match="masked mean has no transformers"):
        mean_head = models.poolers.CrossEncoderHead(pooling="mean")
        models.save_cross_encoder(tmp_path / "m", config, encoder_params, mean_head, head_params,
                                  tokenizer_from=minilm_dir)  # fmt: skip
    with pytest.raises(ValueError, match=r"\['extra'\] are not part"):
        models.save_cross_encoder(tmp_path / "x", config, encoder_params, head, {**head_params, "extra": {}},
                                  tokenizer_from=minilm_dir)  # fmt: skip


def test_reranker_options_outside_a_classifier_are_refused(tmp_path, minilm_dir):
    @dataclasses.dataclass(frozen=True)
    class WithRetrieverScore(reranker.CrossEncoder):  # stands for any option that changes the score
        retriever_weight: float = 0.0

    config = _tiny_config()
    head = models.poolers.CrossEncoderHead()
    params = {"encoder": {}, "head": {}}
    with pytest.raises(ValueError, match=r"reranker.retriever_weight=0.5: a one-label sequence classifier cannot"):
        export.export_reranker(tmp_path, WithRetrieverScore(models.BertModel(config), head, 0.5), params,
                               tokenizer_from=minilm_dir, max_length=16)  # fmt: skip
    with pytest.raises(ValueError, match=r"params: \['retriever'\] are not part of a cross-encoder"):
        export.export_reranker(tmp_path, reranker.CrossEncoder(models.BertModel(config), head),
                               {**params, "retriever": {}}, tokenizer_from=minilm_dir, max_length=16)  # fmt: skip
    assert not any(tmp_path.iterdir())  # nothing written


def test_classifier_with_several_labels_is_reported_not_used(tmp_path, minilm_dir):
    config = _tiny_config()
    hf_config = transformers.BertConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"},
                                        num_labels=3)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(hf_config).save_pretrained(str(tmp_path), safe_serialization=True)
    pre = models.load_pretrained(tmp_path)
    assert sorted(pre.head) == ["pooler"] and any("3 labels" in line for line in pre.ignored)


# --------------------------------------------------------------------------------------------------- retrievers


def _torch_score(config: dict, q_tokens, d_tokens, codes):
    """The score rebuilt from hnjax_retriever.json alone, in float64 (the reader another framework would write)."""
    q_kind, d_kind = config["mention_vectors"], config["entity_vectors"]
    x = q_tokens[:1] if q_kind == "cls" else q_tokens  # [m, D]
    if q_kind == "poly_codes":
        x = torch.softmax(codes @ q_tokens.T, dim=-1) @ q_tokens  # [m codes, D]
    y = {"cls": d_tokens[:1], "all_tokens": d_tokens, "first_n": d_tokens[: config.get("num_entity_vectors", 0)]}[
        d_kind
    ]
    sim = x @ y.T  # [m, n]
    if config["scorer"] == "poly":
        return float((torch.softmax(sim, dim=0) * sim).sum())
    return float(sim.max(dim=1).values.sum())


@pytest.mark.parametrize(("scorer", "shared"), [("dual", False), ("multi", True), ("som", False), ("poly", False)])
def test_retriever_export_rebuilds_the_score(tmp_path, tokenizer, minilm_dir, scorer, shared):
    config = _tiny_config()
    cfg = retriever.RetrieverConfig(scorer=scorer, num_entity_vectors=3, num_codes=4, shared_encoder=shared)
    ret = retriever.Retriever(models.BertModel(config), cfg)
    params = ret.init(_perturbed(config, 7), jax.random.key(8))
    if not shared:
        params["entity"] = _perturbed(config, 9)
    mentions, entities = SENTENCES[:3], SENTENCES[2:]
    qe = tokenize.batch_encode(tokenizer, mentions, max_length=24)
    de = tokenize.batch_encode(tokenizer, entities, max_length=24)
    q, qm = jax.jit(ret.encode_mentions)(params, qe.input_ids, qe.attention_mask)
    d, dm = jax.jit(ret.encode_entities)(params, de.input_ids, de.attention_mask)
    ours = np.asarray(jax.jit(ret.score)(q, qm, d, dm))  # [3, 3]
    path = export.export_retriever(tmp_path / "ret", ret, params, tokenizer_from=minilm_dir, max_length=24)

    conf = json.loads((path / export.RETRIEVER_CONFIG).read_text())
    assert conf["scorer"] == scorer and (conf["entity_encoder"] == "mention") == shared
    codes = None
    if scorer == "poly":
        assert conf["num_codes"] == 4
        codes = torch.from_numpy(
            safetensors_numpy.load_file(str(path / conf["codes"]["file"]))[conf["codes"]["tensor"]]
        )
        codes = codes.double()
    load = lambda name: sentence_transformers.SentenceTransformer(str(path / name), device="cpu",  # noqa: E731
                                                                  local_files_only=True)  # fmt: skip
    m_model, e_model = load(conf["mention_encoder"]), load(conf["entity_encoder"])
    q_tok = [t.double() for t in m_model.encode(mentions, output_value="token_embeddings", convert_to_numpy=False)]
    d_tok = [t.double() for t in e_model.encode(entities, output_value="token_embeddings", convert_to_numpy=False)]
    theirs = np.array([[_torch_score(conf, a, b, codes) for b in d_tok] for a in q_tok])
    _close(ours, theirs)
    if scorer == "dual":  # the folder's own sentence embedding is the [CLS] vector the dual score uses
        v = e_model.encode(entities, convert_to_numpy=True)
        _close(v, np.asarray(d[:, 0]))

    # Back into hnjax: same model and parameters.
    back, back_params, _ = export.load_retriever_export(path)
    assert (back.config.scorer, back.config.shared_encoder) == (scorer, shared)
    if scorer in ("multi", "poly"):
        field = "num_entity_vectors" if scorer == "multi" else "num_codes"
        assert getattr(back.config, field) == getattr(cfg, field)
    jax.tree.map(np.testing.assert_array_equal, back_params, jax.device_get(params))
