"""Tests for hnjax.blockwise and hnjax.gradcache.

Blockwise losses are checked against float64 NumPy references written here (value and an analytic gradient, the
latter itself checked by central finite differences), against a dense jnp loss differentiated by jax.grad, and
against hnjax.losses; sharded (8 CPU devices) results against the single-device global batch. GradCache is checked
against jax.value_and_grad of the unchunked computation with dropout active.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from numerics import assert_close

from hnjax import blockwise, gradcache, losses

# ----------------------------------------------------------------------------------------------------------------
# float64 NumPy references (never call the code under test)
# ----------------------------------------------------------------------------------------------------------------


def np_log_softmax(x):
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def ref_loss_and_grad(z1, z2, *, kind="infonce", tau=0.05, margin=0.3, symmetric=False):
    """Loss and analytic gradient (w.r.t. z1, z2) of (focal-)InfoNCE over cosines, float64."""
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n1 = np.linalg.norm(z1, axis=1, keepdims=True)
    n2 = np.linalg.norm(z2, axis=1, keepdims=True)
    a, b = z1 / n1, z2 / n2
    s = a @ b.T  # [N, N] cosines
    n = s.shape[0]
    eye = np.eye(n, dtype=bool)

    def one_direction(s):
        if kind == "infonce":
            logits, dlogit_ds = s / tau, np.full_like(s, 1 / tau)
        else:  # focal: s_p²/τ on the diagonal, s_n(s_n + m)/τ off it
            logits = np.where(eye, s * s, s * (s + margin)) / tau
            dlogit_ds = np.where(eye, 2 * s, 2 * s + margin) / tau
        lsm = np_log_softmax(logits)
        loss = -np.mean(np.diag(lsm))
        g_logits = (np.exp(lsm) - eye) / n
        return loss, g_logits * dlogit_ds  # dL/ds

    loss, gs = one_direction(s)
    if symmetric:
        loss_t, gs_t = one_direction(s.T)
        loss, gs = (loss + loss_t) / 2, (gs + gs_t.T) / 2
    ga, gb = gs @ b, gs.T @ a  # dL/da, dL/db

    def through_norm(g, u, norm):  # d(z/|z|)ᵀ g
        return (g - u * np.sum(u * g, axis=1, keepdims=True)) / norm

    return loss, through_norm(ga, a, n1), through_norm(gb, b, n2)


def ref_sum_of_max(qv, qm, dv, dm):
    """[B, N] sum over valid query vectors of the max over valid document vectors (0 if none), float64 loops."""
    out = np.zeros((qv.shape[0], dv.shape[0]))
    for i in range(qv.shape[0]):
        for j in range(dv.shape[0]):
            valid_d = [dv[j, t] for t in range(dv.shape[1]) if dm[j, t]]
            for u in range(qv.shape[1]):
                if qm[i, u] and valid_d:
                    out[i, j] += max(float(np.dot(qv[i, u], x)) for x in valid_d)
    return out


def ref_ce(logits):
    return -np.mean(np.diag(np_log_softmax(np.asarray(logits, np.float64))))


def dense_infonce(z1, z2, tau=0.05):
    """Plain (dense) jnp InfoNCE, differentiated by jax.grad: the loss a blockwise loss must reproduce."""
    a = z1 / jnp.linalg.norm(z1, axis=1, keepdims=True)
    b = z2 / jnp.linalg.norm(z2, axis=1, keepdims=True)
    return -jnp.mean(jnp.diag(jax.nn.log_softmax(a @ b.T / tau, axis=1)))


def views(seed, n, d, noise=1.5, dtype=np.float32):
    r = np.random.default_rng(seed)
    z1 = r.normal(size=(n, d))
    z2 = z1 + noise * r.normal(size=(n, d))
    if dtype == np.float64:
        return z1, z2
    return jnp.asarray(z1, dtype), jnp.asarray(z2, dtype)


# ----------------------------------------------------------------------------------------------------------------
# the reference itself
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,symmetric", [("infonce", False), ("infonce", True), ("focal", False)])
def test_reference_gradient_matches_finite_differences(kind, symmetric):
    z1, z2 = views(0, 5, 4, dtype=np.float64)
    _, g1, g2 = ref_loss_and_grad(z1, z2, kind=kind, symmetric=symmetric)
    eps = 1e-6
    for z, g, which in ((z1, g1, 0), (z2, g2, 1)):
        fd = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += eps
            zm[idx] -= eps
            args_p = (zp, z2) if which == 0 else (z1, zp)
            args_m = (zm, z2) if which == 0 else (z1, zm)
            lp = ref_loss_and_grad(*args_p, kind=kind, symmetric=symmetric)[0]
            lm = ref_loss_and_grad(*args_m, kind=kind, symmetric=symmetric)[0]
            fd[idx] = (lp - lm) / (2 * eps)
        # central differences in float64: truncation O(eps²) plus rounding O(1e-16 / eps)
        assert_close(g, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------------------------
# blockwise_infonce / blockwise_focal_infonce, single device
# ----------------------------------------------------------------------------------------------------------------


# (B, D, block_size, row_block_size, kind, symmetric): ragged rows and columns, one block, 1-column tiles, B = 1.
CASES = [
    (37, 8, 8, 5, "infonce", False),
    (37, 8, 8, 5, "infonce", True),
    (37, 8, 8, 5, "focal", False),
    (32, 8, 8, None, "focal", False),
    (23, 16, 64, None, "infonce", True),
    (9, 4, 1, 3, "infonce", False),
    (9, 4, 1, 3, "focal", False),
    (1, 4, 4, None, "infonce", False),
    (1, 4, 4, None, "focal", False),
]


@pytest.mark.parametrize("b,d,block,row_block,kind,symmetric", CASES)
def test_blockwise_matches_reference(b, d, block, row_block, kind, symmetric):
    z1, z2 = views(b * 7 + d, b, d)
    if kind == "infonce":
        fn = functools.partial(
            blockwise.blockwise_infonce, block_size=block, row_block_size=row_block, symmetric=symmetric
        )
    else:
        fn = functools.partial(blockwise.blockwise_focal_infonce, block_size=block, row_block_size=row_block)
    loss, (g1, g2) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(z1, z2)
    want, w1, w2 = ref_loss_and_grad(z1, z2, kind=kind, symmetric=symmetric)
    assert loss.dtype == jnp.float32 and g1.dtype == jnp.float32
    # B = 1: one column, loss and gradient are 0; the backward pass recomputes the logit (scale 1/τ = 20) in float32,
    # so softmax − 1 is float32 rounding, not exactly 0: the magnitude involved is the logit's.
    scale = 1 / 0.05 if b == 1 else None
    assert_close(loss, want, scale=scale)
    assert_close(g1, w1, scale=scale)
    assert_close(g2, w2, scale=scale)


@pytest.mark.slow
def test_blockwise_equals_dense_jnp_loss_and_grad():
    z1, z2 = views(3, 50, 12)
    got = jax.jit(jax.value_and_grad(functools.partial(blockwise.blockwise_infonce, block_size=16), argnums=(0, 1)))
    want = jax.jit(jax.value_and_grad(dense_infonce, argnums=(0, 1)))
    (lg, (g1, g2)), (lw, (w1, w2)) = got(z1, z2), want(z1, z2)
    assert_close(lg, lw)
    assert_close(g1, w1)
    assert_close(g2, w2)


def test_focal_differs_from_infonce():
    """Guards against the focal path silently computing plain InfoNCE."""
    z1, z2 = views(4, 16, 8)
    a = blockwise.blockwise_infonce(z1, z2, block_size=4)
    b = blockwise.blockwise_focal_infonce(z1, z2, block_size=4)
    assert abs(float(a) - float(b)) > 1e-2


@pytest.mark.parametrize("kind", ["infonce", "focal"])
def test_bf16_inputs(kind):
    z1, z2 = views(5, 33, 16, dtype=jnp.bfloat16)
    fn = blockwise.blockwise_infonce if kind == "infonce" else blockwise.blockwise_focal_infonce
    loss, (g1, g2) = jax.jit(jax.value_and_grad(functools.partial(fn, block_size=8), argnums=(0, 1)))(z1, z2)
    # The reference sees exactly the bf16 values; the loss is computed in float32, so it is as accurate as fp32.
    want, w1, w2 = ref_loss_and_grad(np.float32(z1), np.float32(z2), kind=kind)
    assert loss.dtype == jnp.float32 and g1.dtype == jnp.bfloat16 and g2.dtype == jnp.bfloat16
    assert_close(loss, want)
    # Gradients are returned in the input dtype: bf16 rounding (8 bits of mantissa) bounds the agreement.
    assert_close(g1, w1, rtol=1e-2)
    assert_close(g2, w2, rtol=1e-2)


def test_matches_hnjax_losses():
    z1, z2 = views(6, 29, 8)
    pairs = [
        (functools.partial(losses.infonce), functools.partial(blockwise.blockwise_infonce, block_size=8)),
        (
            functools.partial(losses.infonce, symmetric=True),
            functools.partial(blockwise.blockwise_infonce, symmetric=True, block_size=8),
        ),
        (losses.focal_infonce, functools.partial(blockwise.blockwise_focal_infonce, block_size=8)),
    ]
    for plain, blocked in pairs:
        lw, (w1, w2) = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(z1, z2)
        lg, (g1, g2) = jax.jit(jax.value_and_grad(blocked, argnums=(0, 1)))(z1, z2)
        assert_close(lg, lw)
        assert_close(g1, w1)
        assert_close(g2, w2)


def ref_infonce_negatives(z1, z2, neg, tau=0.05):
    """float64 per-row loss with hard negatives appended as columns: [cos(z1, z2) | cos(z1, neg)] / τ, label i."""
    z1, z2, neg = (np.asarray(x, np.float64) for x in (z1, z2, neg))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = np.concatenate([unit(z1) @ unit(z2).T, unit(z1) @ unit(neg).T], axis=1) / tau
    return -np.diag(np_log_softmax(logits)[:, : z1.shape[0]])


def dense_infonce_negatives(z1, z2, neg, tau=0.05):
    unit = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
    logits = jnp.concatenate([unit(z1) @ unit(z2).T, unit(z1) @ unit(neg).T], axis=1) / tau
    return -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=1)[:, : z1.shape[0]]))


def test_hard_negatives_and_reduction_none():
    z1, z2 = views(13, 21, 8)
    neg = z1[::-1] + 0.5  # one hard negative per anchor, related to the anchors
    fn = functools.partial(blockwise.blockwise_infonce, block_size=8, row_block_size=5)
    per_row = jax.jit(functools.partial(fn, reduction="none"))(z1, z2, negatives=neg)
    assert_close(per_row, ref_infonce_negatives(z1, z2, neg))
    got = jax.jit(jax.value_and_grad(lambda a, b, n: fn(a, b, negatives=n), argnums=(0, 1, 2)))(z1, z2, neg)
    want = jax.jit(jax.value_and_grad(dense_infonce_negatives, argnums=(0, 1, 2)))(z1, z2, neg)
    assert_close(got[0], ref_infonce_negatives(z1, z2, neg).mean())
    for g, w in zip(got[1], want[1]):
        assert_close(g, w)
    with pytest.raises(ValueError, match="symmetric"):
        fn(z1, z2, negatives=neg, symmetric=True)
    with pytest.raises(ValueError, match="negatives"):
        fn(z1, z2, negatives=neg[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        fn(z1, z2, reduction="sum")


# ----------------------------------------------------------------------------------------------------------------
# general blockwise_inbatch_ce: multi-vector scores, explicit positives, masks
# ----------------------------------------------------------------------------------------------------------------


def dense_sum_of_max(qv, qm, dv, dm):
    """Dense jnp all-pairs sum-of-max written independently (loops over documents), for jax.grad."""
    rows = []
    for j in range(dv.shape[0]):
        sim = jnp.einsum("bid,jd->bij", qv, dv[j])  # [B, M, Lp]
        sim = jnp.where(dm[j][None, None, :], sim, -1e30)
        best = jnp.where(jnp.any(dm[j]), sim.max(-1), 0.0)
        rows.append(jnp.sum(best * qm, axis=1))
    return jnp.stack(rows, axis=1)  # [B, N]


@pytest.mark.parametrize(
    "block,row_block",
    [(4, 3), pytest.param(16, None, marks=pytest.mark.slow), pytest.param(1, 1, marks=pytest.mark.slow)],
)
def test_multi_vector_sum_of_max(block, row_block):
    r = np.random.default_rng(7)
    b, m, n, d, tau = 11, 3, 5, 4, 0.5
    qv = r.normal(size=(b, m, d)).astype(np.float32)
    dv = r.normal(size=(b, n, d)).astype(np.float32)
    qm = r.random((b, m)) < 0.7
    dm = r.random((b, n)) < 0.6
    qm[:, 0] = True
    dm[2] = False  # a document with no valid vector: score 0, no NaN
    logit = functools.partial(lambda s, pos, t: s / t, t=tau)

    def blocked(qv, dv):
        per_row = blockwise.blockwise_inbatch_ce(
            (qv, jnp.asarray(qm)),
            (dv, jnp.asarray(dm)),
            blockwise.sum_of_max_scores,
            logit,
            block_size=block,
            row_block_size=row_block,
        )
        return per_row.mean()

    def dense(qv, dv):
        s = dense_sum_of_max(qv, jnp.asarray(qm), dv, jnp.asarray(dm)) / tau
        return -jnp.mean(jnp.diag(jax.nn.log_softmax(s, axis=1)))

    lg, (gq, gd) = jax.jit(jax.value_and_grad(blocked, argnums=(0, 1)))(qv, dv)
    lw, (wq, wd) = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(qv, dv)
    assert_close(lg, ref_ce(ref_sum_of_max(qv, qm, dv, dm) / tau))
    assert_close(lg, lw)
    assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gd))
    assert_close(gq, wq)
    assert_close(gd, wd)
    np.testing.assert_array_equal(np.asarray(gd)[2], 0.0)


def scorers_sum_of_max(q, d):
    from hnjax import scorers

    return scorers.sum_of_max(q[0], d[0], q[1], d[1])


def test_multi_vector_with_hnjax_scorers_sum_of_max():
    """The library's all-pairs sum_of_max plugs in as the tile score function."""
    r = np.random.default_rng(17)
    b, m, n, d, tau = 10, 3, 4, 5, 0.5
    qv, dv = jnp.float32(r.normal(size=(b, m, d))), jnp.float32(r.normal(size=(b, n, d)))
    qm, dm = r.random((b, m)) < 0.7, r.random((b, n)) < 0.7
    qm[:, 0], dm[:, 0] = True, True
    logit = functools.partial(lambda s, pos, t: s / t, t=tau)

    def blocked(qv, dv):
        q, dd = (qv, jnp.asarray(qm)), (dv, jnp.asarray(dm))
        return blockwise.blockwise_inbatch_ce(q, dd, scorers_sum_of_max, logit, block_size=4, row_block_size=3).mean()

    def dense(qv, dv):
        s = dense_sum_of_max(qv, jnp.asarray(qm), dv, jnp.asarray(dm)) / tau
        return -jnp.mean(jnp.diag(jax.nn.log_softmax(s, axis=1)))

    lg, gg = jax.jit(jax.value_and_grad(blocked, argnums=(0, 1)))(qv, dv)
    lw, gw = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(qv, dv)
    assert_close(lg, ref_ce(ref_sum_of_max(np.asarray(qv), qm, np.asarray(dv), dm) / tau))
    for g, w in zip(gg, gw):
        assert_close(g, w)


