"""Tests for hnjax.losses against independent float64 NumPy references written here (explicit loops)."""

import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from hnjax import losses

RTOL = 1e-5


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
    np.testing.assert_allclose(fn(jnp.float32(logits), jnp.int32(labels)), rows.mean(), rtol=RTOL)
    got = fn(jnp.float32(logits), jnp.int32(labels), reduction="none")
    assert got.shape == (b,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, rows, rtol=RTOL, atol=1e-6)


def test_full_softmax_ce_gradient():
    r = rng(1)
    with jax.enable_x64():
        logits = jnp.asarray(r.normal(size=(4, 6)))
        labels = jnp.asarray([0, 5, 2, 2])
        check_grads(lambda x: losses.full_softmax_ce(x, labels), (logits,), order=1, modes=["rev"])


def test_full_softmax_ce_out_of_range_label_is_nan():
    got = losses.full_softmax_ce(jnp.zeros((2, 3)), jnp.array([0, 3]), reduction="none")
    assert np.isfinite(got[0]) and np.isnan(got[1])


# ----------------------------------------------------------------------------------------------------------------
# nce
# ----------------------------------------------------------------------------------------------------------------

nce_jit = jax.jit(losses.nce, static_argnames="reduction")


@pytest.mark.parametrize("b,k", [(1, 2), (3, 2), (8, 5), (16, 65)])
def test_nce_matches_reference(b, k):
    r = rng(10 * b + k)
    scores = r.normal(size=(b, k)) * 4
    np.testing.assert_allclose(nce_jit(jnp.float32(scores)), ref_nce(scores), rtol=RTOL)
    got = nce_jit(jnp.float32(scores), reduction="none")
    np.testing.assert_allclose(got, ref_nce_rows(scores), rtol=RTOL, atol=1e-6)


def test_nce_is_cross_entropy_with_gold_at_zero():
    # Hand value: -log(e^2 / (e^2 + e^0 + e^1)).
    s = jnp.array([[2.0, 0.0, 1.0]])
    expected = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(1.0)))
    np.testing.assert_allclose(nce_jit(s), expected, rtol=1e-6)


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
    np.testing.assert_allclose(nce_jit(*args), ref_nce(scores, mask, log_q), rtol=RTOL)
    rows = nce_jit(*args, reduction="none")
    np.testing.assert_allclose(rows, ref_nce_rows(scores, mask, log_q), rtol=RTOL, atol=1e-6)
    assert rows[1] == 0.0 and rows[2] == 0.0
    # Without the mask, log_q uses the fixed K - 1.
    log_q_full = np.log(q / q.sum(1, keepdims=True))
    np.testing.assert_allclose(
        nce_jit(jnp.float32(scores), None, jnp.float32(log_q_full)), ref_nce(scores, None, log_q_full), rtol=RTOL
    )
    np.testing.assert_allclose(nce_jit(jnp.float32(scores), jnp.asarray(mask)), ref_nce(scores, mask), rtol=RTOL)


def test_nce_only_gold_real_is_zero_loss_and_finite_gradient():
    scores = jnp.array([[1.0, 5.0, 3.0], [0.5, -1.0, 2.0]])
    mask = jnp.array([[True, False, False], [True, False, False]])
    loss, grad = jax.jit(jax.value_and_grad(lambda s: losses.nce(s, mask)))(scores)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(grad, np.zeros((2, 3)))


def test_nce_padding_rows_get_no_gradient_and_all_padding_is_zero():
    scores = jnp.array([[1.0, 5.0, 3.0], [0.5, -1.0, 2.0]])
    mask = jnp.array([[True, True, True], [False, False, False]])
    loss, grad = jax.value_and_grad(lambda s: losses.nce(s, mask))(scores)
    np.testing.assert_allclose(loss, ref_nce_rows(np.asarray(scores[:1]))[0], rtol=RTOL)
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0)
    all_pad = jnp.zeros((2, 3), bool)
    loss, grad = jax.value_and_grad(lambda s: losses.nce(s, all_pad))(scores)
    assert float(loss) == 0.0 and np.all(grad == 0)


