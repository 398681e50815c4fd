"""Tests for hnjax.losses against independent float64 NumPy references written here (explicit loops)."""

import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numerics import assert_close, examples

from hnjax import losses

# ----------------------------------------------------------------------------------------------------------------
# float64 NumPy references (never call the code under test).
# ----------------------------------------------------------------------------------------------------------------


def np_logsumexp(row):
    row = np.asarray(row, np.float64)
    m = np.max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def ref_ce_rows(logits, labels):
    logits = np.asarray(logits, np.float64)
    return np.array([np_logsumexp(logits[i]) - logits[i, labels[i]] for i in range(logits.shape[0])])


def ref_nce_rows(scores, mask=None, log_q=None):
    scores = np.asarray(scores, np.float64)
    b, k = scores.shape
    out = np.zeros(b)
    for i in range(b):
        if mask is not None and not mask[i, 0]:
            out[i] = 0.0
            continue
        cols = [j for j in range(k) if mask is None or j == 0 or mask[i, j]]
        n_neg = k - 1 if mask is None else len(cols) - 1
        row = []
        for j in cols:
            s = scores[i, j]
            if log_q is not None and j >= 1:
                s = s - math.log(n_neg) - float(log_q[i, j])
            row.append(s)
        out[i] = np_logsumexp(row) - row[0]
    return out


def ref_nce(scores, mask=None, log_q=None):
    rows = ref_nce_rows(scores, mask, log_q)
    if mask is None:
        return rows.mean()
    valid = np.asarray(mask)[:, 0]
    return rows[valid].sum() / max(valid.sum(), 1)


def rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------------
# full_softmax_ce
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c", [(1, 2), (5, 7), (16, 1000)])
def test_full_softmax_ce_matches_reference(b, c):
    r = rng(b * c)
    logits = r.normal(size=(b, c)) * 3
    labels = r.integers(0, c, size=b)
    fn = jax.jit(losses.full_softmax_ce, static_argnames="reduction")
    rows = ref_ce_rows(logits, labels)
    assert_close(fn(jnp.float32(logits), jnp.int32(labels)), rows.mean())
    got = fn(jnp.float32(logits), jnp.int32(labels), reduction="none")
    assert got.shape == (b,) and got.dtype == jnp.float32
    assert_close(got, rows)


def test_full_softmax_ce_gradient():
    r = rng(1)
    with jax.enable_x64():
        logits = jnp.asarray(r.normal(size=(4, 6)))
        labels = jnp.asarray([0, 5, 2, 2])
        check_grads(jax.jit(lambda x: losses.full_softmax_ce(x, labels)), (logits,), order=1, modes=["rev"])


def test_full_softmax_ce_out_of_range_label_is_nan():
    got = jax.jit(losses.full_softmax_ce, static_argnames="reduction")(
        jnp.zeros((3, 3)), jnp.array([0, 3, -1]), reduction="none"
    )
    assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])


# ----------------------------------------------------------------------------------------------------------------
# nce
# ----------------------------------------------------------------------------------------------------------------

nce_jit = jax.jit(losses.nce, static_argnames="reduction")


@pytest.mark.parametrize("b,k", [(1, 2), (3, 2), (8, 5), (16, 65)])
def test_nce_matches_reference(b, k):
    r = rng(10 * b + k)
    scores = r.normal(size=(b, k)) * 4
    assert_close(nce_jit(jnp.float32(scores)), ref_nce(scores))
    got = nce_jit(jnp.float32(scores), reduction="none")
    assert_close(got, ref_nce_rows(scores))


def test_nce_is_cross_entropy_with_gold_at_zero():
    # Hand value: -log(e^2 / (e^2 + e^0 + e^1)).
    s = jnp.array([[2.0, 0.0, 1.0]])
    expected = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(1.0)))
    assert_close(nce_jit(s), expected)


def test_nce_mask_and_log_q_match_reference():
    r = rng(3)
    b, k = 6, 7
    scores = r.normal(size=(b, k)) * 3
    mask = r.random((b, k)) < 0.6
    mask[:, 0] = True
    mask[1, 1:] = False  # only the gold is real
    mask[2, 0] = False  # padding row
    q = r.random((b, k)) + 0.05
    log_q = np.log(q / q.sum(1, keepdims=True))
    log_q[~mask] = -np.inf  # masked entries may carry -inf
    args = (jnp.float32(scores), jnp.asarray(mask), jnp.float32(log_q))
    assert_close(nce_jit(*args), ref_nce(scores, mask, log_q))
    rows = nce_jit(*args, reduction="none")
    assert_close(rows, ref_nce_rows(scores, mask, log_q))
    assert rows[1] == 0.0 and rows[2] == 0.0
    # Without the mask, log_q uses the fixed K - 1.
    log_q_full = np.log(q / q.sum(1, keepdims=True))
    assert_close(nce_jit(jnp.float32(scores), None, jnp.float32(log_q_full)), ref_nce(scores, None, log_q_full))
    assert_close(nce_jit(jnp.float32(scores), jnp.asarray(mask)), ref_nce(scores, mask))