def test_sum_of_max_scores_matches_reference():
    r = np.random.default_rng(8)
    qv, dv = r.normal(size=(4, 3, 5)), r.normal(size=(6, 2, 5))
    qm, dm = r.random((4, 3)) < 0.6, r.random((6, 2)) < 0.6
    dm[0] = False
    got = jax.jit(blockwise.sum_of_max_scores)((jnp.float32(qv), qm), (jnp.float32(dv), dm))
    assert_close(got, ref_sum_of_max(qv, qm, dv, dm))


def test_explicit_positives_and_extra_columns():
    """N > B with positives anywhere (e.g. extra hard negatives appended as columns)."""
    r = np.random.default_rng(9)
    q, d = r.normal(size=(7, 4)).astype(np.float32), r.normal(size=(19, 4)).astype(np.float32)
    pos = np.array([3, 0, 18, 5, 5, 11, 2])
    fn = jax.jit(
        lambda q, d: blockwise.blockwise_inbatch_ce(
            q, d, blockwise.dot_scores, lambda s, p: s, positives=jnp.asarray(pos), block_size=4, row_block_size=2
        )
    )
    logits = q.astype(np.float64) @ d.T.astype(np.float64)
    lsm = np_log_softmax(logits)
    assert_close(fn(q, d), -lsm[np.arange(7), pos])
    g = jax.jit(jax.grad(lambda q, d: fn(q, d).sum(), argnums=(0, 1)))(q, d)
    onehot = np.eye(19)[pos]
    g_logits = np.exp(lsm) - onehot
    assert_close(g[0], g_logits @ d)
    assert_close(g[1], g_logits.T @ q)