def test_nce_gradient_check_float64():
    r = rng(4)
    with jax.enable_x64():
        scores = jnp.asarray(r.normal(size=(4, 5)))
        mask = jnp.asarray(r.random((4, 5)) < 0.7).at[:, 0].set(True)
        log_q = jnp.asarray(np.log(r.random((4, 5)) + 0.1))
        check_grads(lambda s: losses.nce(s, mask, log_q), (scores,), order=2, modes=["rev"])
        check_grads(lambda s: losses.nce(s), (scores,), order=2, modes=["fwd", "rev"])


def test_nce_gradient_is_softmax_minus_onehot():
    # d l_i / d s_ik = (softmax_k - [k == 0]) / B, computed here in NumPy.
    r = rng(5)
    scores = r.normal(size=(3, 4))
    grad = jax.jit(jax.grad(losses.nce))(jnp.float32(scores))
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[:, 0] -= 1
    np.testing.assert_allclose(grad, p / 3, rtol=1e-5, atol=1e-7)


def test_nce_bfloat16_returns_float32_close_to_float32():
    r = rng(6)
    scores = r.normal(size=(8, 9)) * 3
    got = nce_jit(jnp.asarray(scores, jnp.bfloat16))
    assert got.dtype == jnp.float32
    ref = ref_nce(np.asarray(jnp.asarray(scores, jnp.bfloat16).astype(jnp.float32)))
    np.testing.assert_allclose(got, ref, rtol=1e-5)  # the log-sum-exp is float32: only input rounding differs
    np.testing.assert_allclose(got, ref_nce(scores), rtol=2e-2)


def _scores_strategy():
    return st.tuples(st.integers(1, 4), st.integers(2, 6), st.integers(0, 2**31 - 1))


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(_scores_strategy(), st.integers(1, 4))
def test_nce_padding_candidates_never_change_loss(shape_seed, n_pad):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = r.normal(size=(b, k)) * 3
    log_q = np.log(r.random((b, k)) + 0.05)
    padded = np.concatenate([scores, r.normal(size=(b, n_pad)) * 10], axis=1)
    padded_log_q = np.concatenate([log_q, np.log(r.random((b, n_pad)) + 0.05)], axis=1)
    mask = np.concatenate([np.ones((b, k), bool), np.zeros((b, n_pad), bool)], axis=1)
    base = losses.nce(jnp.float32(scores), jnp.ones((b, k), bool), jnp.float32(log_q), reduction="none")
    got = losses.nce(jnp.float32(padded), jnp.asarray(mask), jnp.float32(padded_log_q), reduction="none")
    np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        losses.nce(jnp.float32(padded), jnp.asarray(mask)), losses.nce(jnp.float32(scores)), rtol=1e-5, atol=1e-6
    )


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(_scores_strategy())
def test_nce_permuting_negatives_leaves_loss_unchanged(shape_seed):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = r.normal(size=(b, k)) * 3
    log_q = np.log(r.random((b, k)) + 0.05)
    perm = np.concatenate([[0], 1 + r.permutation(k - 1)])
    np.testing.assert_allclose(
        losses.nce(jnp.float32(scores[:, perm]), None, jnp.float32(log_q[:, perm]), reduction="none"),
        losses.nce(jnp.float32(scores), None, jnp.float32(log_q), reduction="none"),
        rtol=1e-5,
        atol=1e-6,
    )


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(_scores_strategy())
def test_nce_uniform_log_q_changes_nothing(shape_seed):
    b, k, seed = shape_seed
    r = rng(seed)
    scores = jnp.float32(r.normal(size=(b, k)) * 3)
    log_q = jnp.full((b, k), -math.log(k - 1), jnp.float32)
    np.testing.assert_allclose(
        losses.nce(scores, None, log_q, reduction="none"), losses.nce(scores, reduction="none"), rtol=1e-5, atol=1e-6
    )
    # With a mask, uniform means 1 / (number of real negatives in the row).
    mask = np.ones((b, k), bool)
    mask[:, -1] = k == 2  # drop the last negative unless it is the only one
    n_real = mask[:, 1:].sum(1, keepdims=True)
    log_q_masked = jnp.float32(np.broadcast_to(-np.log(n_real), (b, k)))
    np.testing.assert_allclose(
        losses.nce(scores, jnp.asarray(mask), log_q_masked, reduction="none"),
        losses.nce(scores, jnp.asarray(mask), reduction="none"),
        rtol=1e-5,
        atol=1e-6,
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
