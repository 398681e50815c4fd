"""Tests of the STS loaders (hnjax.data.sts), sentence encoding (hnjax.embed) and experiments/sts_eval.py.

Fixtures in tests/data/sts/: `senteval/` holds STS12, STS16, STS-B dev/test and SICK-R test in SentEval's layout and
formats (empty and whitespace-only gold lines, STS-B lines with extra trailing columns, a sentence with quotes, a file
without a final newline); `bad/` holds files with one defect each.
"""

import importlib.util
import json
import logging
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest
import scipy.stats
from numerics import assert_close

from hnjax import embed, models
from hnjax import eval as ev
from hnjax.data import sts, tokenize

ROOT = pathlib.Path(__file__).resolve().parent
DATA = ROOT / "data" / "sts"
SENTEVAL = DATA / "senteval"
BAD = DATA / "bad"
REPO = ROOT.parent


# ---------------------------------------------------------------- independent SentEval-style readers


def _senteval_year(folder, subsets):
    """SentEval's STSEval.loadFile (senteval/sts.py), with its whitespace handling of the gold lines."""
    out = {}
    for subset in subsets:
        lines = (folder / f"STS.input.{subset}.txt").read_text(encoding="utf8").splitlines()
        sent1, sent2 = zip(*[line.split("\t") for line in lines])
        raw = np.array((folder / f"STS.gs.{subset}.txt").read_text(encoding="utf8").splitlines())
        keep = np.array([x.strip() != "" for x in raw])
        scores = [float(x) for x in raw[keep]]
        s1 = [" ".join(s.split()) for s, k in zip(sent1, keep) if k]
        s2 = [" ".join(s.split()) for s, k in zip(sent2, keep) if k]
        out[subset] = (s1, s2, scores, int((~keep).sum()))
    return out


def _senteval_stsb(path):
    """SentEval's STSBenchmarkEval.loadFile."""
    s1, s2, y = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.strip().split("\t")
            s1.append(" ".join(text[5].split()))
            s2.append(" ".join(text[6].split()))
            y.append(float(text[4]))
    return s1, s2, y


def _senteval_sick(path):
    """SentEval's SICKRelatednessEval.loadFile (header skipped, columns 1, 2, 3)."""
    s1, s2, y = [], [], []
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            text = line.strip().split("\t")
            s1.append(" ".join(text[1].split()))
            s2.append(" ".join(text[2].split()))
            y.append(float(text[3]))
    return s1, s2, y


# ---------------------------------------------------------------- loaders on the fixtures


@pytest.mark.parametrize("year", ["STS12", "STS16"])
def test_year_matches_senteval_reader(year):
    folder = SENTEVAL / "STS" / f"{year}-en-test"
    got = sts.load_sts_year(folder)
    assert got.name == year
    assert list(got.subsets) == list(sts.YEAR_SUBSETS[year])
    ref = _senteval_year(folder, sts.YEAR_SUBSETS[year])
    for subset, (s1, s2, scores, skipped) in ref.items():
        pairs = got.subsets[subset]
        assert list(pairs.sentences1) == s1
        assert list(pairs.sentences2) == s2
        np.testing.assert_array_equal(pairs.scores, scores)
        assert pairs.skipped_empty_gold == skipped
    # The fixtures skip one pair in every STS16 subset and one (whitespace-only gold line) in STS12 MSRpar.
    expected_skipped = 5 if year == "STS16" else 1
    assert sum(p.skipped_empty_gold for p in got.subsets.values()) == expected_skipped
    assert got.pairs == sum(len(r[2]) for r in ref.values())


@pytest.mark.parametrize("split", ["dev", "test"])
def test_stsb_matches_senteval_reader(split):
    path = SENTEVAL / "STS" / "STSBenchmark" / f"sts-{split}.csv"
    got = sts.load_stsb(path)
    assert got.name == f"STSBenchmark-{split}"
    (pairs,) = got.subsets.values()
    s1, s2, y = _senteval_stsb(path)
    assert list(pairs.sentences1) == s1 and list(pairs.sentences2) == s2
    np.testing.assert_array_equal(pairs.scores, y)
    assert pairs.extra_columns == (2 if split == "dev" else 0)
    if split == "dev":
        assert 'The "stock market" fell sharply today.' in pairs.sentences1  # quotes are text, not csv quoting


def test_sick_matches_senteval_reader():
    path = SENTEVAL / "SICK" / "SICK_test_annotated.txt"
    got = sts.load_sick(path)
    (pairs,) = got.subsets.values()
    s1, s2, y = _senteval_sick(path)
    assert got.name == "SICK-R"
    assert list(pairs.sentences1) == s1 and list(pairs.sentences2) == s2
    np.testing.assert_array_equal(pairs.scores, y)


