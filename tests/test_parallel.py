"""Data parallelism: pmap and shard_map steps equal the single-device step on the global batch (8 host devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from numerics import assert_close, assert_trees_close

from hnjax import losses, parallel
from hnjax.train import state as state_lib
from hnjax.train import step as step_lib

N_DEV = 8
TAU = 0.5


def encode(params, x):
    return jnp.tanh(x @ params["w"] + params["b"])  # [B, D]


def inbatch_loss(params, batch, key, axis_name=None):
    """In-batch softmax CE with one explicit hard negative per query, negatives gathered over devices.

    Columns: every gathered positive, then every gathered hard negative; the gold of local row i is column
    offset + i (losses.gather_columns). Returns the global-batch mean over valid rows (psum of sums / psum of counts).
    """
    del key
    q, d, n = encode(params, batch["q"]), encode(params, batch["d"]), encode(params, batch["n"])
    valid = batch["valid"]
    (d_all, offset), (n_all, _) = losses.gather_columns(d, axis_name), losses.gather_columns(n, axis_name)
    cols = jnp.concatenate([d_all, n_all])  # [2 B_g, D]
    col_valid = jnp.tile(losses.gather_columns(valid, axis_name)[0], 2)
    logits = jnp.where(col_valid[None, :], q @ cols.T / TAU, -1e9)  # [B, 2 B_g]
    labels = offset + jnp.arange(q.shape[0])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]
    num, den = jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(valid.astype(jnp.float32))
    pos = jnp.sum(jnp.where(valid, jnp.sum(q * d, -1), 0.0))
    if axis_name is not None:
        num, den, pos = lax.psum((num, den, pos), axis_name)
    return num / den, {"pos_score": pos / den}


def local_mean_loss(params, batch, key, axis_name=None):
    """Per-example squared error, local mean on each device (valid for equal shards), reported with pmean."""
    del key, axis_name
    err = jnp.sum((encode(params, batch["q"]) - batch["t"]) ** 2, -1)
    return jnp.mean(err), {}


def numpy_inbatch_loss(params, batch):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    enc = lambda x: np.tanh(np.asarray(x, np.float64) @ p["w"] + p["b"])
    q, d, n = enc(batch["q"]), enc(batch["d"]), enc(batch["n"])
    v = np.asarray(batch["valid"])
    cols, cv = np.concatenate([d, n]), np.concatenate([v, v])
    total, count = 0.0, 0
    for i in range(len(q)):
        if not v[i]:
            continue
        s = (cols @ q[i]) / TAU
        s = s[cv]
        gold = s[i]  # positives of valid rows come first, in order, and row i is valid
        m = s.max()
        total += m + np.log(np.sum(np.exp(s - m))) - gold
        count += 1
    return total / count


def make_data(b, seed=0, din=6, dout=4):
    rng = np.random.default_rng(seed)
    batch = {
        "q": rng.normal(size=(b, din)).astype(np.float32),
        "d": rng.normal(size=(b, din)).astype(np.float32),
        "n": rng.normal(size=(b, din)).astype(np.float32),
        "t": rng.normal(size=(b, dout)).astype(np.float32),
        "valid": np.ones((b,), bool),
    }
    params = {"w": rng.normal(size=(din, dout)).astype(np.float32) * 0.5, "b": np.zeros((dout,), np.float32)}
    return params, batch


def run_step(loss_fn, mode, params, batch, *, grad_accum=1, n_dev=N_DEV, clip_norm=0.5):
    """One AdamW step; returns host state, metrics and the gradient G the step used (clipped to clip_norm).

    After one AdamW update the first moment is mu = (1 - b1) * clip(G), so G is read back from the optimizer state.
    """
    opt, _ = state_lib.make_optimizer(lr=1e-2, total_steps=10, warmup=0.0, weight_decay=0.1, clip_norm=clip_norm)
    dp = parallel.DataParallel(mode, 1 if mode == "none" else n_dev)
    step = dp.compile(step_lib.make_train_step(loss_fn, opt, grad_accum=grad_accum, axis_name=dp.axis_name))
    st = dp.put_state(state_lib.create_train_state(jax.tree.map(jnp.asarray, params), opt, seed=3))
    st, metrics = step(st, dp.put_batch(batch))
    st = dp.state_to_host(st)
    adam_state = st.opt_state[-1][0]
    assert isinstance(adam_state, optax.ScaleByAdamState)
    grads = jax.tree.map(lambda mu: np.asarray(mu) / np.float32(0.1), adam_state.mu)  # float32, as computed
    return st, dp.metrics_to_host(metrics), grads


_REFERENCE = {}


def reference(loss_fn, b, seed):
    """Single-device step on make_data(b, seed), computed once per module (shared by the parametrized tests)."""
    key = (loss_fn.__name__, b, seed)
    if key not in _REFERENCE:
        _REFERENCE[key] = run_step(loss_fn, "none", *make_data(b, seed=seed))
    return _REFERENCE[key]


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_inbatch_parallel_equals_single_device(mode):
    params, batch = make_data(16)
    ref_state, ref_m, ref_g = reference(inbatch_loss, 16, 0)
    assert_close(ref_m["loss"], numpy_inbatch_loss(params, batch))
    st, m, g = run_step(inbatch_loss, mode, params, batch)
    assert_close(m["loss"], ref_m["loss"])
    assert_close(m["pos_score"], ref_m["pos_score"])
    assert_close(m["grad_norm"], ref_m["grad_norm"])
    assert m["examples"] == ref_m["examples"] == 16
    assert_trees_close(g, ref_g)
    assert_trees_close(st.params, ref_state.params)
    assert_trees_close(st.opt_state, ref_state.opt_state)
    assert int(st.step) == 1


def test_single_device_gradient_matches_finite_differences():
    params, batch = make_data(5, seed=1)
    _, _, g = run_step(inbatch_loss, "none", params, batch, clip_norm=None)
    eps = 1e-5
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for name, idx in [("w", (0, 0)), ("w", (3, 2)), ("b", (1,))]:
        up, down = {k: v.copy() for k, v in p64.items()}, {k: v.copy() for k, v in p64.items()}
        up[name][idx] += eps
        down[name][idx] -= eps
        fd = (numpy_inbatch_loss(up, batch) - numpy_inbatch_loss(down, batch)) / (2 * eps)
        assert_close(g[name][idx], fd, rtol=1e-4, atol=1e-5)  # float32 gradient vs float64 differences


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_local_mean_loss_parallel_equals_single_device(mode):
    params, batch = make_data(16, seed=2)
    ref_state, ref_m, ref_g = reference(local_mean_loss, 16, 2)
    st, m, g = run_step(local_mean_loss, mode, params, batch)
    assert_close(m["loss"], ref_m["loss"])
    assert_trees_close(g, ref_g)
    assert_trees_close(st.params, ref_state.params)


@pytest.mark.parametrize("mode", ["none", "shard_map"])
def test_padded_batch_equals_unpadded(mode):
    params, batch = make_data(13, seed=4)
    _, ref_m, ref_g = reference(inbatch_loss, 13, 4)
    padded = parallel.pad_batch({k: v for k, v in batch.items() if k != "valid"}, parallel.padded_size(13, N_DEV))
    assert padded["q"].shape[0] == 16 and padded["valid"].sum() == 13 and not padded["valid"][13:].any()
    _, m, g = run_step(inbatch_loss, mode, params, padded)
    assert_close(m["loss"], ref_m["loss"])
    assert m["examples"] == 13
    assert_trees_close(g, ref_g)


@pytest.mark.parametrize("mode", ["none", "shard_map", "pmap"])
def test_grad_accum_2x8_equals_batch_16(mode):
    """Per-example-mean loss: 2 micro-batches of 8 (strided split) give the gradient of one batch of 16."""
    params, batch = make_data(16, seed=5)
    ref_state, ref_m, ref_g = reference(local_mean_loss, 16, 5)
    n_dev = 4  # 8 rows per micro-batch over 4 devices: 2 rows each
    st, m, g = run_step(local_mean_loss, mode, params, batch, grad_accum=2, n_dev=n_dev)
    assert_close(m["loss"], ref_m["loss"])
    assert_trees_close(g, ref_g)
    assert_trees_close(st.params, ref_state.params)


def test_grad_accum_with_padding_weights_micro_batches_by_valid_count():
    """Micro-batches with different numbers of valid rows: weights n_a make it the mean over all valid rows."""
    params, batch = make_data(16, seed=6)
    batch["valid"][[0, 2, 4, 6, 8]] = False  # all in micro-batch 0 (even rows): 3 valid there, 8 in micro-batch 1

    def masked_mean(params, batch, key, axis_name=None):
        err = jnp.sum((encode(params, batch["q"]) - batch["t"]) ** 2, -1)
        w = batch["valid"].astype(jnp.float32)
        return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0), {}

    keep = batch["valid"]
    _, ref_m, ref_g = run_step(masked_mean, "none", params, {k: v[keep] for k, v in batch.items()})
    _, m, g = run_step(masked_mean, "none", params, batch, grad_accum=2)
    assert_close(m["loss"], ref_m["loss"])
    assert m["examples"] == 11
    assert_trees_close(g, ref_g)


def test_all_padding_micro_batch_contributes_nothing():
    params, batch = make_data(8, seed=7)
    batch["valid"][0::2] = False  # micro-batch 0 of 2 holds only padding

    def masked_mean(params, batch, key, axis_name=None):
        err = jnp.sum((encode(params, batch["q"]) - batch["t"]) ** 2, -1)
        w = batch["valid"].astype(jnp.float32)
        return jnp.sum(err * w) / jnp.sum(w), {}  # 0/0 = NaN on the padding-only micro-batch

    _, ref_m, ref_g = run_step(masked_mean, "none", params, {k: v[1::2] for k, v in batch.items()})
    _, m, g = run_step(masked_mean, "none", params, batch, grad_accum=2)
    assert m["finite"] == 1.0
    assert_close(m["loss"], ref_m["loss"])
    assert_trees_close(g, ref_g)


def test_split_micro_batches_is_strided():
    x = np.arange(12)
    out = np.asarray(step_lib.split_micro_batches({"x": jnp.asarray(x)}, 3)["x"])
    np.testing.assert_array_equal(out, np.stack([x[0::3], x[1::3], x[2::3]]))


def test_pad_batch_validation():
    with pytest.raises(ValueError, match="leading axis"):
        parallel.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 8)
    with pytest.raises(ValueError, match="size: expected at least"):
        parallel.pad_batch({"a": np.zeros(9)}, 8)
    out = parallel.pad_batch({"a": np.array([1.0, 2.0]), "valid": np.array([True, False])}, 4)
    np.testing.assert_array_equal(out["a"], [1.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(out["valid"], [True, False, False, False])


def test_data_parallel_validation():
    with pytest.raises(ValueError, match="mode: expected one of"):
        parallel.DataParallel("ddp")
    with pytest.raises(ValueError, match="n_devices: expected 1 when mode='none'"):
        parallel.DataParallel("none", 2)
    with pytest.raises(ValueError, match="n_devices: expected between 1 and the 8"):
        parallel.DataParallel("shard_map", 9)
    with pytest.raises(ValueError, match="not divisible by n_devices=8"):
        parallel.DataParallel("shard_map", 8).put_batch({"x": np.zeros((12, 2))})
    assert parallel.DataParallel("pmap").n_devices == jax.local_device_count() == N_DEV
    assert parallel.make_mesh(4).shape == {"data": 4}


def infonce_loss(params, batch, key, axis_name=None):
    """hnjax.losses.infonce with one hard negative per query, all-gathered over devices (global-batch mean)."""
    from hnjax import losses

    q, d, n = encode(params, batch["q"]), encode(params, batch["d"]), encode(params, batch["n"])
    return losses.infonce(q, d, temperature=0.2, axis_name=axis_name, negatives=n), {}


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_library_infonce_parallel_equals_single_device(mode):
    params, batch = make_data(16, seed=8)
    ref_state, ref_m, ref_g = reference(infonce_loss, 16, 8)
    st, m, g = run_step(infonce_loss, mode, params, batch)
    assert_close(m["loss"], ref_m["loss"])
    assert_trees_close(g, ref_g)
    assert_trees_close(st.params, ref_state.params)


def masked_infonce_loss(params, batch, key, axis_name=None):
    """hnjax.losses.infonce honouring the loop's valid mask (padding rows are neither anchors nor negatives)."""
    from hnjax import losses

    q, d, n = encode(params, batch["q"]), encode(params, batch["d"]), encode(params, batch["n"])
    loss = losses.infonce(q, d, temperature=0.2, axis_name=axis_name, negatives=n, valid=batch["valid"])
    return loss, {}


@pytest.mark.parametrize("mode", ["none", "shard_map"])
def test_library_infonce_padded_batch_equals_unpadded(mode):
    params, batch = make_data(13, seed=9)
    _, ref_m, ref_g = reference(masked_infonce_loss, 13, 9)
    padded = parallel.pad_batch({k: v for k, v in batch.items() if k != "valid"}, parallel.padded_size(13, N_DEV))
    _, m, g = run_step(masked_infonce_loss, mode, params, padded)
    assert_close(m["loss"], ref_m["loss"])
    assert_trees_close(g, ref_g)
