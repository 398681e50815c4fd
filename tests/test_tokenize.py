"""Tests of hnjax.data.tokenize: bucket choice, truncation counting and reporting, text pairs, validation.

The reference for token ids is the tokenizer itself called on one text at a time; what is under test is batching,
bucketing, padding and truncation bookkeeping.
"""

import logging

import numpy as np
import pytest

from hnjax.data import tokenize

CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def tok():
    return tokenize.load_tokenizer("all-MiniLM-L6-v2")


def _one(tok, text, pair=None, **kw):
    return tok(text, pair, **kw)


def test_default_buckets():
    assert tokenize.default_buckets(128) == (8, 16, 32, 64, 128)
    assert tokenize.default_buckets(100) == (8, 16, 32, 64, 100)
    assert tokenize.default_buckets(8) == (8,)
    assert tokenize.default_buckets(5) == (5,)
    with pytest.raises(ValueError, match="max_length"):
        tokenize.default_buckets(0)


@pytest.mark.parametrize(
    "longest, expected", [(1, 8), (8, 8), (9, 16), (17, 32), (33, 64), (64, 64), (65, 128), (128, 128)]
)
def test_choose_bucket(longest, expected):
    assert tokenize.choose_bucket(longest, tokenize.default_buckets(128)) == expected


def test_batch_padded_to_smallest_bucket(tok, caplog):
    texts = ["hello world", "a b c d e f g h i j"]  # 4 and 12 tokens with [CLS] and [SEP]
    with caplog.at_level(logging.WARNING):
        enc = tokenize.batch_encode(tok, texts, max_length=64)
    assert enc.input_ids.shape == enc.attention_mask.shape == enc.token_type_ids.shape == (2, 16)
    assert enc.input_ids.dtype == np.int32 and enc.attention_mask.dtype == np.bool_
    assert enc.n_truncated == 0 and "truncated" not in caplog.text
    for i, text in enumerate(texts):
        ids = _one(tok, text)["input_ids"]
        np.testing.assert_array_equal(enc.input_ids[i, : len(ids)], ids)
        assert (enc.input_ids[i, len(ids) :] == PAD).all()
        np.testing.assert_array_equal(enc.attention_mask[i], np.arange(16) < len(ids))
    assert not enc.token_type_ids.any()
    # Short batch → smallest bucket; custom buckets are honoured, max_length always added.
    assert tokenize.batch_encode(tok, ["hi"], max_length=64).input_ids.shape == (1, 8)
    assert tokenize.batch_encode(tok, texts, max_length=64, buckets=[5, 13]).input_ids.shape == (2, 13)
    assert tokenize.batch_encode(tok, texts, max_length=64, buckets=[5, 10]).input_ids.shape == (2, 64)


def test_truncation_is_counted_and_logged(tok, caplog):
    long = " ".join(["word"] * 40)
    texts = [long, "short", long + " more"]
    with caplog.at_level(logging.WARNING, logger="hnjax.data.tokenize"):
        enc = tokenize.batch_encode(tok, texts, max_length=16)
    assert enc.n_truncated == 2
    assert "truncated 2 of 3 texts" in caplog.text and "max_length=16" in caplog.text
    assert enc.input_ids.shape == (3, 16)
    for i in (0, 2):
        expected = _one(tok, texts[i], truncation=True, max_length=16)["input_ids"]
        np.testing.assert_array_equal(enc.input_ids[i], expected)
        assert enc.input_ids[i, 0] == CLS and enc.input_ids[i, -1] == SEP and enc.attention_mask[i].all()
    assert enc.attention_mask[1].sum() == 3  # [CLS] short [SEP]
    # Exactly max_length tokens is not a truncation.
    exact = " ".join(["word"] * 14)
    assert tokenize.batch_encode(tok, [exact], max_length=16).n_truncated == 0


def test_pairs(tok, caplog):
    a, b = ["how old are you", "what"], ["I am six", " ".join(["x"] * 30)]
    with caplog.at_level(logging.WARNING, logger="hnjax.data.tokenize"):
        enc = tokenize.batch_encode(tok, a, text_pairs=b, max_length=24)
    assert enc.n_truncated == 1 and "truncated 1 of 2 pairs" in caplog.text
    assert enc.input_ids.shape == (2, 24)
    first = _one(tok, a[0], b[0])
    n = len(first["input_ids"])
    np.testing.assert_array_equal(enc.input_ids[0, :n], first["input_ids"])
    np.testing.assert_array_equal(enc.token_type_ids[0, :n], first["token_type_ids"])
    assert enc.token_type_ids[0, :n].tolist() == [0] * 6 + [1] * 4  # [CLS] how old are you [SEP] | i am six [SEP]
    assert not enc.token_type_ids[0, n:].any()
    second = _one(tok, a[1], b[1], truncation=True, max_length=24)  # longest-first truncation of the pair
    np.testing.assert_array_equal(enc.input_ids[1], second["input_ids"])
    np.testing.assert_array_equal(enc.token_type_ids[1], second["token_type_ids"])
    assert enc.token_type_ids[1].sum() == 24 - 3  # "what" and two specials keep segment 0


def test_tokenizer_without_token_types(tok):
    class NoTypes:
        """A tokenizer that, like RoBERTa's, returns no token_type_ids."""

        pad_token_id = 7

        def __call__(self, *args, **kw):
            out = dict(tok(*args, **kw))
            out.pop("token_type_ids")
            return out

    enc = tokenize.batch_encode(NoTypes(), ["hello world", "a b c d e f g h i j k"], max_length=10)
    assert enc.n_truncated == 1 and enc.input_ids.shape == (2, 10)
    assert not enc.token_type_ids.any()
    assert (enc.input_ids[0, 4:] == 7).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(texts=[]), "texts: expected at least one"),
        (dict(texts=["a", 3]), r"texts\[1\]: expected a string"),
        (dict(texts=["a", "b"], text_pairs=["c"]), "text_pairs: expected 2"),
        (dict(texts=["a"], buckets=[8, 64]), "buckets"),
        (dict(texts=["a"], buckets=[0]), "buckets"),
    ],
)
def test_validation(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tokenize.batch_encode(tok, max_length=32, **kwargs)


def test_load_tokenizer_from_directory(tmp_path):
    with pytest.raises(ValueError, match="checkpoint directory"):
        tokenize.load_tokenizer(tmp_path / "missing")