def test_per_row_cotangent_weights():
    """A non-uniform cotangent per row (weighted losses) reaches the right rows."""
    z1, z2 = views(10, 13, 6)
    w = jnp.linspace(0.0, 2.0, 13)

    def blocked(a, b):
        per = blockwise.blockwise_inbatch_ce(a, b, blockwise.dot_scores, lambda s, p: s * 3.0, block_size=4)
        return jnp.sum(per * w)

    def dense(a, b):
        return -jnp.sum(jnp.diag(jax.nn.log_softmax(3.0 * a @ b.T, axis=1)) * w)

    got = jax.jit(jax.grad(blocked, argnums=(0, 1)))(z1, z2)
    want = jax.jit(jax.grad(dense, argnums=(0, 1)))(z1, z2)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


# ----------------------------------------------------------------------------------------------------------------
# multi-device: 8 CPU devices, gathered negatives, equal to the single-device global batch
# ----------------------------------------------------------------------------------------------------------------


def data_mesh():
    if jax.device_count() < 8:
        pytest.fail(f"needs 8 devices (tests/conftest.py sets them), found {jax.device_count()}")
    return jax.make_mesh((8,), ("data",))


def on_mesh(mesh, spec, *xs):
    return [jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)) for x in xs]


@pytest.mark.parametrize(
    "fn,kind,symmetric",
    [
        (functools.partial(blockwise.blockwise_infonce, block_size=16, row_block_size=3), "infonce", False),
        (functools.partial(blockwise.blockwise_infonce, block_size=7, symmetric=True), "infonce", True),
        (functools.partial(blockwise.blockwise_focal_infonce, block_size=16), "focal", False),
    ],
)
def test_sharded_equals_global_batch(fn, kind, symmetric):
    mesh = data_mesh()
    z1, z2 = views(11, 8 * 5, 6)  # 5 rows per device, N = 40 gathered columns
    z1s, z2s = on_mesh(mesh, P("data"), z1, z2)
    sharded = jax.shard_map(
        functools.partial(fn, axis_name="data"), mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()
    )
    loss, (g1, g2) = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(z1s, z2s)
    want, w1, w2 = ref_loss_and_grad(z1, z2, kind=kind, symmetric=symmetric)
    assert_close(loss, want)
    assert_close(g1, w1)
    assert_close(g2, w2)


