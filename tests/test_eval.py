"""Tests of hnjax.eval against independent float64 references (SciPy, explicit loops)."""

import dataclasses
import doctest
import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import examples

from hnjax import eval as ev

# ---------------------------------------------------------------- ranks and Spearman


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_levels", [2, 5, None])  # few distinct values = many ties; None = continuous
def test_spearman_matches_scipy(seed, n_levels):
    rng = np.random.default_rng(seed)
    n = 50
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    if n_levels is not None:
        y = np.round(rng.integers(0, n_levels, size=n) + 0.3 * x)
    assert ev.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(ev.average_ranks(y), scipy.stats.rankdata(y), atol=0)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=examples(60))
@given(
    st.lists(
        st.tuples(st.integers(-3, 3), st.floats(-5, 5, allow_nan=False, allow_infinity=False)),
        min_size=3,
        max_size=30,
    )
)
def test_spearman_property_vs_scipy(pairs):
    x = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    expected = scipy.stats.spearmanr(x, y).statistic
    got = ev.spearman(x, y)
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-10)


def test_spearman_known_values_and_symmetry():
    assert ev.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ev.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Hand computation: ranks x = [1, 2, 3], ranks y = [1, 3, 2] → 1 − 6·2 / (3·8) = 0.5.
    assert ev.spearman([1.0, 2.0, 3.0], [10.0, 30.0, 20.0]) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert ev.spearman(x, y) == pytest.approx(ev.spearman(y, x), abs=1e-15)
    # Invariant to strictly increasing transforms.
    assert ev.spearman(x, y) == pytest.approx(ev.spearman(np.exp(x), y**3), abs=1e-12)


def test_sts_spearman_is_times_100():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert ev.sts_spearman(x, y) == pytest.approx(100 * scipy.stats.spearmanr(x, y).statistic, abs=1e-10)


def test_spearman_constant_input_is_nan():
    assert math.isnan(ev.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "same shape"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
        ([1.0], [2.0], "at least 2"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
    ],
)
def test_spearman_rejects_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        ev.spearman(x, y)


# ---------------------------------------------------------------- cosine, alignment, uniformity


def test_cosine_similarity_matches_loop():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    a[3] = 0.0  # zero vector: similarity 0 by the eps floor
    expected = []
    for u, v in zip(a, b):
        nu, nv = math.sqrt(sum(t * t for t in u)), math.sqrt(sum(t * t for t in v))
        expected.append(sum(p * q for p, q in zip(u, v)) / (max(nu, 1e-8) * max(nv, 1e-8)))
    np.testing.assert_allclose(ev.cosine_similarity(a, b), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ev.cosine_similarity(a.astype(np.float32), b), expected, rtol=1e-6, atol=1e-7)


def test_cosine_similarity_rejects_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        ev.cosine_similarity(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        ev.cosine_similarity(np.ones(4), np.ones(4))


def _unit(v):
    n = math.sqrt(sum(t * t for t in v))
    return [t / n for t in v]


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_loop(alpha):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    ref = 0.0
    for u, v in zip(x, y):
        u, v = _unit(u), _unit(v)
        ref += math.sqrt(sum((p - q) ** 2 for p, q in zip(u, v))) ** alpha
    ref /= len(x)
    assert ev.alignment(x, y, alpha=alpha) == pytest.approx(ref, rel=1e-12)
    # Already-normalised input with normalize=False gives the same value.
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert ev.alignment(xn, yn, alpha=alpha, normalize=False) == pytest.approx(ref, rel=1e-12)


def _uniformity_ref(x, t):
    x = [_unit(v) for v in x]
    terms = [
        math.exp(-t * sum((p - q) ** 2 for p, q in zip(x[i], x[j])))
        for i, j in itertools.combinations(range(len(x)), 2)
    ]
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("n", [2, 3, 17])
@pytest.mark.parametrize("block_size", [1, 4, 1024])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_uniformity_matches_pairwise_loop(n, block_size, t):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6))
    got = ev.uniformity(x, t=t, block_size=block_size)
    assert got == pytest.approx(_uniformity_ref(x, t), rel=1e-10, abs=1e-12)


