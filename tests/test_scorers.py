"""Tests of hnjax.scorers against explicit float64 NumPy loops written here (never against the code under test)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import test_util
from numerics import assert_close, examples

from hnjax import scorers

HYP = settings(max_examples=examples(20))

# One jitted wrapper per function and static setting, shared by all tests so that equal shapes compile once.
_JIT = {}


def jitted(fn, **static):
    key = (fn.__name__, tuple(sorted(static.items())))
    if key not in _JIT:
        _JIT[key] = jax.jit(functools.partial(fn, **static))
    return _JIT[key]


@functools.cache
def weighted_grad(attention, block_size=scorers.DEFAULT_BLOCK_SIZE):
    """Jitted gradient (q, d) of Σ_c c·Σ_b s[b, c]: a different weight per document exposes any reordering."""

    def total(q, d, q_mask, d_mask):
        s = scorers.late_interaction(q, d, q_mask, d_mask, attention, block_size=block_size)
        return jnp.sum(s * jnp.arange(1, s.shape[1] + 1, dtype=s.dtype))

    return jax.jit(jax.grad(total, argnums=(0, 1)))


# ----------------------------------------------------------------------------------------------------------------
# Independent references: explicit Python loops over queries, documents, i and j, in float64.


def _docs(d, d_mask, b):
    """Yields (document vectors [n, D], mask [n]) for query b in either layout."""
    if d.ndim == 4:  # paired [B, K, n, D]
        return [(d[b, k], d_mask[b, k]) for k in range(d.shape[1])]
    return [(d[c], d_mask[c]) for c in range(d.shape[0])]  # all pairs [N, n, D]


def ref_hard(q, d, q_mask, d_mask):
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    out = []
    for b in range(q.shape[0]):
        row = []
        for dv, dm in _docs(d, d_mask, b):
            total = 0.0
            for i in range(q.shape[1]):
                if not q_mask[b, i]:
                    continue
                best = -np.inf
                for j in range(dv.shape[0]):
                    if dm[j]:
                        best = max(best, float(np.dot(q[b, i], dv[j])))
                total += best
            row.append(total)
        out.append(row)
    return np.array(out)


def ref_soft(q, d, q_mask, d_mask):
    """Official form: each real document vector attends (softmax over real i) over the query vectors."""
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    out = []
    for b in range(q.shape[0]):
        row = []
        for dv, dm in _docs(d, d_mask, b):
            total = 0.0
            for j in range(dv.shape[0]):
                if not dm[j]:
                    continue
                real = [i for i in range(q.shape[1]) if q_mask[b, i]]
                logits = np.array([np.dot(dv[j], q[b, i]) for i in real])
                w = np.exp(logits - logits.max())
                w /= w.sum()
                attended = sum(w[t] * q[b, i] for t, i in enumerate(real))
                total += float(np.dot(dv[j], attended))
            row.append(total)
        out.append(row)
    return np.array(out)


def ref_dual(q, d):
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    B = q.shape[0]
    C = d.shape[1] if d.ndim == 3 else d.shape[0]
    out = np.zeros((B, C))
    for b in range(B):
        for c in range(C):
            dv = d[b, c] if d.ndim == 3 else d[c]
            out[b, c] = sum(q[b, h] * dv[h] for h in range(q.shape[1]))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Data


def random_mask(rng, shape, p=0.6):
    """Random bool mask with at least one True in every row (last axis)."""
    mask = rng.random(shape) < p
    first = rng.integers(0, shape[-1], size=shape[:-1])
    np.put_along_axis(mask, first[..., None], True, axis=-1)
    return mask


def make_case(seed, layout, B=3, C=5, m=4, n=6, D=8, dtype=np.float32):
    """q [B, m, D], d [C, n, D] (all pairs) or [B, C, n, D] (paired), with random masks."""
    rng = np.random.default_rng(seed)
    d_lead = (C,) if layout == "all_pairs" else (B, C)
    q = rng.normal(size=(B, m, D)).astype(dtype)
    d = rng.normal(size=(*d_lead, n, D)).astype(dtype)
    return q, d, random_mask(rng, (B, m)), random_mask(rng, (*d_lead, n))


LAYOUTS = ["all_pairs", "paired"]
REFS = {"hard": ref_hard, "soft": ref_soft}
NAMED = {"hard": scorers.sum_of_max, "soft": scorers.poly}


# ----------------------------------------------------------------------------------------------------------------
# Values against the references


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dual_matches_reference(layout):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 8)).astype(np.float32)
    d = rng.normal(size=(5, 8) if layout == "all_pairs" else (3, 5, 8)).astype(np.float32)
    got = jitted(scorers.dual)(q, d)
    assert got.dtype == jnp.float32 and got.shape == (3, 5)
    assert_close(got, ref_dual(q, d))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attention", ["hard", "soft"])
def test_late_interaction_and_named_scorers_match_reference(layout, attention):
    q, d, qm, dm = make_case(1, layout)
    want = REFS[attention](q, d, qm, dm)
    got = jitted(scorers.late_interaction, attention=attention)(q, d, qm, dm)
    assert got.dtype == jnp.float32 and got.shape == (3, 5)
    assert_close(got, want)
    # the named scorer, blocked: 5 documents (candidates) in blocks of 2 = two scanned blocks and a remainder
    named = jitted(NAMED[attention], block_size=2)(q, d, qm, dm)
    assert named.dtype == jnp.float32 and named.shape == (3, 5)
    assert_close(named, want)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("q_rank", [2, 3])
def test_multi_vector_matches_reference(layout, q_rank):
    q, d, _, dm = make_case(3, layout, m=1)
    n_used = 4
    dm[..., 0] = True  # a real vector among the first n_used
    want = np.zeros((3, 5))
    for b in range(3):
        for c, (dv, dmv) in enumerate(_docs(np.float64(d), dm, b)):
            want[b, c] = max(np.dot(np.float64(q[b, 0]), dv[j]) for j in range(n_used) if dmv[j])
    q_in = q[:, 0] if q_rank == 2 else q
    f = jitted(scorers.multi_vector, n=n_used)
    got = f(q_in, d, d_mask=dm)
    assert_close(got, want)
    # vectors beyond n never count, even when they would win the max
    d_big = d.copy()
    d_big[..., n_used:, :] = 1e3 * np.sign(q[:, None, None, 0] if layout == "paired" else q[0, 0])
    assert_close(f(q_in, d_big, d_mask=dm), got)


# ----------------------------------------------------------------------------------------------------------------
# Gradients in float64


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attention", ["hard", "soft"])
def test_gradients_float64(layout, attention):
    with jax.enable_x64(True):
        q, d, qm, dm = make_case(4, layout, B=2, C=5, m=3, n=4, D=5, dtype=np.float64)
        # block_size=2 with 5 documents/candidates: scanned, rematerialised blocks plus a remainder block
        f = jax.jit(lambda q, d: scorers.late_interaction(q, d, qm, dm, attention, block_size=2))
        assert f(q, d).dtype == jnp.float64
        assert_close(f(q, d), REFS[attention](q, d, qm, dm), rtol=1e-12)  # float64: eps is 2^-52
        test_util.check_grads(f, (q, d), order=1, modes=["rev"], eps=1e-6)


def test_dual_gradients_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        q, d = rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
        test_util.check_grads(jax.jit(scorers.dual), (q, d), order=1, modes=["rev"])


# ----------------------------------------------------------------------------------------------------------------
# Invariants (hypothesis): values are drawn, shapes come from a small set so compilations are reused


@HYP
@given(
    seed=st.integers(0, 2**31 - 1),
    layout=st.sampled_from(LAYOUTS),
    attention=st.sampled_from(["hard", "soft"]),
    garbage=st.sampled_from([1.0, 1e6, 1e30, np.inf, np.nan]),
)
def test_padding_never_changes_scores_or_gradients(seed, layout, attention, garbage):
    q, d, qm, dm = make_case(seed, layout)  # q [3, 4, 8], d [5, 6, 8] or [3, 5, 6, 8]
    rng = np.random.default_rng(seed + 1)
    # append 2 masked query vectors and 3 masked document vectors holding garbage
    q_pad = np.concatenate([q, garbage * rng.normal(size=(3, 2, 8)).astype(np.float32)], axis=1)
    d_pad = np.concatenate([d, garbage * rng.normal(size=(*d.shape[:-2], 3, 8)).astype(np.float32)], axis=-2)
    qm_pad = np.concatenate([qm, np.zeros((3, 2), bool)], axis=1)
    dm_pad = np.concatenate([dm, np.zeros((*dm.shape[:-1], 3), bool)], axis=-1)
    # and overwrite the masked positions inside the original length with garbage too
    q_pad[:, :4][~qm] = garbage
    d_pad[..., :6, :][~dm] = -garbage
    f = jitted(scorers.late_interaction, attention=attention)
    # Padded and unpadded calls compile to different vector code (shapes differ): equal up to float32 rounding.
    assert_close(f(q_pad, d_pad, qm_pad, dm_pad), f(q, d, qm, dm))
    grad = weighted_grad(attention)
    gq, gd = grad(q, d, qm, dm)
    gq_pad, gd_pad = grad(q_pad, d_pad, qm_pad, dm_pad)
    assert_close(gq_pad[:, :4], gq)
    assert_close(gd_pad[..., :6, :], gd)
    # Masked positions are skipped, not multiplied by 0 (garbage may be inf or nan): their gradient is exactly 0.
    assert np.all(np.asarray(gq_pad)[~qm_pad] == 0) and np.all(np.asarray(gd_pad)[~dm_pad] == 0)


@HYP
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(LAYOUTS))
def test_sum_of_max_with_one_vector_each_equals_dual(seed, layout):
    q, d, _, _ = make_case(seed, layout, m=1, n=1)
    want = jitted(scorers.dual)(q[:, 0], d[..., 0, :])
    assert_close(jitted(scorers.sum_of_max)(q, d), want)
    assert_close(want, ref_dual(q[:, 0], d[..., 0, :]))


@HYP
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(LAYOUTS))
def test_hard_late_interaction_equals_named_cases(seed, layout):
    hard = jitted(scorers.late_interaction, attention="hard")
    q, d, qm, dm = make_case(seed, layout)
    assert_close(hard(q, d, qm, dm), jitted(scorers.sum_of_max)(q, d, qm, dm))
    # multi_vector: one query vector, the first 3 document vectors
    dm3 = dm.copy()
    dm3[..., 0] = True
    assert_close(
        jitted(scorers.multi_vector, n=3)(q[:, 0], d, d_mask=dm3),
        hard(q[:, :1], d[..., :3, :], np.ones((3, 1), bool), dm3[..., :3]),
    )
    # dual: one vector each
    assert_close(
        hard(q[:, :1], d[..., :1, :], np.ones((3, 1), bool), np.ones(d.shape[:-2] + (1,), bool)),
        jitted(scorers.dual)(q[:, 0], d[..., 0, :]),
    )


@HYP
@given(seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(LAYOUTS))
def test_poly_with_one_query_vector_is_sum_of_dot_products(seed, layout):
    # softmax over a single query vector is 1, so s = Σ_{real j} ⟨q, d_j⟩; with n equal vectors that is n·⟨q, d⟩
    q, d, _, dm = make_case(seed, layout, m=1)
    want = np.zeros((3, 5))
    for b in range(3):
        for c, (dv, dmv) in enumerate(_docs(np.float64(d), dm, b)):
            want[b, c] = np.dot(np.float64(q[b, 0]), dv[dmv].sum(axis=0))
    got = jitted(scorers.poly)(q, d, np.ones((3, 1), bool), dm)
    assert_close(got, want)
    d_same = np.broadcast_to(d[..., :1, :], d.shape).copy()
    assert_close(jitted(scorers.poly)(q, d_same), 6 * ref_dual(q[:, 0], d[..., 0, :]))


@HYP
@given(
    seed=st.integers(0, 2**31 - 1),
    layout=st.sampled_from(LAYOUTS),
    attention=st.sampled_from(["hard", "soft"]),
)
def test_blocked_equals_unblocked(seed, layout, attention):
    # 5 documents (candidates) in blocks of 3: one scanned block and a remainder. Gradients of the blocked path
    # (blocks of 2) are checked against finite differences in float64 in test_gradients_float64.
    q, d, qm, dm = make_case(seed, layout)
    blocked = jitted(scorers.late_interaction, attention=attention, block_size=3)
    plain = jitted(scorers.late_interaction, attention=attention)
    assert_close(blocked(q, d, qm, dm), plain(q, d, qm, dm))
    # no masks (all real) takes its own path, without masking ops
    all_real = np.ones_like(qm), np.ones_like(dm)
    assert_close(blocked(q, d), plain(q, d, *all_real))


# ----------------------------------------------------------------------------------------------------------------
# Fully masked queries and documents


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("attention", ["hard", "soft"])
def test_empty_rows_under_jit_score_masked_score_with_zero_gradient(layout, attention):
    q, d, qm, dm = make_case(6, layout)
    doc = (2,) if layout == "all_pairs" else (0, 2)  # document 2 (of query 0, paired) has no real vector
    qm[1] = False  # query 1 has no real vector
    dm[doc] = False
    f = jitted(scorers.late_interaction, attention=attention)
    got = np.asarray(f(q, d, qm, dm))
    empty = np.zeros((3, 5), bool)
    empty[1] = True
    empty[:, 2] = empty[:, 2] | (layout == "all_pairs")
    empty[0, 2] = True
    assert np.all(got[empty] == scorers.MASKED_SCORE)
    full_qm, full_dm = qm.copy(), dm.copy()
    full_qm[1] = True
    full_dm[doc + (0,)] = True
    ref = REFS[attention](q, d, full_qm, full_dm)  # the other pairs are unaffected by the empty rows
    assert_close(got[~empty], ref[~empty])

    # a softmax over each row stays finite (also the all-empty row of query 1)
    assert np.all(np.isfinite(jax.nn.log_softmax(got, axis=-1)))
    # empty pairs pass no gradient; the others do, and everything is finite
    gq, gd = weighted_grad(attention)(q, d, qm, dm)
    assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gd))
    assert np.all(np.asarray(gq)[1] == 0) and np.all(np.asarray(gd)[doc] == 0)
    assert np.all(np.abs(np.asarray(gq)[[0, 2]]).sum(-1)[qm[[0, 2]]] > 0)


@pytest.mark.parametrize("fn", [scorers.sum_of_max, scorers.poly])
def test_empty_rows_with_concrete_masks_raise(fn):
    q, d, qm, dm = make_case(7, "all_pairs")
    bad_q, bad_d = qm.copy(), dm.copy()
    bad_q[2] = False
    bad_d[4] = False
    with pytest.raises(ValueError, match=r"q_mask has 1 queries with no real vector.*index \(2,\)"):
        fn(q, d, bad_q, dm)
    with pytest.raises(ValueError, match=r"d_mask has 1 documents with no real vector.*index \(4,\)"):
        fn(q, d, qm, jnp.asarray(bad_d))
    got = np.asarray(fn(q, d, bad_q, bad_d, allow_empty=True))
    assert np.all(got[2] == scorers.MASKED_SCORE) and np.all(got[:, 4] == scorers.MASKED_SCORE)
    first_two_padding = np.concatenate([np.zeros((5, 2), bool), np.ones((5, 4), bool)], axis=1)
    with pytest.raises(ValueError, match="d_mask has 5 documents with no real vector"):
        scorers.multi_vector(q[:, 0], d, 2, first_two_padding)  # only the first n = 2 entries count


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_with_informative_messages():
    q, d, qm, dm = make_case(8, "all_pairs")
    qp, dp, _, dmp = make_case(8, "paired")
    cases = [
        (lambda: scorers.sum_of_max(q[..., :7], d), r"same width D.*\(3, 4, 7\).*\(5, 6, 8\)"),
        (lambda: scorers.sum_of_max(q[0], d), r"q: expected rank 3.*got shape \(4, 8\)"),
        (lambda: scorers.poly(q, d[0]), r"d: expected rank 3 or 4.*got shape \(6, 8\)"),
        (lambda: scorers.sum_of_max(q, d, qm.astype(np.int32)), r"q_mask: expected dtype bool.*int32"),
        (lambda: scorers.poly(q, d, qm, dm.astype(np.float32)), r"d_mask: expected dtype bool.*float32"),
        (lambda: scorers.sum_of_max(q, d, qm[:, :3]), r"q_mask: expected shape \(3, 4\).*\(3, 3\)"),
        (lambda: scorers.sum_of_max(q, d, None, dm[:, :2]), r"d_mask: expected shape \(5, 6\).*\(5, 2\)"),
        (lambda: scorers.late_interaction(q, d, attention="max"), r"attention: expected one of.*'max'"),
        (lambda: scorers.late_interaction(q, d, block_size=0), r"block_size: expected a positive int, got 0"),
        (lambda: scorers.sum_of_max(q[:2], dp), r"d: expected d.shape\[0\] == B=2.*paired layout"),
        (lambda: scorers.sum_of_max(q.astype(np.int32), d), r"q: expected a floating dtype, got int32"),
        (lambda: scorers.sum_of_max(q[:, :0], d), r"at least one vector per query"),
        (lambda: scorers.dual(q, d[:, 0]), r"q: expected rank 2.*\[B, D\]"),
        (
            lambda: scorers.dual(q[:, 0], d),
            r"d: expected d.shape\[0\] == B=3.*paired layout\), got d shape \(5, 6, 8\)",
        ),
        (lambda: scorers.dual(q[:, 0], d[:, :, :7]), r"same width D"),
        (lambda: scorers.dual(q[:2, 0], dp[:, :, 0]), r"d: expected d.shape\[0\] == B=2.*paired layout"),
        (lambda: scorers.multi_vector(q, d, 2), r"one query vector.*\(3, 4, 8\)"),
        (lambda: scorers.multi_vector(q[:, 0], d, 7), r"n: expected an int with 1 <= n <= L = .* = 6, got 7"),
        (lambda: scorers.multi_vector(q[:, 0], d, 0), r"n: expected an int .* got 0"),
        (lambda: scorers.multi_vector(q[:, 0], d, 2, dm[:, :2]), r"d_mask: expected shape \(5, 6\)"),
        (lambda: scorers.multi_vector(q[:, 0], d, 2, dm.astype(np.int8)), r"d_mask: expected dtype bool"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()


def test_validation_also_runs_under_jit():
    q, d, qm, dm = make_case(9, "all_pairs")
    with pytest.raises(ValueError, match="q_mask: expected dtype bool"):
        jax.jit(scorers.sum_of_max)(q, d, qm.astype(np.float32), dm)


# ----------------------------------------------------------------------------------------------------------------
# Precision, vmap, memory


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fn", ["sum_of_max", "poly", "dual"])
def test_bfloat16_inputs_give_float32_scores(layout, fn):
    q, d, qm, dm = make_case(10, layout)
    if fn == "dual":
        args, want = (q[:, 0], d[..., 0, :]), ref_dual(q[:, 0], d[..., 0, :])
    else:
        args, want = (q, d, qm, dm), REFS["hard" if fn == "sum_of_max" else "soft"](q, d, qm, dm)
    args16 = tuple(jnp.asarray(a, jnp.bfloat16) if a.dtype == np.float32 else a for a in args)
    got = jitted(getattr(scorers, fn))(*args16)
    assert got.dtype == jnp.float32
    # only the inputs are rounded (relative 2^-8 each); the products and sums are float32
    assert_close(got, want, rtol=0, atol=2e-2 * np.abs(want).max())


def test_vmap_over_an_extra_leading_axis():
    cases = [make_case(20 + t, "paired", B=2, C=3) for t in range(4)]
    qs, ds, qms, dms = (np.stack(x) for x in zip(*cases))
    for attention in ["hard", "soft"]:
        f = jax.jit(jax.vmap(functools.partial(scorers.late_interaction, attention=attention, block_size=2)))
        got = f(qs, ds, qms, dms)
        for t in range(4):
            assert_close(got[t], REFS[attention](qs[t], ds[t], qms[t], dms[t]))
    # vmap over queries only (documents shared, all pairs): each query row alone
    q, d, qm, dm = make_case(24, "all_pairs")
    per_query = jax.vmap(lambda q1, m1: scorers.sum_of_max(q1[None], d, m1[None], dm)[0])
    assert_close(jax.jit(per_query)(q, qm), ref_hard(q, d, qm, dm))
    dual_rows = jax.jit(jax.vmap(lambda q1: scorers.dual(q1[None], d[:, 0])[0]))
    assert_close(dual_rows(q[:, 0]), ref_dual(q[:, 0], d[:, 0]))


def temp_bytes_of_gradient(attention, B, N, m, n, D, block_size):
    """Scratch memory XLA plans for the gradient of Σ scores (all pairs), from the compiled program."""

    def loss(q, d):
        return jnp.sum(scorers.late_interaction(q, d, attention=attention, block_size=block_size))

    q = jax.ShapeDtypeStruct((B, m, D), jnp.float32)
    d = jax.ShapeDtypeStruct((N, n, D), jnp.float32)
    stats = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(q, d).compile().memory_analysis()
    assert stats is not None, "this backend gives no memory analysis"
    return stats.temp_size_in_bytes


@pytest.mark.parametrize("attention", ["hard", "soft"])
def test_all_pairs_memory_is_bounded_by_the_block(attention):
    shape = dict(B=4, N=4096, m=16, n=16, D=8)
    full_bytes = 4 * 4096 * 16 * 16 * 4  # the [B, N, m, n] float32 similarity tensor: 16 MiB
    assert temp_bytes_of_gradient(attention, **shape, block_size=128) < full_bytes / 4
    if attention == "hard":  # control: without blocking the measurement does see the full tensor
        assert temp_bytes_of_gradient(attention, **shape, block_size=4096) >= full_bytes


# ---------------------------------------------------------------------------------------------------- l2_normalize


def test_l2_normalize_numpy_and_jax_match_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)) * rng.uniform(1e-3, 1e3, size=(6, 1))
    x[2] = 0.0  # a zero row stays zero
    x[4] = 1e-10  # norm below eps: divided by eps
    norms = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    expected = x / np.maximum(norms, scorers.NORM_EPS)  # float64 reference
    host = scorers.l2_normalize(x)
    assert isinstance(host, np.ndarray) and host.dtype == np.float64
    np.testing.assert_allclose(host, expected, rtol=1e-12, atol=1e-15)
    x32 = x.astype(np.float32)
    host32 = scorers.l2_normalize(x32)
    assert isinstance(host32, np.ndarray) and host32.dtype == np.float32
    device = jax.jit(scorers.l2_normalize)(jnp.asarray(x32))
    assert isinstance(device, jax.Array) and device.dtype == jnp.float32
    for got in (host32, device):
        assert_close(got, expected)
    assert scorers.l2_normalize(jnp.asarray(x32, jnp.bfloat16)).dtype == jnp.float32


def test_l2_normalize_gradient_is_finite_at_zero_and_matches_analytic_form():
    v = jnp.array([3.0, -4.0, 12.0], jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    g = jax.grad(lambda x: scorers.l2_normalize(x)[0])(v)
    n = 13.0
    expected = np.array([1 / n - 9 / n**3, 12 / n**3, -36 / n**3])  # ∂(x_0/‖x‖)/∂x = e_0/‖x‖ − x_0 x/‖x‖³
    assert_close(g, expected)
    g0 = jax.grad(lambda x: jnp.sum(scorers.l2_normalize(x)))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g0)))