def test_sharded_hard_negatives_equal_global_batch():
    """Gathered hard negatives keep each row's label on its own positive (the label-shift trap of LESSONS 3)."""
    mesh = data_mesh()
    z1, z2 = views(14, 8 * 3, 6)
    neg = z2[::-1] * 0.9 + 0.2  # 3 per device, one per anchor
    fn = lambda a, b, n: blockwise.blockwise_infonce(a, b, negatives=n, block_size=5, axis_name="data")
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P("data"), P("data"), P("data")), out_specs=P())
    args = on_mesh(mesh, P("data"), z1, z2, neg)
    loss, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(*args)
    want, wgrads = jax.jit(jax.value_and_grad(dense_infonce_negatives, argnums=(0, 1, 2)))(z1, z2, neg)
    assert_close(loss, ref_infonce_negatives(z1, z2, neg).mean())
    for g, w in zip(grads, wgrads):
        assert_close(g, w)


def test_sharded_gradient_taken_inside_shard_map():
    """The data-parallel step form: each device differentiates the global loss w.r.t. its own rows."""
    mesh = data_mesh()
    z1, z2 = views(12, 8 * 4, 6)

    def step(a, b):
        loss, grads = jax.value_and_grad(
            functools.partial(blockwise.blockwise_focal_infonce, block_size=8, axis_name="data"), argnums=(0, 1)
        )(a, b)
        return loss, grads

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), (P("data"), P("data"))))
    loss, (g1, g2) = jax.jit(sharded)(*on_mesh(mesh, P("data"), z1, z2))
    want, w1, w2 = ref_loss_and_grad(z1, z2, kind="focal")
    assert_close(loss, want)
    assert_close(g1, w1)
    assert_close(g2, w2)