def test_nce_only_gold_real_is_zero_loss_and_finite_gradient():
    scores = jnp.array([[1.0, 5.0, 3.0], [0.5, -1.0, 2.0]])
    mask = jnp.array([[True, False, False], [True, False, False]])
    loss, grad = jax.jit(jax.value_and_grad(lambda s: losses.nce(s, mask)))(scores)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(grad, np.zeros((2, 3)))


def test_nce_padding_rows_get_no_gradient_and_all_padding_is_zero():
    scores = jnp.array([[1.0, 5.0, 3.0], [0.5, -1.0, 2.0]])
    mask = jnp.array([[True, True, True], [False, False, False]])
    value_and_grad = jax.jit(jax.value_and_grad(losses.nce))
    loss, grad = value_and_grad(scores, mask)
    assert_close(loss, ref_nce_rows(np.asarray(scores[:1]))[0])
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0)
    loss, grad = value_and_grad(scores, jnp.zeros((2, 3), bool))
    assert float(loss) == 0.0 and np.all(grad == 0)


def test_nce_gradient_check_float64():
    r = rng(4)
    with jax.enable_x64():
        scores = jnp.asarray(r.normal(size=(4, 5)))
        mask = jnp.asarray(r.random((4, 5)) < 0.7).at[:, 0].set(True)
        log_q = jnp.asarray(np.log(r.random((4, 5)) + 0.1))
        check_grads(jax.jit(lambda s: losses.nce(s, mask, log_q)), (scores,), order=1, modes=["rev"])
        check_grads(jax.jit(losses.nce), (scores,), order=1, modes=["rev"])


def test_nce_gradient_is_softmax_minus_onehot():
    # d l_i / d s_ik = (softmax_k - [k == 0]) / B, computed here in NumPy.
    r = rng(5)
    scores = r.normal(size=(3, 4))
    grad = jax.jit(jax.grad(losses.nce))(jnp.float32(scores))
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[:, 0] -= 1
    assert_close(grad, p / 3)


def test_nce_bfloat16_returns_float32_close_to_float32():
    r = rng(6)
    scores = r.normal(size=(8, 9)) * 3
    got = nce_jit(jnp.asarray(scores, jnp.bfloat16))
    assert got.dtype == jnp.float32
    ref = ref_nce(np.asarray(jnp.asarray(scores, jnp.bfloat16).astype(jnp.float32)))
    assert_close(got, ref)  # the log-sum-exp is float32: only input rounding differs
    assert_close(got, ref_nce(scores), rtol=2e-2)  # bf16 inputs: relative rounding 2^-9 of scores up to ~10


def _scores_strategy():
    # Few distinct shapes: each new shape is a compile, and the values are what the properties are about.
    shape = st.sampled_from([(1, 2), (3, 5)])
    return st.builds(lambda bk, seed: (*bk, seed), shape, st.integers(0, 2**31 - 1))


@hypothesis.settings(max_examples=examples(10))
@hypothesis.given(_scores_strategy(), st.sampled_from([1, 4]))
def test_nce_padding_candidates_never_change_loss(shape_seed, n_pad):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = r.normal(size=(b, k)) * 3
    log_q = np.log(r.random((b, k)) + 0.05)
    padded = np.concatenate([scores, r.normal(size=(b, n_pad)) * 10], axis=1)
    padded_log_q = np.concatenate([log_q, np.log(r.random((b, n_pad)) + 0.05)], axis=1)
    mask = np.concatenate([np.ones((b, k), bool), np.zeros((b, n_pad), bool)], axis=1)
    base = nce_jit(jnp.float32(scores), jnp.ones((b, k), bool), jnp.float32(log_q), reduction="none")
    got = nce_jit(jnp.float32(padded), jnp.asarray(mask), jnp.float32(padded_log_q), reduction="none")
    assert_close(got, base)
    assert_close(nce_jit(jnp.float32(padded), jnp.asarray(mask)), nce_jit(jnp.float32(scores)))


@hypothesis.settings(max_examples=examples(10))
@hypothesis.given(_scores_strategy())
def test_nce_permuting_negatives_leaves_loss_unchanged(shape_seed):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = r.normal(size=(b, k)) * 3
    log_q = np.log(r.random((b, k)) + 0.05)
    perm = np.concatenate([[0], 1 + r.permutation(k - 1)])
    assert_close(
        nce_jit(jnp.float32(scores[:, perm]), None, jnp.float32(log_q[:, perm]), reduction="none"),
        nce_jit(jnp.float32(scores), None, jnp.float32(log_q), reduction="none"),
    )