def test_sick_columns_read_by_header_name(tmp_path):
    path = tmp_path / "SICK_test_annotated.txt"
    path.write_text("relatedness_score\tsentence_B\tpair_ID\tsentence_A\n4.5\tA man  sings.\t1\tA man is singing.\n")
    (pairs,) = sts.load_sick(path).subsets.values()
    assert pairs.sentences1 == ("A man is singing.",) and pairs.sentences2 == ("A man sings.",)
    assert pairs.scores.tolist() == [4.5]


def test_line_handling(tmp_path):
    # CRLF endings, a BOM, and a Unicode line separator inside a sentence (kept: only newlines end a line).
    folder = tmp_path / "STS13-en-test"
    folder.mkdir()
    for subset in sts.YEAR_SUBSETS["STS13"]:
        text = "\ufeffA\u2028B sentence.\tAnother one.\r\nSecond  pair\there\r\n"
        (folder / f"STS.input.{subset}.txt").write_bytes(text.encode("utf-8"))
        (folder / f"STS.gs.{subset}.txt").write_bytes(b"3.5\r\n\r\n")
    got = sts.load_sts_year(folder)
    pairs = got.subsets["FNWN"]
    assert pairs.sentences1 == ("A B sentence.",)  # str.split() treats U+2028 as whitespace
    assert pairs.skipped_empty_gold == 1 and pairs.scores.tolist() == [3.5]


# ---------------------------------------------------------------- discovery


def test_find_sets_from_any_level():
    expected = ["STS12", "STS16", "STSBenchmark-dev", "STSBenchmark-test", "SICK-R"]
    assert list(sts.find_sts_sets(DATA / "senteval")) == expected
    assert list(sts.find_sts_sets(SENTEVAL / "STS")) == expected[:4]
    assert list(sts.find_sts_sets(SENTEVAL / "STS" / "STSBenchmark")) == expected[2:4]
    assert list(sts.find_sts_sets(SENTEVAL / "STS" / "STS16-en-test")) == ["STS16"]
    loaded = sts.load_sts_sets(SENTEVAL)
    assert list(loaded) == expected
    assert {n: s.pairs for n, s in loaded.items()} == {
        "STS12": 19,
        "STS16": 15,
        "STSBenchmark-dev": 24,
        "STSBenchmark-test": 10,
        "SICK-R": 12,
    }
    assert list(sts.load_sts_sets(SENTEVAL, names=["SICK-R", "STS12"])) == ["STS12", "SICK-R"]


def test_find_sets_follows_symlinks_without_loops(tmp_path):
    (tmp_path / "data").symlink_to(SENTEVAL / "STS" / "STSBenchmark", target_is_directory=True)
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert list(sts.find_sts_sets(tmp_path)) == ["STSBenchmark-dev", "STSBenchmark-test"]