# ----------------------------------------------------------------------------------------------------------------
# memory, compilation, validation
# ----------------------------------------------------------------------------------------------------------------


def test_compiled_temp_memory_is_far_below_the_logit_matrix():
    b, d, block = 4096, 32, 256
    z = jax.ShapeDtypeStruct((b, d), jnp.float32)
    grad = jax.value_and_grad(functools.partial(blockwise.blockwise_infonce, block_size=block), argnums=(0, 1))
    blocked = jax.jit(grad).lower(z, z).compile().memory_analysis()
    dense = jax.jit(jax.value_and_grad(dense_infonce, argnums=(0, 1))).lower(z, z).compile().memory_analysis()
    logit_matrix = b * b * 4
    assert dense.temp_size_in_bytes >= logit_matrix  # the plain loss does hold it
    assert blocked.temp_size_in_bytes < logit_matrix / 8, blocked.temp_size_in_bytes


@contextlib.contextmanager
def counting_compiles(fun_name):
    """Yields a list that gets one entry per XLA compilation of ``fun_name`` in the block (jax.monitoring's event)."""
    compiles = []

    def listener(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == fun_name:
            compiles.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize(
    "method,dtype,sharded",
    [
        ("blockwise", "bfloat16", True),
        ("gradcache", "bfloat16", False),
        ("gradcache", "float32", True),
    ],
)
def test_training_loop_compiles_once(method, dtype, sharded):
    """Steady state: a jitted SGD step on the blockwise loss (directly, or through grad_cache), fed its own outputs,
    compiles only on the first step.

    Under jit nothing inside the loss can retrace by itself; what can is a step whose outputs differ from its inputs
    (gradients in another dtype than the parameters, or placed with another sharding), so the parameters are fed
    back, as in training. A new batch size must compile again: the count is live.
    """
    r = np.random.default_rng(16)
    w = jnp.asarray(r.normal(size=(6, 4)) / 3, dtype)
    axis = "data" if sharded else None

    def encode(w, xy, key):  # [B, 6] inputs -> [B, 4] embeddings
        return xy[0] @ w, xy[1] @ w

    def loss(e):
        return blockwise.blockwise_infonce(*e, temperature=0.5, block_size=5, row_block_size=3, axis_name=axis)

    def grad(w, x, y):
        if method == "gradcache":
            return gradcache.grad_cache(encode, loss, w, (x, y), chunk_size=2, key=None, axis_name=axis)
        return jax.value_and_grad(lambda w: loss(encode(w, (x, y), None)))(w)

    if sharded:
        mesh = data_mesh()
        (w,) = on_mesh(mesh, P(), w)
        grad = jax.shard_map(grad, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()))

    @jax.jit
    def step(w, x, y):
        value, g = grad(w, x, y)
        return value, w - jnp.asarray(0.1, w.dtype) * g

    def batch(n):
        xy = [jnp.asarray(r.normal(size=(n, 6)), dtype) for _ in range(2)]
        return on_mesh(data_mesh(), P("data"), *xy) if sharded else xy

    with counting_compiles("jit(step)") as compiles:
        values, w0 = [], w
        for _ in range(4):
            value, w = step(w, *batch(32))
            values.append(float(value))
        assert len(compiles) == 1, f"{len(compiles)} compilations in 4 steps; parameters {w0.dtype} -> {w.dtype}"
        assert w.dtype == w0.dtype and w.sharding.is_equivalent_to(w0.sharding, w0.ndim)
        step(w, *batch(48))
        assert len(compiles) == 2
    assert np.all(np.isfinite(values)) and len(set(values)) == 4  # new data and parameters every step


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": 2.5}, "block_size"),
        ({"row_block_size": -1}, "row_block_size"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_arguments(kwargs, match):
    z1, z2 = views(0, 4, 3)
    with pytest.raises(ValueError, match=match):
        blockwise.blockwise_infonce(z1, z2, **kwargs)


def test_invalid_shapes():
    z = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="same shape"):
        blockwise.blockwise_infonce(z, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"z1: expected shape \[B, D\]"):
        blockwise.blockwise_focal_infonce(jnp.ones((4,)), jnp.ones((4,)))
    with pytest.raises(ValueError, match="floating"):
        blockwise.blockwise_infonce(jnp.ones((4, 3), jnp.int32), jnp.ones((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="N >= B"):
        blockwise.blockwise_inbatch_ce(z, jnp.ones((2, 3)), blockwise.dot_scores, lambda s, p: s)
    with pytest.raises(ValueError, match="positives"):
        blockwise.blockwise_inbatch_ce(z, z, blockwise.dot_scores, lambda s, p: s, positives=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="leading"):
        blockwise.blockwise_inbatch_ce((z, jnp.ones((5,))), z, blockwise.dot_scores, lambda s, p: s)


# ----------------------------------------------------------------------------------------------------------------
# GradCache
# ----------------------------------------------------------------------------------------------------------------


class DropoutMLP(nn.Module):
    """Tiny encoder with dropout active in training, so per-chunk key handling matters."""

    width: int = 16
    out: int = 8
    rate: float = 0.3

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.gelu(nn.Dense(self.width)(x))
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Dense(self.out)(x)


def make_encoder(seed=0, in_dim=6):
    model = DropoutMLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, in_dim)), train=False)

    def encode_view(p, x, k):
        return model.apply(p, x, train=True, rngs={"dropout": k})

    def encode_two_views(p, x, k):  # SimCSE: the same sentences twice, two dropout masks
        return encode_view(p, x, jax.random.fold_in(k, 0)), encode_view(p, x, jax.random.fold_in(k, 1))

    return params, encode_view, encode_two_views