@hypothesis.settings(max_examples=examples(10))
@hypothesis.given(_scores_strategy())
def test_nce_uniform_log_q_changes_nothing(shape_seed):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = jnp.float32(r.normal(size=(b, k)) * 3)
    log_q = jnp.full((b, k), -math.log(k - 1), jnp.float32)
    assert_close(nce_jit(scores, None, log_q, reduction="none"), nce_jit(scores, reduction="none"))
    # With a mask, uniform means 1 / (number of real negatives in the row).
    mask = np.ones((b, k), bool)
    mask[:, -1] = k == 2  # drop the last negative unless it is the only one
    n_real = mask[:, 1:].sum(1, keepdims=True)
    log_q_masked = jnp.float32(np.broadcast_to(-np.log(n_real), (b, k)))
    assert_close(
        nce_jit(scores, jnp.asarray(mask), log_q_masked, reduction="none"),
        nce_jit(scores, jnp.asarray(mask), reduction="none"),
    )


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: losses.nce(jnp.zeros((3, 1))), r"scores: expected K >= 2.*\(3, 1\)"),
        (lambda: losses.nce(jnp.zeros((3,))), r"scores: expected rank 2.*\(3,\)"),
        (lambda: losses.nce(jnp.zeros((3, 4), jnp.int32)), r"scores: expected a floating dtype.*int32"),
        (lambda: losses.nce(jnp.zeros((3, 4)), jnp.ones((3, 5), bool)), r"mask: expected shape \(3, 4\).*\(3, 5\)"),
        (lambda: losses.nce(jnp.zeros((3, 4)), jnp.ones((3, 4))), r"mask: expected dtype bool.*float32"),
        (lambda: losses.nce(jnp.zeros((3, 4)), None, jnp.ones((3,))), r"log_q: expected shape \(3, 4\).*\(3,\)"),
        (lambda: losses.nce(jnp.zeros((3, 4)), reduction="sum"), r"reduction: expected one of.*'sum'"),
        (lambda: losses.full_softmax_ce(jnp.zeros((3, 4)), jnp.zeros((2,), int)), r"labels: expected shape.*\(2,\)"),
        (lambda: losses.full_softmax_ce(jnp.zeros((3, 4)), jnp.zeros((3,))), r"labels: expected an integer dtype"),
        (lambda: losses.full_softmax_ce(jnp.zeros((3, 4), int), jnp.zeros((3,), int)), r"logits: expected a float"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------------
# In-batch references: infonce and focal_infonce
# ----------------------------------------------------------------------------------------------------------------


def ref_cos(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.zeros((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            out[i, j] = x[i] @ y[j] / max(np.linalg.norm(x[i]) * np.linalg.norm(y[j]), 1e-16)
    return out


def _kept(ids, valid, i, j):
    """Column j stays in row i's softmax: its own positive, or a non-duplicate, non-padding column."""
    return i == j or ((ids is None or ids[i] != ids[j]) and (valid is None or valid[j]))


def ref_mean(rows, valid=None):
    return rows.mean() if valid is None else rows[valid].sum() / max(valid.sum(), 1)


def ref_infonce_rows(z1, z2, tau, symmetric=False, negatives=None, ids=None, valid=None):
    s = ref_cos(z1, z2)
    n = s.shape[0]
    rows = np.zeros(n)
    for i in range(n):
        row = [s[i, j] / tau for j in range(n) if _kept(ids, valid, i, j)]
        if negatives is not None:  # one negative per row (M = N) is padded with its row
            aligned = valid is not None and len(negatives) == n
            row += [ref_cos(z1[i : i + 1], negatives[j : j + 1])[0, 0] / tau for j in range(len(negatives))
                    if not aligned or valid[j]]  # fmt: skip
        rows[i] = np_logsumexp(row) - s[i, i] / tau
    if symmetric:
        for j in range(n):
            col = [s[i, j] / tau for i in range(n) if _kept(ids, valid, j, i)]
            rows[j] = 0.5 * (rows[j] + np_logsumexp(col) - s[j, j] / tau)
    if valid is not None:
        rows[~valid] = 0.0
    return rows


def ref_focal_logits(s, tau, m):
    n = s.shape[0]
    out = np.zeros_like(s)
    for i in range(n):
        for j in range(n):
            out[i, j] = s[i, j] * s[i, j] / tau if i == j else s[i, j] * (s[i, j] + m) / tau
    return out


def ref_focal_rows(z1, z2, tau, m, ids=None, valid=None):
    logits = ref_focal_logits(ref_cos(z1, z2), tau, m)
    n = logits.shape[0]
    rows = np.array(
        [np_logsumexp([logits[i, j] for j in range(n) if _kept(ids, valid, i, j)]) - logits[i, i] for i in range(n)]
    )
    if valid is not None:
        rows[~valid] = 0.0
    return rows


def views(seed, n, d, noise=1.0):
    """Two views with losses of order 1 at tau = 0.05 (a tiny loss would make relative comparisons meaningless)."""
    r = rng(seed)
    z1 = r.normal(size=(n, d))
    return z1, z1 + noise * r.normal(size=(n, d))


infonce_jit = jax.jit(losses.infonce, static_argnames=("symmetric", "axis_name", "reduction"))
focal_jit = jax.jit(losses.focal_infonce, static_argnames=("axis_name", "reduction"))


@pytest.mark.parametrize("n,d,tau", [(1, 3, 0.05), (2, 4, 0.05), (7, 5, 0.1), (16, 32, 1.0)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_infonce_matches_reference(n, d, tau, symmetric):
    z1, z2 = views(n * d, n, d)
    rows = ref_infonce_rows(z1, z2, tau, symmetric)
    assert n == 1 or rows.mean() > 1e-2
    got = infonce_jit(jnp.float32(z1), jnp.float32(z2), tau, symmetric)
    scale = None if n > 1 else 1 / tau  # n = 1: a loss of 0 from a logit of size 1/τ
    assert_close(got, rows.mean(), scale=scale)
    got_rows = infonce_jit(jnp.float32(z1), jnp.float32(z2), tau, symmetric, reduction="none")
    assert got_rows.shape == (n,) and got_rows.dtype == jnp.float32
    assert_close(got_rows, rows, scale=scale)


@pytest.mark.parametrize("m_neg", [1, 6, 9])
def test_infonce_with_hard_negatives_matches_reference(m_neg):
    z1, z2 = views(7, 6, 8)
    neg = rng(8).normal(size=(m_neg, 8)) + 0.5 * z1[: m_neg % 6 + 1].mean(0)
    rows = ref_infonce_rows(z1, z2, 0.2, negatives=neg)
    fn = jax.jit(lambda a, b, c: losses.infonce(a, b, 0.2, negatives=c, reduction="none"))
    assert_close(fn(jnp.float32(z1), jnp.float32(z2), jnp.float32(neg)), rows)


@pytest.mark.parametrize("n,d,tau,m", [(1, 3, 0.05, 0.3), (4, 6, 0.05, 0.3), (9, 5, 0.1, 0.0), (16, 32, 0.05, 0.5)])
def test_focal_infonce_matches_reference(n, d, tau, m):
    z1, z2 = views(n + d, n, d)
    rows = ref_focal_rows(z1, z2, tau, m)
    assert n == 1 or rows.mean() > 1e-2
    scale = None if n > 1 else 1 / tau  # n = 1: a loss of 0 from a logit of size 1/τ
    assert_close(focal_jit(jnp.float32(z1), jnp.float32(z2), tau, m), rows.mean(), scale=scale)
    got = focal_jit(jnp.float32(z1), jnp.float32(z2), tau, m, reduction="none")
    assert_close(got, rows, scale=scale)


@pytest.mark.parametrize("symmetric", [False, True])
def test_inbatch_duplicate_ids_are_not_negatives(symmetric):
    z1, z2 = views(31, 7, 5)
    ids = np.array([3, 1, 3, 2, 1, 3, 0])
    z2[2] = z2[0]  # an exact duplicate: masked by id, so it cannot act as a false negative
    got = infonce_jit(jnp.float32(z1), jnp.float32(z2), 0.1, symmetric, ids=jnp.asarray(ids), reduction="none")
    assert_close(got, ref_infonce_rows(z1, z2, 0.1, symmetric, ids=ids))
    assert not np.allclose(got, ref_infonce_rows(z1, z2, 0.1, symmetric), rtol=1e-3)
    neg = rng(32).normal(size=(3, 5))
    got = jax.jit(lambda a, b, c, d: losses.infonce(a, b, 0.1, negatives=c, ids=d, reduction="none"))(
        jnp.float32(z1), jnp.float32(z2), jnp.float32(neg), jnp.asarray(ids)
    )
    assert_close(got, ref_infonce_rows(z1, z2, 0.1, negatives=neg, ids=ids))
    got = focal_jit(jnp.float32(z1), jnp.float32(z2), 0.1, 0.3, ids=jnp.asarray(ids), reduction="none")
    assert_close(got, ref_focal_rows(z1, z2, 0.1, 0.3, ids=ids))
    # All ids equal: only the positive is left in every row, so the loss is 0.
    same = jnp.zeros(7, jnp.int32)
    assert float(infonce_jit(jnp.float32(z1), jnp.float32(z2), 0.1, symmetric, ids=same)) == 0.0


@pytest.mark.parametrize("which", ["infonce_symmetric", "infonce_negatives", "focal"])
def test_inbatch_valid_and_ids_match_reference(which):
    z1, z2 = views(33, 7, 5)
    neg = rng(34).normal(size=(7, 5))
    ids = np.array([3, 1, 3, 2, 1, 3, 0])
    valid = np.array([True, True, False, True, True, True, False])
    args = (jnp.float32(z1), jnp.float32(z2), jnp.float32(neg), jnp.asarray(ids), jnp.asarray(valid))
    if which == "focal":
        fn = lambda a, b, c, d, v, r: losses.focal_infonce(a, b, 0.1, 0.3, ids=d, valid=v, reduction=r)
        rows = ref_focal_rows(z1, z2, 0.1, 0.3, ids, valid)
    elif which == "infonce_symmetric":
        fn = lambda a, b, c, d, v, r: losses.infonce(a, b, 0.1, True, ids=d, valid=v, reduction=r)
        rows = ref_infonce_rows(z1, z2, 0.1, True, None, ids, valid)
    else:
        fn = lambda a, b, c, d, v, r: losses.infonce(a, b, 0.1, negatives=c, ids=d, valid=v, reduction=r)
        rows = ref_infonce_rows(z1, z2, 0.1, False, neg, ids, valid)
    fn = jax.jit(fn, static_argnums=5)
    assert_close(fn(*args, "none"), rows)
    assert_close(fn(*args, "mean"), ref_mean(rows, valid))
    # No valid row at all: loss 0 (not NaN).
    assert float(fn(*args[:4], jnp.zeros(7, bool), "mean")) == 0.0


def _unit(c):
    return [c, math.sqrt(1 - c * c)]


# Worked numbers of Hou & Li (2023) with tau = 0.05, m = 0.3: positive cosine 0.9, negative cosine s_n.
@pytest.mark.parametrize(
    "s_n,focal_neg,infonce_neg", [(0.8, 17.6, 16.0), (0.3, 3.6, 6.0), (0.0, 0.0, 0.0), (-0.3, 0.0, -6.0)]
)
def test_focal_infonce_worked_logits(s_n, focal_neg, infonce_neg):
    # Row 0: anchor (1, 0); its positive has cosine 0.9 and the only negative cosine s_n; row 0 has N = 2 logits.
    z1 = jnp.float32([[1.0, 0.0], [0.0, 1.0]])
    z2 = jnp.float32([_unit(0.9), _unit(s_n)])
    focal_row0 = focal_jit(z1, z2, 0.05, 0.3, reduction="none")[0]
    info_row0 = infonce_jit(z1, z2, 0.05, reduction="none")[0]
    # -log(e^p / (e^p + e^n)) = log(1 + e^(n - p)); positive logits 16.2 (focal) and 18.0 (InfoNCE).
    # float32 cosines of the rounded unit vectors, times 1/τ = 20: a relative 1e-4 bounds it (the worked numbers
    # are exact); the absolute 1e-6 covers the softplus tail, whose error shrinks with its value.
    assert_close(focal_row0, math.log1p(math.exp(focal_neg - 16.2)), rtol=1e-4, atol=1e-6)
    assert_close(info_row0, math.log1p(math.exp(infonce_neg - 18.0)), rtol=1e-4, atol=1e-6)


def _grad_through_normalisation(g_cos, x, y):
    """NumPy chain rule: given dL/ds for s = cos(x_i, y_j), return dL/dx and dL/dy."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    gx, gy = g_cos @ yn, g_cos.T @ xn  # gradients w.r.t. the unit vectors
    gx = (gx - np.sum(gx * xn, 1, keepdims=True) * xn) / np.linalg.norm(x, axis=1, keepdims=True)
    gy = (gy - np.sum(gy * yn, 1, keepdims=True) * yn) / np.linalg.norm(y, axis=1, keepdims=True)
    return gx, gy


def test_focal_infonce_gradient_matches_analytic_form():
    # Hou & Li (2023): dl_i/ds_ii = -(1 - P_ii) 2 s_ii / tau, dl_i/ds_ij = P_ij (2 s_ij + m) / tau, mean over N rows.
    n, d, tau, m = 5, 6, 0.1, 0.3
    z1, z2 = views(11, n, d, noise=0.8)
    s = ref_cos(z1, z2)
    logits = ref_focal_logits(s, tau, m)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            g[i, j] = -(1 - p[i, i]) * 2 * s[i, i] / tau if i == j else p[i, j] * (2 * s[i, j] + m) / tau
    g /= n
    gx, gy = _grad_through_normalisation(g, z1, z2)
    with jax.enable_x64():
        got = jax.jit(jax.grad(lambda a, b: losses.focal_infonce(a, b, tau, m), argnums=(0, 1)))(z1, z2)
    assert_close(got[0], gx, rtol=1e-7, atol=1e-10)
    assert_close(got[1], gy, rtol=1e-7, atol=1e-10)


def test_infonce_gradient_matches_analytic_form():
    # SimCSE: dl_i/ds_ij = (P_ij - [i == j]) / tau.
    n, d, tau = 5, 6, 0.1
    z1, z2 = views(12, n, d, noise=0.8)
    logits = ref_cos(z1, z2) / tau
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gx, gy = _grad_through_normalisation((p - np.eye(n)) / tau / n, z1, z2)
    with jax.enable_x64():
        got = jax.jit(jax.grad(lambda a, b: losses.infonce(a, b, tau), argnums=(0, 1)))(z1, z2)
    assert_close(got[0], gx, rtol=1e-7, atol=1e-10)
    assert_close(got[1], gy, rtol=1e-7, atol=1e-10)


def test_inbatch_check_grads_float64():
    z1, z2 = views(13, 4, 5, noise=0.8)
    neg = rng(14).normal(size=(4, 5))
    with jax.enable_x64():
        z1, z2, neg = jnp.asarray(z1), jnp.asarray(z2), jnp.asarray(neg)
        sym = jax.jit(lambda a, b: losses.infonce(a, b, 0.2, True))
        hard = jax.jit(lambda a, b, c: losses.infonce(a, b, 0.2, negatives=c))
        check_grads(sym, (z1, z2), order=1, modes=["rev"])
        check_grads(hard, (z1, z2, neg), order=1, modes=["rev"])
    # focal_infonce and plain infonce: see the analytic-gradient tests above.


@hypothesis.settings(max_examples=examples(10))
@hypothesis.given(st.sampled_from([1, 5]), st.floats(0.02, 2.0), st.integers(0, 2**31 - 1))
def test_infonce_is_full_softmax_ce_of_scaled_cosines(n, tau, seed):
    z1, z2 = views(seed, n, 4, noise=1.0)
    logits = jnp.float32(ref_cos(z1, z2) / tau)
    ce = jax.jit(losses.full_softmax_ce, static_argnames="reduction")
    # The logits (up to 1/τ = 50) are rounded to float32 on both sides, in different places: scale by 1/τ.
    got = infonce_jit(jnp.float32(z1), jnp.float32(z2), jnp.float32(tau), reduction="none")
    assert_close(got, ce(logits, jnp.arange(n), reduction="none"), scale=1 / tau)


@pytest.mark.parametrize("loss", ["infonce", "focal"])
def test_inbatch_bfloat16_returns_float32_close_to_float32(loss):
    z1, z2 = views(15, 8, 16)
    fn = infonce_jit if loss == "infonce" else focal_jit
    got = fn(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16), 0.05)
    assert got.dtype == jnp.float32
    assert_close(got, fn(jnp.float32(z1), jnp.float32(z2), 0.05), rtol=3e-2)  # bf16 inputs, logits up to 1/τ


def test_inbatch_zero_vector_is_finite():
    z1 = jnp.float32([[0.0, 0.0], [1.0, 2.0]])
    z2 = jnp.float32([[1.0, 0.0], [0.0, 0.0]])
    for fn in (losses.infonce, losses.focal_infonce):
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(z1, z2)
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


# ----------------------------------------------------------------------------------------------------------------
# Cross-device negatives: 8 CPU devices, global batch 16 (2 rows per device), distinct rows.
# ----------------------------------------------------------------------------------------------------------------

N_DEV, N_GLOBAL, WIDTH = 8, 16, 6


def _global_views():
    r = rng(21)
    z1 = r.normal(size=(N_GLOBAL, WIDTH))
    z2 = z1 + 0.5 * r.normal(size=(N_GLOBAL, WIDTH))
    neg = r.normal(size=(N_GLOBAL, WIDTH)) + 0.7 * np.roll(z1, 3, axis=0)  # one hard negative per anchor
    return z1, z2, neg


_CASES = {
    "infonce": lambda axis: lambda a, b, c: losses.infonce(a, b, 0.1, axis_name=axis),
    "infonce_negatives": lambda axis: lambda a, b, c: losses.infonce(a, b, 0.1, axis_name=axis, negatives=c),
    "focal": lambda axis: lambda a, b, c: losses.focal_infonce(a, b, 0.1, 0.3, axis),
    "infonce_ids": lambda axis: lambda a, b, c: losses.infonce(a, b, 0.1, True, axis, ids=_device_ids(axis)),
    "focal_ids_valid": lambda axis: (
        lambda a, b, c: losses.focal_infonce(
            a, b, 0.1, 0.3, axis, ids=_device_rows(GLOBAL_IDS, axis), valid=_device_rows(GLOBAL_VALID, axis)
        )
    ),
    "infonce_negatives_ids_valid": lambda axis: (
        lambda a, b, c: losses.infonce(
            a,
            b,
            0.1,
            axis_name=axis,
            negatives=c,
            ids=_device_rows(GLOBAL_IDS, axis),
            valid=_device_rows(GLOBAL_VALID, axis),
        )
    ),  # fmt: skip
}
GLOBAL_IDS = np.arange(N_GLOBAL) % 5  # duplicates on other devices (rows 0, 5, 10, 15 share id 0, ...)
GLOBAL_VALID = np.arange(N_GLOBAL) % 7 != 3  # padding rows 3 and 10, on devices 1 and 5


def _device_rows(x, axis):
    """This device's rows of a global per-row array (all of it on one device)."""
    if axis is None:
        return jnp.asarray(x)
    n = N_GLOBAL // N_DEV
    return jax.lax.dynamic_slice(jnp.asarray(x), (jax.lax.axis_index(axis) * n,), (n,))


def _device_ids(axis):
    return _device_rows(GLOBAL_IDS, axis)


def _ref_global(case, z1, z2, neg):
    ids = GLOBAL_IDS if "_ids" in case else None
    valid = GLOBAL_VALID if case.endswith("_valid") else None
    if case.startswith("focal"):
        return ref_mean(ref_focal_rows(z1, z2, 0.1, 0.3, ids, valid), valid)
    symmetric = case == "infonce_ids"
    neg = neg if case.startswith("infonce_negatives") else None
    return ref_mean(ref_infonce_rows(z1, z2, 0.1, symmetric, neg, ids, valid), valid)


def test_cross_device_reference_detects_wrong_label_offset():
    # The test data must be able to catch a label offset bug: labels arange(n) on every device give another loss.
    z1, z2, _ = _global_views()
    s = ref_cos(z1, z2) / 0.1
    n = N_GLOBAL // N_DEV
    wrong = np.mean([np_logsumexp(s[i]) - s[i, i % n] for i in range(N_GLOBAL)])
    assert abs(wrong - ref_infonce_rows(z1, z2, 0.1).mean()) > 1.0


@pytest.mark.parametrize("case", list(_CASES))
def test_shard_map_equals_single_device_value_and_gradient(case):
    assert jax.device_count() >= N_DEV
    z1, z2, neg = _global_views()
    mesh = jax.make_mesh((N_DEV,), ("data",))
    spec = jax.sharding.PartitionSpec("data")
    sharded = jax.shard_map(
        _CASES[case]("data"), mesh=mesh, in_specs=(spec, spec, spec), out_specs=jax.sharding.PartitionSpec()
    )
    with jax.enable_x64():
        args = [jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec)) for x in (z1, z2, neg)]
        value, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(*args)
        ref_value, ref_grads = jax.jit(jax.value_and_grad(_CASES[case](None), argnums=(0, 1, 2)))(z1, z2, neg)
    assert_close(value, _ref_global(case, z1, z2, neg), rtol=1e-6)  # float64
    assert_close(value, ref_value, rtol=1e-6)
    for g, rg in zip(grads, ref_grads):
        assert_close(g, rg, rtol=1e-6, atol=1e-12)
    if not case.startswith("infonce_negatives"):
        assert np.all(np.asarray(grads[2]) == 0)
    if case.endswith("_valid"):  # padding rows get no gradient
        assert np.all(np.asarray(grads[0])[~GLOBAL_VALID] == 0) and np.all(np.asarray(grads[1])[~GLOBAL_VALID] == 0)


@pytest.mark.parametrize(
    "case,mode",
    [("infonce_negatives", "pmap"), ("focal_ids_valid", "pmap"), ("infonce_negatives_ids_valid", "classic")],
)
def test_grad_inside_then_pmean_equals_single_device(case, mode):
    # The classic SPMD step (jax.pmap, or jax.shard_map with check_vma=False): replicated parameter w (a linear
    # projection), data sharded, jax.grad inside, then lax.pmean of the gradient.
    z1, z2, neg = _global_views()
    w = rng(22).normal(size=(WIDTH, WIDTH))
    n = N_GLOBAL // N_DEV

    def loss(fn, w, a, b, c):
        return fn(a @ w, b @ w, c @ w)

    def step(w, a, b, c):
        value, (gw, ga) = jax.value_and_grad(loss, argnums=(1, 2))(_CASES[case]("data"), w, a, b, c)
        return value, jax.lax.pmean(gw, "data"), ga

    with jax.enable_x64():
        if mode == "pmap":
            shard = lambda x: jnp.asarray(x).reshape(N_DEV, n, WIDTH)
            value, gw, ga = jax.pmap(step, axis_name="data", in_axes=(None, 0, 0, 0))(
                w, shard(z1), shard(z2), shard(neg)
            )
        else:
            mesh = jax.make_mesh((N_DEV,), ("data",))
            rep, row = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("data")
            put = lambda x, spec: jax.device_put(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec))
            mapped = jax.shard_map(
                step, mesh=mesh, in_specs=(rep, row, row, row), out_specs=(rep, rep, row), check_vma=False
            )
            value, gw, ga = jax.jit(mapped)(put(w, rep), put(z1, row), put(z2, row), put(neg, row))
            value, gw, ga = np.full(N_DEV, value), np.broadcast_to(gw, (N_DEV, WIDTH, WIDTH)), np.asarray(ga)
        single = jax.jit(jax.value_and_grad(functools.partial(loss, _CASES[case](None)), argnums=(0, 1)))
        ref_value, (ref_gw, ref_ga) = single(w, z1, z2, neg)
    assert_close(value, np.full(N_DEV, _ref_global(case, z1 @ w, z2 @ w, neg @ w)), rtol=1e-6)  # float64
    assert_close(value, np.full(N_DEV, ref_value), rtol=1e-6)
    assert_close(gw, np.broadcast_to(ref_gw, (N_DEV, WIDTH, WIDTH)), rtol=1e-6, atol=1e-12)
    # Input gradients inside are axis_size x each device's share of the global gradient (documented).
    assert_close(np.asarray(ga).reshape(N_GLOBAL, WIDTH) / N_DEV, ref_ga, rtol=1e-6, atol=1e-12)


def test_cross_device_reduction_none_returns_local_rows():
    z1, z2, _ = _global_views()
    mesh = jax.make_mesh((N_DEV,), ("data",))
    spec = jax.sharding.PartitionSpec("data")
    fn = jax.shard_map(
        lambda a, b: losses.focal_infonce(a, b, 0.1, 0.3, "data", reduction="none"),
        mesh=mesh,
        in_specs=(spec, spec),
        out_specs=spec,
    )
    put = lambda x: jax.device_put(jnp.float32(x), jax.sharding.NamedSharding(mesh, spec))
    assert_close(jax.jit(fn)(put(z1), put(z2)), ref_focal_rows(z1, z2, 0.1, 0.3))


# ----------------------------------------------------------------------------------------------------------------
# In-batch validation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: losses.infonce(jnp.zeros((4, 3)), jnp.zeros((4, 2))),
            r"z2: expected the shape of z1 \(4, 3\).*\(4, 2\)",
        ),
        (lambda: losses.infonce(jnp.zeros((4,)), jnp.zeros((4,))), r"z1: expected rank 2 \[N, D\].*\(4,\)"),
        (lambda: losses.infonce(jnp.zeros((4, 3), int), jnp.zeros((4, 3))), r"z1: expected a floating dtype.*int"),
        (lambda: losses.infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), 0.0), r"temperature: expected a finite value > 0"),
        (lambda: losses.infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), -1.0), r"temperature.*got -1.0"),
        (
            lambda: losses.infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), negatives=jnp.ones((4, 2))),
            r"negatives: expected width D = 3.*\(4, 2\)",
        ),
        (
            lambda: losses.infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), symmetric=True, negatives=jnp.ones((4, 3))),
            r"symmetric: expected False when negatives",
        ),
        (lambda: losses.focal_infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), 0.0), r"temperature: expected"),
        (lambda: losses.focal_infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), margin=math.inf), r"margin: expected a fin"),
        (lambda: losses.focal_infonce(jnp.ones((4, 3)), jnp.ones((5, 3))), r"z2: expected the shape of z1"),
        (lambda: losses.focal_infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), reduction="max"), r"reduction: expected"),
        (
            lambda: losses.infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), ids=jnp.zeros(3, int)),
            r"ids: expected shape.*\(3,\)",
        ),
        (
            lambda: losses.focal_infonce(jnp.ones((4, 3)), jnp.ones((4, 3)), ids=jnp.zeros(4)),
            r"ids: expected an integer",
        ),
    ],
)
def test_inbatch_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------------
# Padding rows (valid mask) in the in-batch losses.