def test_uniformity_extremes():
    # Identical points: every distance 0, log mean exp 0 = 0 (the maximum). Antipodal pair: −4t.
    assert ev.uniformity(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)
    assert ev.uniformity([[0.0, 2.0], [0.0, -3.0]], t=2.0) == pytest.approx(-8.0)
    # Large t: the log-sum-exp stays finite where a naive mean of exps underflows to log(0).
    x = np.random.default_rng(4).normal(size=(10, 3))
    assert np.isfinite(ev.uniformity(x, t=500.0))


def test_alignment_uniformity_reject_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        ev.uniformity(np.ones((1, 3)))
    with pytest.raises(ValueError, match="t: expected > 0"):
        ev.uniformity(np.ones((3, 3)), t=0.0)
    with pytest.raises(ValueError, match="alpha"):
        ev.alignment(np.ones((3, 3)), np.ones((3, 3)), alpha=0.0)
    with pytest.raises(ValueError, match="same shape"):
        ev.alignment(np.ones((3, 3)), np.ones((2, 3)))


# ---------------------------------------------------------------- retrieval and reranking


def test_recall_at_k_single_gold_matches_reference():
    rng = np.random.default_rng(5)
    q, k = 40, 16
    ranked = np.stack([rng.permutation(30)[:k] for _ in range(q)])
    gold = rng.integers(0, 30, size=q)
    got = ev.recall_at_k(ranked, gold, ks=(1, 4, 16))
    for cut in (1, 4, 16):
        ref = np.mean([gold[i] in set(ranked[i, :cut].tolist()) for i in range(q)])
        assert got[f"recall@{cut}"] == pytest.approx(ref, abs=0)
    assert set(got) == {"recall@1", "recall@4", "recall@16"}


def test_recall_at_k_gold_sets():
    ranked = [[1, 2, 3, 4], [9, 8, 7, 6], [-1, -1, -1, -1]]  # third query: padding only
    gold = [{2, 4}, [6], (5, 1)]
    frac = ev.recall_at_k(ranked, gold, ks=(1, 2, 4))
    # Query 0: 0/2, 1/2, 2/2; query 1: 0, 0, 1; query 2: 0, 0, 0.
    assert frac == pytest.approx({"recall@1": 0.0, "recall@2": 0.5 / 3, "recall@4": 2.0 / 3})
    anyhit = ev.recall_at_k(ranked, gold, ks=(2, 4), multi_gold="any")
    assert anyhit == pytest.approx({"recall@2": 1.0 / 3, "recall@4": 2.0 / 3})


def test_recall_at_k_validation():
    with pytest.raises(ValueError, match=r"\[1, K = 2\]"):
        ev.recall_at_k([[1, 2]], [1], ks=(3,))
    with pytest.raises(ValueError, match="one entry per query"):
        ev.recall_at_k([[1, 2], [3, 4]], [1], ks=(1,))
    with pytest.raises(ValueError, match="empty gold set"):
        ev.recall_at_k([[1, 2]], [set()], ks=(1,))
    with pytest.raises(ValueError, match="2-D"):
        ev.recall_at_k([1, 2], [1], ks=(1,))
    with pytest.raises(ValueError, match="multi_gold"):
        ev.recall_at_k([[1, 2]], [1], ks=(1,), multi_gold="all")


def test_normalized_and_unnormalized_accuracy():
    rng = np.random.default_rng(6)
    q, k = 200, 8
    cands = np.stack([rng.permutation(50)[:k] for _ in range(q)])
    gold = rng.integers(0, 50, size=q)
    pred = np.where(rng.random(q) < 0.6, gold, cands[:, 0])  # right or the first candidate
    in_cands = [gold[i] in cands[i].tolist() for i in range(q)]
    correct_and_covered = sum(1 for i in range(q) if in_cands[i] and pred[i] == gold[i])
    norm_ref = correct_and_covered / sum(in_cands)
    unnorm_ref = sum(1 for i in range(q) if pred[i] == gold[i]) / q
    assert ev.normalized_accuracy(pred, gold, cands) == pytest.approx(norm_ref, abs=0)
    assert ev.unnormalized_accuracy(pred, gold) == pytest.approx(unnorm_ref, abs=0)
    # A prediction drawn from the candidates is right only if the gold is there: unnorm = norm × coverage.
    pred_from_cands = np.where(np.array(in_cands) & (rng.random(q) < 0.5), gold, cands[:, -1])
    assert ev.unnormalized_accuracy(pred_from_cands, gold) == pytest.approx(
        ev.normalized_accuracy(pred_from_cands, gold, cands) * np.mean(in_cands)
    )


