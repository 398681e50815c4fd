"""Training engine: optimizer and schedule against NumPy references, config validation, the fit loop with mining
hooks, checkpoints with exact resume (SIGKILL in a subprocess), NaN guard, metrics, and a toy run that learns."""

import json
import math
import os
import subprocess
import sys

import _train_toy as toy
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numerics import assert_close

from hnjax.train import checkpoint as checkpoint_lib
from hnjax.train import config as config_lib
from hnjax.train import loop
from hnjax.train import metrics as metrics_lib
from hnjax.train import state as state_lib
from hnjax.train import step as step_lib

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------------------------


def reference_lr(t, *, lr, total, warmup, decay, end=0.0):
    w = round(warmup * total)
    if t < w:
        return lr * t / w
    frac = min((t - w) / max(total - w, 1), 1.0)
    if decay == "linear":
        return lr * (1 - (1 - end) * frac)
    if decay == "cosine":
        return lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * frac)))
    return lr


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [0.0, 0.1, 0.25])
def test_schedule_matches_formula(decay, warmup):
    schedule = jax.jit(state_lib.make_schedule(lr=2e-3, total_steps=40, warmup=warmup, decay=decay, end_factor=0.1))
    for t in range(0, 41):
        expected = reference_lr(t, lr=2e-3, total=40, warmup=warmup, decay=decay, end=0.1)
        assert_close(float(schedule(t)), expected, scale=2e-3)  # float32 arithmetic on the peak rate