def unchunked(encode_fn, loss_fn, params, batch, chunk_size, key):
    """Reference: the plain computation with the same per-chunk keys, differentiated end to end.

    Chunks are encoded with ``jax.vmap`` (keys fold_in(key, c)), a different code path from grad_cache's lax.map/scan.
    """
    n_chunks = jax.tree.leaves(batch)[0].shape[0] // chunk_size
    chunks = jax.tree.map(lambda x: x.reshape((n_chunks, chunk_size) + x.shape[1:]), batch)
    keys = None if key is None else jnp.stack([jax.random.fold_in(key, c) for c in range(n_chunks)])

    def total(p):
        emb = jax.vmap(encode_fn, in_axes=(None, 0, None if key is None else 0))(p, chunks, keys)
        return loss_fn(jax.tree.map(lambda e: e.reshape((-1,) + e.shape[2:]), emb))

    return jax.value_and_grad(total)(params)


@pytest.mark.parametrize("chunk_size", [4, pytest.param(32, marks=pytest.mark.slow)])
def test_grad_cache_two_view_simcse_with_dropout(chunk_size):
    params, _, encode2 = make_encoder()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 6)), jnp.float32)
    key = jax.random.key(42)
    loss_fn = lambda e: dense_infonce(*e)
    got = jax.jit(lambda p, x, k: gradcache.grad_cache(encode2, loss_fn, p, x, chunk_size=chunk_size, key=k))(
        params, x, key
    )
    reference = jax.jit(lambda p, x, k: unchunked(encode2, loss_fn, p, x, chunk_size, k))
    want = reference(params, x, key)
    assert_close(got[0], want[0])
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        assert_close(a, b)
    # Dropout is live: another key changes the gradient by far more than the tolerance.
    other = reference(params, x, jax.random.key(43))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(other[1]), jax.tree.leaves(want[1])))
    assert diff > 1e-3