def test_accuracy_edge_cases():
    assert math.isnan(ev.normalized_accuracy([1], [2], [[3, 4]]))
    with pytest.raises(ValueError, match="same shape"):
        ev.unnormalized_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match=r"\[Q, K\]"):
        ev.normalized_accuracy([1, 2], [1, 2], [[1, 2]])


# ---------------------------------------------------------------- evaluate_sts


@dataclasses.dataclass(frozen=True)
class _Pairs:
    sentences1: tuple
    sentences2: tuple
    scores: np.ndarray
    skipped_empty_gold: int = 0


@dataclasses.dataclass(frozen=True)
class _Set:
    subsets: dict


def _toy_sets(rng):
    words = [f"w{i}" for i in range(40)]

    def pairs(p, skipped=0):
        s1 = tuple(rng.choice(words) + " " + rng.choice(words) for _ in range(p))
        s2 = tuple(rng.choice(words) + " " + rng.choice(words) for _ in range(p))
        return _Pairs(s1, s2, np.round(rng.uniform(0, 5, size=p), 1), skipped)

    return {
        "STS12": _Set({"a": pairs(12, skipped=2), "b": pairs(7)}),
        "STSBenchmark-dev": _Set({"STSBenchmark-dev": pairs(15)}),
    }


def test_sts_cosine_agreement_is_the_largest_pair_cosine_difference():
    rng = np.random.default_rng(11)
    sets = _toy_sets(rng)
    sentences = {s for st_ in sets.values() for p in st_.subsets.values() for s in p.sentences1 + p.sentences2}
    a = {s: rng.normal(size=6) for s in sentences}
    b = {s: v + 0.05 * rng.normal(size=6) for s, v in a.items()}
    got = ev.sts_cosine_agreement(sets, a, b)
    assert set(got) == set(sets)
    for name, st_ in sets.items():
        diffs = [
            abs(float(np.dot(a[x], a[y]) / np.linalg.norm(a[x]) / np.linalg.norm(a[y]))
                - float(np.dot(b[x], b[y]) / np.linalg.norm(b[x]) / np.linalg.norm(b[y])))
            for p in st_.subsets.values()
            for x, y in zip(p.sentences1, p.sentences2)
        ]  # fmt: skip
        assert got[name] == pytest.approx(max(diffs), rel=1e-9, abs=1e-12)
    assert ev.sts_cosine_agreement(sets, a, a) == {name: 0.0 for name in sets}