@pytest.mark.parametrize("which", ["infonce", "infonce_sym", "infonce_neg", "focal"])
def test_inbatch_valid_mask_equals_the_unpadded_batch(which):
    rng = np.random.default_rng(11)
    z1, z2, neg = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(3))
    valid = np.array([True, True, True, True, False, False])

    def run(a, b, n, v):
        if which == "focal":
            return losses.focal_infonce(a, b, 0.1, 0.3, valid=v)
        if which == "infonce_sym":
            return losses.infonce(a, b, 0.1, symmetric=True, valid=v)
        if which == "infonce_neg":
            return losses.infonce(a, b, 0.1, negatives=n, valid=v)
        return losses.infonce(a, b, 0.1, valid=v)

    padded = jax.jit(jax.value_and_grad(lambda a: run(a, z2, neg, valid)))(z1)
    plain = jax.jit(jax.value_and_grad(lambda a: run(a, z2[:4], neg[:4], None)))(z1[:4])
    assert_close(float(padded[0]), float(plain[0]))
    assert_close(padded[1][:4], plain[1])
    np.testing.assert_array_equal(np.asarray(padded[1])[4:], 0.0)
    per_row = losses.infonce(z1, z2, 0.1, valid=valid, reduction="none")
    np.testing.assert_array_equal(np.asarray(per_row)[4:], 0.0)


# The sharded valid mask is covered by test_shard_map_equals_single_device_value_and_gradient[*_valid].


def test_inbatch_valid_mask_is_checked():
    z = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="valid: expected bool"):
        losses.infonce(z, z, valid=np.ones(3, np.int32))
    with pytest.raises(ValueError, match="valid: expected bool"):
        losses.focal_infonce(z, z, valid=np.ones(4, bool))