def numpy_adamw(params, grads_seq, *, lr_fn, b1, b2, eps, wd, clip):
    """Independent float64 AdamW with global-norm clipping; weight decay on arrays of ndim >= 2 only."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, g in enumerate(grads_seq):
        g = {k: np.asarray(x, np.float64) for k, x in g.items()}
        norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
        if clip is not None and norm > clip:
            g = {k: x * clip / norm for k, x in g.items()}
        lr = lr_fn(t)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - b1 ** (t + 1)), v[k] / (1 - b2 ** (t + 1))
            update = mhat / (np.sqrt(vhat) + eps) + (wd * p[k] if p[k].ndim >= 2 else 0.0)
            p[k] = p[k] - lr * update
    return p


def test_adamw_with_clipping_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) * s for k, v in params.items()} for s in (3, 0.1, 2)]
    opt, schedule = state_lib.make_optimizer(lr=0.1, total_steps=4, warmup=0.25, weight_decay=0.05, clip_norm=1.0)
    st = opt.init(params)
    p = params
    update = jax.jit(opt.update)
    for g in grads_seq:
        u, st = update(g, st, p)
        p = optax.apply_updates(p, u)
    ref = numpy_adamw(
        params, grads_seq, lr_fn=lambda t: reference_lr(t, lr=0.1, total=4, warmup=0.25, decay="linear"),
        b1=0.9, b2=0.999, eps=1e-8, wd=0.05, clip=1.0,
    )  # fmt: skip
    for k in params:
        assert_close(np.asarray(p[k]), ref[k])


def test_step_uses_fold_in_key_and_increments_step():
    seen = []

    def loss_fn(params, batch, key, axis_name=None):
        noise = jax.random.normal(key, batch["x"].shape)
        return jnp.mean((params["w"] * batch["x"] + noise) ** 2), {"noise_mean": jnp.mean(noise)}

    opt = optax.sgd(0.0)
    st = state_lib.create_train_state({"w": jnp.ones(())}, opt, seed=7)
    step = jax.jit(step_lib.make_train_step(loss_fn, opt))
    x = jnp.arange(4.0)
    for t in range(3):
        st, m = step(st, {"x": x})
        noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(7), t), (4,))
        seen.append(float(m["noise_mean"]))
        assert_close(seen[-1], float(jnp.mean(noise)), scale=float(jnp.max(jnp.abs(noise))))  # a mean near 0
        assert_close(float(m["loss"]), float(np.mean((np.asarray(x) + np.asarray(noise)) ** 2)))
    assert int(st.step) == 3 and len(set(seen)) == 3


def test_nonfinite_update_is_not_applied():
    def loss_fn(params, batch, key, axis_name=None):
        return jnp.sum(params["w"] * batch["x"]), {}

    opt = optax.sgd(1.0)
    st = state_lib.create_train_state({"w": jnp.ones(2)}, opt, seed=0)
    st, m = jax.jit(step_lib.make_train_step(loss_fn, opt))(st, {"x": jnp.array([1.0, jnp.nan])})
    assert float(m["finite"]) == 0.0
    np.testing.assert_array_equal(np.asarray(st.params["w"]), [1.0, 1.0])


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"lr": 0.0}, "lr"),
        ({"warmup": 1.0}, "warmup"),
        ({"decay": "step"}, "decay"),
        ({"parallel": "ddp"}, "parallel"),
        ({"devices": 8}, "devices"),
        ({"checkpoint_every": 5}, "checkpoint_every"),
        ({"resume": True}, "resume"),
        ({"best_metric": "recall@1"}, "best_metric"),
        ({"best_mode": "up", "out": "x"}, "best_mode"),
        ({"b2": 1.0}, "b2"),
    ],
)
def test_config_errors_name_the_setting(kwargs, name):
    with pytest.raises(ValueError, match=f"TrainConfig.{name}"):
        config_lib.TrainConfig(**kwargs)


def test_config_unknown_setting_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match=r"unknown TrainConfig setting\(s\) \['learning_rate'\]"):
        config_lib.TrainConfig.from_dict({"learning_rate": 1e-3})
    c = config_lib.TrainConfig(out=str(tmp_path), lr=3e-4, parallel="shard_map", devices=8, grad_accum=2)
    c.save(str(tmp_path / "c.json"))
    assert config_lib.TrainConfig.load(str(tmp_path / "c.json")) == c
    assert "lr               = 0.0003" in c.describe()


def test_argparse_glue():
    import argparse

    parser = argparse.ArgumentParser()
    config_lib.add_train_arguments(parser)
    args = parser.parse_args(
        "--out o --max-steps 7 --checkpoint-every 3 --resume --grad-accum 2 --parallel pmap --devices all".split()
    )
    c = config_lib.config_from_args(args)
    assert (c.out, c.max_steps, c.checkpoint_every, c.resume, c.grad_accum) == ("o", 7, 3, True, 2)
    assert (c.parallel, c.devices) == ("pmap", None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--lerning-rate", "1"])
    with pytest.raises(ValueError, match="TrainConfig.checkpoint_every"):
        config_lib.config_from_args(parser.parse_args(["--checkpoint-every", "2"]))


def test_steps_for_epochs():
    assert config_lib.steps_for_epochs(4, 1000, 16, 2) == 125  # 4 · 1000 / 32
    assert config_lib.steps_for_epochs(1, 10536, 32) == 330  # ⌈10536 / 32⌉ = ⌈329.25⌉
    assert config_lib.steps_for_epochs(0.5, 10, 4) == 2  # ⌈1.25⌉
    assert config_lib.steps_for_epochs(1, 3, 16, 2) == 1
    assert config_lib.steps_for_epochs(0, 100, 4) == 1  # at least one update
    with pytest.raises(ValueError, match="batch_size"):
        config_lib.steps_for_epochs(1, 10, 0)


def test_argparse_glue_measures_runs_in_epochs():
    import argparse

    parser = argparse.ArgumentParser()
    config_lib.add_train_arguments(parser, config_lib.TrainConfig(batch_size=16, grad_accum=2), epochs=4.0)
    c = config_lib.config_from_args(parser.parse_args([]), num_examples=1000)
    assert c.max_steps == 125  # 4 epochs of 1000 examples, 32 per update
    c = config_lib.config_from_args(parser.parse_args(["--epochs", "0.5", "--batch-size", "10"]), num_examples=100)
    assert c.max_steps == 3  # ⌈0.5 · 100 / 20⌉
    assert config_lib.config_from_args(parser.parse_args(["--max-steps", "7"]), num_examples=1000).max_steps == 7
    with pytest.raises(ValueError, match="num_examples"):
        config_lib.config_from_args(parser.parse_args([]))
    strict = argparse.ArgumentParser()
    config_lib.add_train_arguments(strict, require_out=True)
    with pytest.raises(SystemExit):
        strict.parse_args([])


def test_data_order_is_seeded_complete_and_pads_the_last_batch():
    order = loop.DataOrder(10, 4, seed=3)
    assert order.steps_per_epoch == 3
    epoch0 = np.concatenate([order.indices(t) for t in range(3)])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(10))
    np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(10))
    assert len(order.indices(2)) == 2 and order.position(4) == (1, 1)
    assert not np.array_equal(order.indices(3), order.indices(0))  # a new permutation each epoch


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


class FakeMiner:
    """Follows the mining protocol; candidates of query i are (i + r) % N for a table offset r set by refreshes."""

    def __init__(self, n, every):
        self.n, self.every = n, every
        self.offset, self.last = 1, -1
        self.calls = []

    def maybe_refresh(self, params, *, step, epoch):
        self.calls.append(("refresh", step, epoch))
        if self.last < 0 or step - self.last >= self.every:
            self.offset = 1 + int(abs(float(jnp.sum(jax.tree.leaves(params)[0]))) * 1e3) % (self.n - 1)
            self.last = step
            return True
        return False

    def wait(self):
        self.calls.append(("wait",))

    def candidates(self, query_indices):
        self.calls.append(("candidates", len(query_indices)))
        ids = (np.asarray(query_indices)[:, None] + self.offset + np.arange(2)[None]) % self.n
        return ids.astype(np.int32), None

    def state_dict(self):
        self.calls.append(("state_dict",))
        return {"offset": self.offset, "last": self.last, "table": np.arange(3, dtype=np.int64) * self.offset}

    def load_state_dict(self, state):
        self.calls.append(("load", state["offset"], state["last"], tuple(state["table"])))
        self.offset, self.last = int(state["offset"]), int(state["last"])


def toy_fit(tmp_path=None, miner=None, n_docs=32, callbacks=(), loss_fn=toy.loss_fn, **overrides):
    queries, docs = toy.make_data(n_docs=n_docs)
    defaults = dict(max_steps=6, batch_size=8, lr=0.05, progress=False, tensorboard=False)
    if tmp_path is not None:
        defaults["out"] = str(tmp_path)
    config = config_lib.TrainConfig(**{**defaults, **overrides})
    batches = []

    def batch_fn(indices, candidates):
        batches.append((np.array(indices), candidates))
        return toy.make_batch_fn(queries, docs)(indices, candidates)

    result = loop.fit(
        config, params=toy.init_params(), loss_fn=loss_fn, batch_fn=batch_fn, num_examples=n_docs,
        miner=miner, callbacks=callbacks,
    )  # fmt: skip
    return result, batches


def test_mining_protocol_calls_and_candidates_feed_batches(tmp_path):
    miner = FakeMiner(32, every=3)
    result, batches = toy_fit(
        tmp_path, miner=miner, n_docs=32, max_steps=6, total_steps=8, checkpoint_every=4, batch_size=16
    )
    refreshes = [c for c in miner.calls if c[0] == "refresh"]
    # steps_per_epoch = 2: step t is in epoch t // 2; the batch of step t is prepared with the params after step t-1
    assert refreshes == [("refresh", t, t // 2) for t in range(6)]
    for indices, (ids, log_q) in batches:
        assert log_q is None and ids.shape == (len(indices), 2)
    # the miner is waited for before its state is saved (checkpoints at 4 and the final 6)
    for i, c in enumerate(miner.calls):
        if c[0] == "state_dict":
            assert miner.calls[i - 1] == ("wait",)
    assert sum(c[0] == "state_dict" for c in miner.calls) == 2
    # resume: the miner state comes back from the checkpoint
    miner2 = FakeMiner(32, every=3)
    toy_fit(tmp_path, miner=miner2, n_docs=32, max_steps=8, total_steps=8, checkpoint_every=4, batch_size=16,
            resume=True)  # fmt: skip
    assert miner2.calls[0] == ("load", miner.offset, miner.last, tuple(np.arange(3) * miner.offset))


def test_asynchronous_library_miner_runs_with_donated_steps(tmp_path):
    """hnjax.mining.Miner refreshing in a background thread: the loop waits for it before each checkpoint."""
    queries, docs = toy.make_data(n_docs=32)
    miner = toy.make_miner(queries, docs, num_negatives=2, refresh_every=2, asynchronous=True)
    result, batches = toy_fit(tmp_path, miner=miner, n_docs=32, max_steps=8, checkpoint_every=4, batch_size=8)
    assert len(result.history) == 8 and all(np.isfinite(r["loss"]) for r in result.history)
    assert miner.num_refreshes >= 2
    for indices, (ids, _) in batches:
        assert ids.shape == (len(indices), 2) and not np.any(ids == indices[:, None])  # gold never a negative
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [4, 8]
    ckpt.close()


def test_resume_without_total_steps_change_fails(tmp_path):
    toy_fit(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        toy_fit(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="setting 'lr' is 0.01"):
        toy_fit(tmp_path, max_steps=2, lr=0.01, resume=True)
    with pytest.raises(ValueError, match="setting 'max_steps' is 4"):
        toy_fit(tmp_path, max_steps=4, resume=True)


@pytest.mark.parametrize("parallel", ["shard_map", "pmap"])
def test_partial_batches_are_padded_not_dropped(tmp_path, parallel):
    result, batches = toy_fit(tmp_path, n_docs=20, batch_size=8, max_steps=3, parallel=parallel, devices=3)
    # 3 updates per epoch: 8 + 8 + 4 examples, 8 rows padded to 9 for 3 devices
    assert [r["examples"] for r in result.history] == [8.0, 8.0, 4.0]
    seen = np.concatenate([b[0] for b in batches[:3]])
    np.testing.assert_array_equal(np.sort(seen), np.arange(20))


def test_nan_guard_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    def poisoned(params, batch, key, axis_name=None):
        loss, aux = toy.loss_fn(params, batch, key, axis_name)
        step_marker = jnp.any(batch["poison"] & batch["valid"])
        return jnp.where(step_marker, jnp.nan, loss), aux

    queries, docs = toy.make_data(n_docs=16)
    config = config_lib.TrainConfig(out=str(tmp_path), max_steps=12, batch_size=4, lr=0.05, checkpoint_every=2,
                                    progress=False, tensorboard=False)  # fmt: skip
    calls = []

    def batch_fn(indices, candidates):  # the batch of update 7 (the 7th batch built) is poisoned
        calls.append(1)
        return {**toy.make_batch_fn(queries, docs)(indices, None), "poison": np.full(len(indices), len(calls) == 7)}

    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite training loss at step 7: loss=nan.*step 6"):
        loop.fit(config, params=toy.init_params(), loss_fn=poisoned, batch_fn=batch_fn, num_examples=16)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.latest_step() == 6
    records = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    opt, _ = state_lib.make_optimizer(lr=0.05, total_steps=12)
    template = jax.device_get(state_lib.create_train_state(toy.init_params(), opt, seed=0))
    restored, host, _ = ckpt.restore(6, template)
    assert host["position"] == [1, 2] and all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))
    ckpt.close()


def test_metrics_tensorboard_best_checkpoint_and_time_split(tmp_path):
    queries, docs = toy.make_data(n_docs=32)
    scripted = iter([0.2, 0.5, 0.4])
    config = config_lib.TrainConfig(out=str(tmp_path), max_steps=6, batch_size=8, lr=0.05, eval_every=2,
                                    best_metric="score", progress=False, tensorboard=True)  # fmt: skip
    result = loop.fit(config, params=toy.init_params(), loss_fn=toy.loss_fn, num_examples=32,
                      batch_fn=toy.make_batch_fn(queries, docs),
                      eval_fn=lambda params, step: {"score": next(scripted)})  # fmt: skip
    records = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, 7))
    for key in ("loss", "lr", "grad_norm", "steps_per_s", "seqs_per_s", "mining_share", "epoch"):
        assert all(key in r for r in records), key
    np.testing.assert_allclose(records[0]["lr"], 0.0)  # warmup starts at 0 (10% of 6 steps rounds to 1)
    assert_close(records[1]["lr"], 0.05)
    assert [e["step"] for e in metrics_lib.read_jsonl(str(tmp_path / "eval.jsonl"))] == [2, 4, 6]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))
    assert checkpoint_lib.Checkpointer(str(tmp_path / "best")).all_steps() == [4]
    assert set(result.time_split) >= {"step", "data", "mining", "eval", "checkpoint", "total"}
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["train"]["best_metric"] == "score"


def test_no_recompilation_across_steps():
    """One trace of the loss for a whole run, through an epoch boundary and a padded partial batch."""
    traces = []

    def counting(params, batch, key, axis_name=None):
        traces.append(1)
        return toy.loss_fn(params, batch, key, axis_name)

    result, batches = toy_fit(None, loss_fn=counting, n_docs=20, max_steps=7, batch_size=8)
    assert [r["examples"] for r in result.history] == [8.0, 8.0, 4.0, 8.0, 8.0, 4.0, 8.0]
    assert len(traces) == 1


def test_fit_with_grad_accum_2x4_equals_batch_8():
    """Paper 1's batch x accumulation through the whole loop: same examples per update, same losses and params."""

    def per_example(params, batch, key, axis_name=None):  # per-example mean, no in-batch negatives, no randomness
        err = jnp.sum((toy.encode(params, batch["query"]) - toy.encode(params, batch["doc"])) ** 2, -1)
        w = batch["valid"].astype(jnp.float32)
        return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0), {}

    accumulated, _ = toy_fit(None, loss_fn=per_example, n_docs=20, max_steps=5, batch_size=4, grad_accum=2)
    single, _ = toy_fit(None, loss_fn=per_example, n_docs=20, max_steps=5, batch_size=8)
    assert_close([r["loss"] for r in accumulated.history], [r["loss"] for r in single.history])
    assert [r["examples"] for r in accumulated.history] == [8.0, 8.0, 4.0, 8.0, 8.0]
    for a, b in zip(jax.tree.leaves(accumulated.state.params), jax.tree.leaves(single.state.params)):
        assert_close(a, b)