@pytest.mark.slow
def test_grad_cache_with_blockwise_loss_and_pytree_batch():
    params, encode1, _ = make_encoder(1)
    r = np.random.default_rng(1)
    batch = {"a": jnp.float32(r.normal(size=(24, 6))), "b": jnp.float32(r.normal(size=(24, 6)))}

    def encode(p, x, k):
        return encode1(p, x["a"], jax.random.fold_in(k, 0)), encode1(p, x["b"], jax.random.fold_in(k, 1))

    loss_fn = lambda e: blockwise.blockwise_focal_infonce(*e, block_size=5)
    key = jax.random.key(3)
    got = jax.jit(lambda p: gradcache.grad_cache(encode, loss_fn, p, batch, chunk_size=6, key=key))(params)
    want = jax.jit(lambda p: unchunked(encode, lambda e: ref_focal_jnp(*e), p, batch, 6, key))(params)
    assert_close(got[0], want[0])
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        assert_close(a, b)


def ref_focal_jnp(z1, z2, tau=0.05, m=0.3):
    a = z1 / jnp.linalg.norm(z1, axis=1, keepdims=True)
    b = z2 / jnp.linalg.norm(z2, axis=1, keepdims=True)
    s = a @ b.T
    eye = jnp.eye(s.shape[0], dtype=bool)
    return -jnp.mean(jnp.diag(jax.nn.log_softmax(jnp.where(eye, s * s, s * (s + m)) / tau, axis=1)))