def test_discovery_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no STS set found"):
        sts.load_sts_sets(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        sts.find_sts_sets(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"\['STS13'\] not found"):
        sts.load_sts_sets(SENTEVAL, names=["STS13"])
    with pytest.raises(ValueError, match="names"):
        sts.load_sts_sets(SENTEVAL, names=["STS-B"])
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        shutil.copy(SENTEVAL / "STS" / "STSBenchmark" / "sts-dev.csv", tmp_path / copy / "sts-dev.csv")
    with pytest.raises(ValueError, match="STSBenchmark-dev found twice"):
        sts.find_sts_sets(tmp_path)


def test_year_subset_checks(tmp_path, caplog):
    folder = tmp_path / "STS12-en-test"
    shutil.copytree(SENTEVAL / "STS" / "STS12-en-test", folder)
    shutil.copy(folder / "STS.input.MSRpar.txt", folder / "STS.input.extra.txt")
    shutil.copy(folder / "STS.gs.MSRpar.txt", folder / "STS.gs.extra.txt")
    with caplog.at_level(logging.WARNING, logger="hnjax.data.sts"):
        got = sts.load_sts_year(folder)
    assert "extra" not in got.subsets and "['extra'] are not part of STS12" in caplog.text
    assert list(sts.load_sts_year(folder, "mine", subsets=["extra"]).subsets) == ["extra"]
    (folder / "STS.gs.MSRvid.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"STS\.gs\.MSRvid\.txt not found"):
        sts.load_sts_year(folder)
    with pytest.raises(ValueError, match="cannot infer the STS year"):
        sts.load_sts_year(tmp_path)


# ---------------------------------------------------------------- errors name file, line and field


@pytest.mark.parametrize(
    ("load", "path", "match"),
    [
        (sts.load_stsb, "stsb_short_line.csv", r"stsb_short_line\.csv:2: expected 7 tab-separated columns"),
        (sts.load_stsb, "stsb_bad_score.csv", r"stsb_bad_score\.csv:3: score \(column 5\): .* got 'five'"),
        (sts.load_stsb, "stsb_score_range.csv", r"stsb_score_range\.csv:1: score \(column 5\): .*\[0, 5\].*'5\.500'"),
        (sts.load_sick, "sick_header.txt", r"sick_header\.txt:1: header: .*missing \['relatedness_score'\]"),
        (sts.load_sick, "sick_score.txt", r"sick_score\.txt:3: relatedness_score: .*\[1, 5\], got '0\.5'"),
    ],
)
def test_bad_files_name_file_line_field(load, path, match):
    with pytest.raises(ValueError, match=match):
        load(BAD / path)


@pytest.mark.parametrize(
    ("folder", "match"),
    [
        ("sts_one_column", r"sts_one_column/STS\.input\.x\.txt:2: expected 2 tab-separated sentences"),
        ("sts_count", r"sts_count/STS\.gs\.x\.txt: has 1 lines but .*STS\.input\.x\.txt has 2"),
        ("sts_gold", r"sts_gold/STS\.gs\.x\.txt:2: gold score: .* got 'n/a'"),
    ],
)
def test_bad_sts_subsets(folder, match):
    with pytest.raises(ValueError, match=match):
        sts.load_sts_subset(BAD / folder / "STS.input.x.txt", BAD / folder / "STS.gs.x.txt")


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_bytes(b"a\tb\tc\td\t1.0\tfine\tfine\na\tb\tc\td\t1.0\tbad \xff byte\tx\n")
    with pytest.raises(ValueError, match=r"sts-dev\.csv:2: not valid UTF-8"):
        sts.load_stsb(path)


def test_all_empty_gold_is_an_error(tmp_path):
    (tmp_path / "STS.input.x.txt").write_text("a\tb\n")
    (tmp_path / "STS.gs.x.txt").write_text("\n")
    with pytest.raises(ValueError, match="no pair has a gold score"):
        sts.load_sts_subset(tmp_path / "STS.input.x.txt", tmp_path / "STS.gs.x.txt")


# ---------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def tokenizer():
    return tokenize.load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny(tokenizer):
    config = models.EncoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    params = models.init_params(config, jax.random.key(0))
    return config, models.BertModel(config), params


@pytest.fixture(scope="module")
def one_by_one(tiny, tokenizer):
    """Reference embeddings: each sentence alone (a batch of one, fixed padding), pooled with NumPy in float64."""
    _, model, params = tiny
    apply = jax.jit(lambda ids, mask: model.apply({"params": params}, ids, mask))
    pad_to = 64

    def run(sentences, pooling="mean"):
        out = []
        for s in sentences:
            tokens = tokenizer(s)["input_ids"]
            ids = np.zeros((1, pad_to), np.int32)
            ids[0, : len(tokens)] = tokens
            hidden = np.asarray(apply(jnp.asarray(ids), jnp.asarray(ids != 0)))[0, : len(tokens)]
            out.append(hidden.astype(np.float64).mean(0) if pooling == "mean" else hidden[0])
        return np.stack(out)

    return run


SENTENCES = [
    "A man is playing a guitar.",
    "Hi.",
    "The president visited the flooded region after the storm had passed through the valley last week.",
    "Two children are playing football outside.",
    "",
    "A cat sits on a mat.",
    "Heavy snow closed the roads.",
]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encode_sentences_matches_one_by_one(tiny, tokenizer, one_by_one, pooling):
    _, model, params = tiny
    kwargs = dict(pooling=pooling, batch_size=3, max_length=32, buckets=(32,), progress=False)  # one compilation
    got = embed.encode_sentences(model, params, tokenizer, SENTENCES, **kwargs)
    ref = one_by_one(SENTENCES, pooling)
    assert got.shape == (len(SENTENCES), 32) and got.dtype == np.float32
    assert_close(got, ref)
    encode_fn = embed.make_encode_fn(model, pooling=pooling, normalize=True)
    unit = embed.encode_sentences(model, params, tokenizer, SENTENCES, encode_fn=encode_fn, **kwargs)
    assert_close(unit, ref / np.linalg.norm(ref, axis=1, keepdims=True))


def test_encode_sentences_compiles_once_per_bucket(tiny, tokenizer, caplog):
    _, model, params = tiny
    traces = []
    inner = embed.make_encode_fn(model)

    def counting(params, ids, mask, types):
        traces.append(ids.shape)
        return inner(params, ids, mask, types)

    encode_fn = jax.jit(counting)
    many = [s for s in SENTENCES if s] * 5  # 30 sentences, batches of 4: the last one is padded
    with caplog.at_level(logging.WARNING):
        got = embed.encode_sentences(
            model, params, tokenizer, many, batch_size=4, max_length=16, encode_fn=encode_fn, progress=False
        )
    # Every batch has 4 rows, and lengths come from the buckets (8, 16): at most two compilations.
    assert {shape[0] for shape in traces} == {4}
    assert {shape[1] for shape in traces} <= {8, 16} and len(traces) <= 2
    assert "5 of 30 sentences truncated" in caplog.text  # the long sentence, 5 times, to 16 tokens
    assert_close(got[:6], got[6:12])  # same sentence, same vector


def test_packed_encoding_compiles_once_and_equals_padded(tiny, tokenizer):
    _, model, params = tiny
    traces = []
    inner = embed.make_packed_encode_fn(model, pooling="mean", row_length=24)

    def counting(params, stream):
        traces.append(stream["slots"].shape)
        return inner(params, stream)

    encode_fn = embed.PackedEncodeFn(jax.jit(counting), row_length=24)
    many = [s for s in SENTENCES if s] * 5  # 30 sentences, 4 per call at most
    got = embed.encode_sentences(model, params, tokenizer, many, batch_size=4, max_length=16, encode_fn=encode_fn,
                                 progress=False)  # fmt: skip
    assert len(traces) == 1  # one static shape for every group
    ref = embed.encode_sentences(model, params, tokenizer, many, batch_size=4, max_length=16, pack=False,
                                 buckets=(16,), progress=False)  # fmt: skip
    numerics.assert_close(got, ref)


def test_encode_sentences_validation(tiny, tokenizer):
    _, model, params = tiny
    with pytest.raises(ValueError, match="at least one sentence"):
        embed.encode_sentences(model, params, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="pooling"):
        embed.make_encode_fn(model, pooling="max")


# ---------------------------------------------------------------- the experiment script


def _script():
    spec = importlib.util.spec_from_file_location("sts_eval_script", REPO / "experiments" / "sts_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_experiment_on_saved_checkpoint(tiny, one_by_one, tmp_path):
    config, _, params = tiny
    ckpt = models.save_pretrained(tmp_path / "ckpt", config, params, tokenizer_from="all-MiniLM-L6-v2")
    out = tmp_path / "res" / "sts.json"
    _script().main(
        ["--model", str(ckpt), "--data", str(SENTEVAL), "--out", str(out), "--max-length", "32", "--no-progress"]
    )
    res = json.loads(out.read_text())
    assert set(res) == {"STS12", "STS16", "STSBenchmark-dev", "STSBenchmark-test", "SICK-R"}
    # Reference: sentences one by one, cosine in float64, SciPy Spearman over the pairs of all subsets.
    for name, s in sts.load_sts_sets(SENTEVAL).items():
        cos, gold = [], []
        for pairs in s.subsets.values():
            a = one_by_one(pairs.sentences1)
            b = one_by_one(pairs.sentences2)
            cos += list(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
            gold += list(pairs.scores)
        assert res[name]["pairs"] == len(gold)
        assert res[name]["spearman"] == pytest.approx(100 * scipy.stats.spearmanr(cos, gold).statistic, abs=1e-6)
    assert res["STS16"]["skipped_empty_gold"] == 5
    assert set(res["STS12"]["subsets"]) == set(sts.YEAR_SUBSETS["STS12"])
    assert np.isfinite(res["STSBenchmark-dev"]["uniformity"])


# ---------------------------------------------------------------- parity with PyTorch transformers


@pytest.mark.torch
def test_minilm_matches_pytorch_on_fixture(tokenizer):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    sets = sts.load_sts_sets(SENTEVAL, names=["STSBenchmark-dev"])
    (pairs,) = sets["STSBenchmark-dev"].subsets.values()
    sentences = list(pairs.sentences1) + list(pairs.sentences2)

    directory = str(models.resolve_checkpoint("all-MiniLM-L6-v2"))
    net = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        hidden = net(**batch).last_hidden_state.double()
    mask = batch["attention_mask"].unsqueeze(-1).double()
    ref = ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # sentence-transformers mean pooling
    n = len(pairs)
    cos_ref = np.sum(ref[:n] * ref[n:], 1) / (np.linalg.norm(ref[:n], axis=1) * np.linalg.norm(ref[n:], axis=1))
    spearman_ref = 100 * scipy.stats.spearmanr(cos_ref, pairs.scores).statistic

    model, params = models.from_pretrained("all-MiniLM-L6-v2")
    got = embed.encode_sentences(model, params, tokenizer, sentences, batch_size=16, progress=False)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    res = ev.evaluate_sts(lambda s: embed.encode_sentences(model, params, tokenizer, s, progress=False), sets)
    assert res["STSBenchmark-dev"]["spearman"] == pytest.approx(spearman_ref, abs=0.05)
    assert spearman_ref > 80  # the fixture is easy for a trained encoder; a broken pipeline would not get here