@pytest.mark.parametrize("parallel, devices", [("none", None), ("shard_map", 8)])
def test_toy_dual_encoder_learns(parallel, devices):
    """Loss falls and recall rises on generated data with hard negatives from hnjax.mining.Miner."""
    queries, docs = toy.make_data(n_docs=64)
    miner = toy.make_miner(queries, docs, num_negatives=3, refresh_every=8)
    config = config_lib.TrainConfig(max_steps=40, batch_size=16, lr=0.05, parallel=parallel, devices=devices,
                                    progress=False, tensorboard=False, eval_every=40)  # fmt: skip
    before = toy.recall_at(toy.init_params(), queries, docs)
    result = loop.fit(config, params=toy.init_params(), loss_fn=toy.loss_fn, num_examples=64, miner=miner,
                      batch_fn=toy.make_batch_fn(queries, docs),
                      eval_fn=lambda params, step: toy.recall_at(params, queries, docs))  # fmt: skip
    losses = [r["loss"] for r in result.history]
    after = result.evals[-1]
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    assert after["recall@1"] > before["recall@1"] + 0.3 and after["recall@5"] > before["recall@5"]
    assert miner.num_refreshes == 5


def run_script(out, *extra):
    cmd = [sys.executable, os.path.join(HERE, "_resume_script.py"), "--out", str(out), "--max-steps", "12",
           "--checkpoint-every", "3", "--no-progress", "--no-tensorboard", "--no-eval", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three short runs, two of them in fresh processes (about 25 s of CPU)
def test_sigkill_and_resume_reproduce_losses_bit_for_bit(tmp_path):
    """A run killed (SIGKILL) after step 7 and resumed from its step-6 checkpoint logs exactly the losses of an
    uninterrupted run: params, optimizer, RNG, data position and the miner's table all come back."""
    import _resume_script

    full = _resume_script.main(
        ["--out", str(tmp_path / "full"), "--max-steps", "12", "--checkpoint-every", "3", "--no-progress",
         "--no-tensorboard", "--no-eval"]
    )  # fmt: skip
    killed = run_script(tmp_path / "run", "--kill-at-step", "7")
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = metrics_lib.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in before] == list(range(1, 8))
    resumed = run_script(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = metrics_lib.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, 13))  # step 7 logged once, not twice
    expected = [r["loss"] for r in full.history]
    assert [r["loss"] for r in records] == expected  # exact float equality
    assert len(set(expected)) == 12


def test_run_summary_covers_the_whole_log_and_results_are_written_atomically(tmp_path):
    assert metrics_lib.run_summary(str(tmp_path), {"step": 1.0}) == {
        "train_loss_first_last": None,
        "time_split_s": {"step": 1.0},
    }
    # two invocations (a resume) appended to one log, plus an eval-only record without a loss
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 4.5}\n{"step": 2, "loss": 3.0}\n{"step": 3, "lr": 0.1}\n{"step": 3, "loss": 2.25}\n'
    )
    summary = metrics_lib.run_summary(str(tmp_path), {})
    assert summary["train_loss_first_last"] == [4.5, 2.25]
    path = metrics_lib.write_results(str(tmp_path), {"val": {"recall@1": np.float32(0.5)}, **summary})
    assert json.loads(open(path).read())["val"]["recall@1"] == 0.5
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "results.json"]