def test_grad_cache_deterministic_encoder_without_key():
    r = np.random.default_rng(2)
    w = jnp.float32(r.normal(size=(5, 3)))
    x = jnp.float32(r.normal(size=(12, 5)))
    enc = lambda p, x, k: jnp.tanh(x @ p)
    loss_fn = lambda e: jnp.sum(e**3) + jnp.sum(e) ** 2  # couples chunks
    loss, g = gradcache.grad_cache(enc, loss_fn, w, x, chunk_size=3, key=None)
    want_loss, want_g = jax.value_and_grad(lambda p: loss_fn(enc(p, x, None)))(w)
    assert_close(loss, want_loss)
    assert_close(g, want_g)


def test_grad_cache_sharded_one_reduction_equals_global_batch():
    mesh = data_mesh()
    params, encode1, _ = make_encoder(2)
    x = jnp.float32(np.random.default_rng(3).normal(size=(8 * 4, 6)))
    y = x + 0.1

    def encode(p, xy, k):
        return encode1(p, xy[0], jax.random.fold_in(k, 0)), encode1(p, xy[1], jax.random.fold_in(k, 1))

    key = jax.random.key(5)

    def step(p, x, y):
        # Per-device key, so each device's chunks draw their own dropout masks.
        k = jax.random.fold_in(key, jax.lax.axis_index("data"))
        loss_fn = lambda e: blockwise.blockwise_infonce(*e, block_size=8, axis_name="data")
        return gradcache.grad_cache(encode, loss_fn, p, (x, y), chunk_size=2, key=k, axis_name="data")

    sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()))
    (params_r,) = on_mesh(mesh, P(), params)
    loss, grads = jax.jit(sharded)(params_r, *on_mesh(mesh, P("data"), x, y))

    def global_loss(p):  # the same dropout masks: device i, chunk c uses fold_in(fold_in(key, i), c)
        keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(key, i), c) for i in range(8) for c in range(2)])
        e1, e2 = jax.vmap(encode, in_axes=(None, 0, 0))(p, (x.reshape(16, 2, 6), y.reshape(16, 2, 6)), keys)
        return dense_infonce(e1.reshape(32, -1), e2.reshape(32, -1))

    want_loss, want_grads = jax.jit(jax.value_and_grad(global_loss))(params)
    assert_close(loss, want_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        assert_close(a, b)


def test_grad_cache_invalid_arguments():
    enc = lambda p, x, k: x @ p
    with pytest.raises(ValueError, match="divisible by chunk_size=5"):
        gradcache.grad_cache(enc, jnp.sum, jnp.ones((2, 2)), jnp.ones((12, 2)), chunk_size=5, key=None)
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        gradcache.grad_cache(enc, jnp.sum, jnp.ones((2, 2)), jnp.ones((12, 2)), chunk_size=0, key=None)
    with pytest.raises(ValueError, match="leading batch axis"):
        gradcache.grad_cache(
            enc, jnp.sum, jnp.ones((2, 2)), (jnp.ones((12, 2)), jnp.ones((4, 2))), chunk_size=4, key=None
        )