def test_evaluate_sts_matches_reference():
    rng = np.random.default_rng(7)
    sets = _toy_sets(rng)
    table = {}
    calls = []

    def embed(sentences):
        calls.append(len(sentences))
        return np.stack([table.setdefault(s, rng.normal(size=8)) for s in sentences])

    res = ev.evaluate_sts(embed, sets)
    assert len(calls) == 1  # one call for all sets
    assert calls[0] == len(
        {s for st_ in sets.values() for p in st_.subsets.values() for s in p.sentences1 + p.sentences2}
    )

    def cos_ref(p):
        return [
            float(np.dot(table[a], table[b]) / (np.linalg.norm(table[a]) * np.linalg.norm(table[b])))
            for a, b in zip(p.sentences1, p.sentences2)
        ]

    sub = sets["STS12"].subsets
    all_cos = cos_ref(sub["a"]) + cos_ref(sub["b"])
    all_gold = np.concatenate([sub["a"].scores, sub["b"].scores])
    r12 = res["STS12"]
    assert r12["spearman"] == pytest.approx(100 * scipy.stats.spearmanr(all_cos, all_gold).statistic, abs=1e-9)
    assert r12["pairs"] == 19
    assert r12["skipped_empty_gold"] == 2
    ra = 100 * scipy.stats.spearmanr(cos_ref(sub["a"]), sub["a"].scores).statistic
    rb = 100 * scipy.stats.spearmanr(cos_ref(sub["b"]), sub["b"].scores).statistic
    assert r12["subsets"]["a"] == pytest.approx({"spearman": ra, "pairs": 12}, abs=1e-9)
    assert r12["mean"] == pytest.approx((ra + rb) / 2, abs=1e-9)
    assert r12["wmean"] == pytest.approx((12 * ra + 7 * rb) / 19, abs=1e-9)

    p = sets["STSBenchmark-dev"].subsets["STSBenchmark-dev"]
    rd = res["STSBenchmark-dev"]
    assert rd["spearman"] == pytest.approx(100 * scipy.stats.spearmanr(cos_ref(p), p.scores).statistic, abs=1e-9)
    assert "subsets" not in rd and "skipped_empty_gold" not in rd
    positive = p.scores > 4
    left = np.stack([table[s] for s in p.sentences1])
    right = np.stack([table[s] for s in p.sentences2])
    assert positive.any()
    assert rd["alignment"] == pytest.approx(_ref_align(left[positive], right[positive]), rel=1e-10)
    assert rd["uniformity"] == pytest.approx(_uniformity_ref(np.concatenate([left, right]), 2.0), rel=1e-10)
    assert "avg7" not in res


def _ref_align(x, y):
    return float(np.mean([sum((p - q) ** 2 for p, q in zip(_unit(u), _unit(v))) for u, v in zip(x, y)]))


def test_evaluate_sts_avg7_when_all_seven_present():
    rng = np.random.default_rng(8)
    sets = {}
    for name in ev.SEVEN_TASKS:
        sets[name] = _toy_sets(rng)["STSBenchmark-dev"]
    table = {}
    res = ev.evaluate_sts(lambda ss: np.stack([table.setdefault(s, rng.normal(size=4)) for s in ss]), sets)
    assert res["avg7"]["spearman"] == pytest.approx(np.mean([res[n]["spearman"] for n in ev.SEVEN_TASKS]))
    assert res["avg7"]["pairs"] == 7 * 15


def test_evaluate_sts_rejects_bad_embeddings():
    sets = _toy_sets(np.random.default_rng(9))
    with pytest.raises(ValueError, match=r"\[S, D\]"):
        ev.evaluate_sts(lambda ss: np.ones((len(ss) - 1, 4)), sets)
    with pytest.raises(ValueError, match="empty"):
        ev.evaluate_sts(lambda ss: np.ones((len(ss), 4)), {})


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (0, 5), (3, 9), (11, 46), (20, 20), (1, 30)])
def test_mcnemar_exact_equals_scipy_binomial_test(only_a, only_b):
    scipy_stats = pytest.importorskip("scipy.stats")
    n = only_a + only_b
    expected = 1.0 if n == 0 else scipy_stats.binomtest(only_b, n, 0.5).pvalue
    assert ev.mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_paired_comparison_counts_discordant_items():
    a = np.array([True, True, False, False, True, False])
    b = np.array([True, False, True, True, True, True])
    c = ev.paired_comparison(a, b)
    assert (c["items"], c["only_a"], c["only_b"]) == (6, 1, 3)
    assert (c["accuracy_a"], c["accuracy_b"]) == (3 / 6, 5 / 6)
    assert c["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # P(X <= 1), X ~ Bin(4, 1/2), two-sided
    with pytest.raises(ValueError, match="only_a: expected an int >= 0"):
        ev.mcnemar_exact(-1, 2)
    with pytest.raises(ValueError, match="correct_a, correct_b"):
        ev.paired_comparison(a, b[:5])
    with pytest.raises(ValueError, match="correct_a, correct_b"):
        ev.paired_comparison(a.astype(int), b)


def test_docstring_examples():
    assert doctest.testmod(ev, raise_on_error=False).failed == 0
