"""Tests of experiments/benchmark.py: its batch generation and PyTorch reference pieces (fast), and an end-to-end run
on a tiny random checkpoint (slow): output rows and keys, and that hnjax and the PyTorch reference compute the same
loss on the same inputs. No timing assertions: timings on a shared machine are not testable."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from hnjax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmark.py"

torch = pytest.importorskip("torch")


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def _args(**kw):
    base = dict(ret_batch=4, ret_cands=5, ret_min_len=5, ret_max_len=40, neg_repeat=2, batches=3, seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("repeat", [1, 2, 4])
def test_retriever_batches_share_negatives(repeat):
    args = _args(neg_repeat=repeat)
    for batch in bench.make_retriever_batches(args, vocab=1200):
        index = batch["cand_index"]
        b, k = index.shape
        assert (b, k) == (4, 5)
        np.testing.assert_array_equal(index[:, 0], np.arange(b))  # gold at column 0, each mention its own
        for row in index:
            assert len(set(row.tolist())) == k  # no candidate twice for one mention
        negatives = index[:, 1:].reshape(-1)
        assert len(batch["entities"]) == b + b * (k - 1) // repeat
        np.testing.assert_array_equal(np.bincount(negatives - b), np.full(b * (k - 1) // repeat, repeat))
        for seq in batch["entities"] + batch["mentions"]:
            assert 5 <= len(seq) <= 40 and seq[0] == bench.CLS and seq[-1] == bench.SEP


def test_dedup_layout_equals_per_row_layout():
    batch = bench.make_retriever_batches(_args(), vocab=1200)[0]
    dedup = bench.retriever_arrays(batch, dedup=True, bucket=False, pad_length=64)
    rows = bench.retriever_arrays(batch, dedup=False, bucket=False, pad_length=64)
    np.testing.assert_array_equal(dedup["entity_ids"][dedup["cand_index"]], rows["cand_ids"])
    np.testing.assert_array_equal(dedup["entity_mask"][dedup["cand_index"]], rows["cand_token_mask"])
    np.testing.assert_array_equal(dedup["mention_ids"], rows["mention_ids"])
    assert rows["cand_ids"].shape == (4, 5, 64)


def test_bucketed_layout_keeps_every_token():
    batch = bench.make_retriever_batches(_args(), vocab=1200)[0]
    out = bench.retriever_arrays(batch, dedup=True, bucket=True, pad_length=128)
    longest = max(len(s) for s in batch["entities"])
    assert out["entity_ids"].shape[1] in (8, 16, 32, 64, 128) and out["entity_ids"].shape[1] >= longest
    assert out["entity_ids"].shape[1] < 2 * longest or out["entity_ids"].shape[1] == 8
    np.testing.assert_array_equal(out["entity_mask"].sum(1), [len(s) for s in batch["entities"]])
    for ids, seq in zip(out["entity_ids"], batch["entities"]):
        np.testing.assert_array_equal(ids[: len(seq)], seq)


def test_torch_som_matches_numpy():
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 4, 6, 3))
    qm, dm = rng.random((2, 5)) < 0.7, rng.random((2, 4, 6)) < 0.7
    qm[:, 0], dm[..., 0] = True, True
    expected = np.zeros((2, 4))
    for b in range(2):
        for k in range(4):
            for i in range(5):
                if qm[b, i]:
                    expected[b, k] += max(q[b, i] @ d[b, k, j] for j in range(6) if dm[b, k, j])
    t = torch.from_numpy
    got = bench.torch_som_scores(torch, t(q), t(qm), t(d), t(dm)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_torch_sp_logits_matches_formula():
    rng = np.random.default_rng(1)
    z1, z2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    cos = (z1 / np.linalg.norm(z1, axis=1, keepdims=True)) @ (z2 / np.linalg.norm(z2, axis=1, keepdims=True)).T
    expected = np.where(np.eye(4, dtype=bool), cos**2, cos * (cos + bench.MARGIN)) / bench.TEMPERATURE
    got = bench.torch_sp_logits(torch, torch.from_numpy(z1), torch.from_numpy(z2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A one-layer random BERT (width 32) saved in Hugging Face layout, loadable by hnjax and transformers."""
    config = models.EncoderConfig(
        vocab_size=1200, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    params = models.init_params(config, jax.random.key(0))
    return models.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny", config, params)


@pytest.fixture(scope="module")
def result(tiny_checkpoint, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("bench") / "b.json"
    command = [
        sys.executable, str(SCRIPT), "--quick", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
        "--impls", "hnjax,pytorch,pytorch_same_tricks,hnjax_no_dedup", "--rounds", "1", "--round-seconds", "0.05",
        "--ret-batch", "2", "--ret-cands", "4", "--ret-min-len", "5", "--ret-max-len", "20", "--pad-length", "32",
        "--sim-batch", "4", "--sim-max-len", "16", "--loss-batch", "8", "--batches", "1", "--peak-tflops", "0.5",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.with_suffix(".png").is_file()
    return json.loads(out.read_text())


CASES = ("retriever_som_step", "simcse_focal_step", "loss_only", "scorer_only")


@pytest.mark.slow
def test_rows_and_keys(result):
    measured = [r for r in result if "impl" in r]
    speedups = [r for r in result if "speedup" in r]
    assert [r for r in result if "meta" in r], "no meta row"
    expected = {
        "retriever_som_step": {"hnjax", "pytorch", "pytorch_same_tricks", "hnjax_no_dedup"},
        "simcse_focal_step": {"hnjax", "pytorch", "pytorch_same_tricks"},
        "loss_only": {"hnjax", "pytorch"},
        "scorer_only": {"hnjax", "pytorch"},
    }
    for case in CASES:
        assert {r["impl"] for r in measured if r["case"] == case} == expected[case], case
        assert len([r for r in speedups if r["case"] == case]) == 1, case
    for r in measured:
        for key in ("case", "impl", "seq_per_s", "peak_mem_mb", "steps_per_s", "compile_s", "loss_check"):
            assert key in r, (key, r)
        assert r["seq_per_s"] > 0 and np.isfinite(r["seq_per_s"])
        assert r["peak_mem_mb"] > 10.0  # a whole process with a framework loaded
        assert (r["compile_s"] is not None) == r["impl"].startswith("hnjax")
    for r in speedups:
        by = {m["impl"]: m["seq_per_s"] for m in measured if m["case"] == r["case"]}
        assert r["speedup"] == pytest.approx(by["hnjax"] / by["pytorch"])


@pytest.mark.slow
def test_same_loss(result):
    """Same inputs, same initial parameters, dropout off: every implementation's loss agrees (float32)."""
    measured = [r for r in result if "impl" in r]
    for case in CASES:
        losses = {r["impl"]: r["loss_check"] for r in measured if r["case"] == case}
        for impl, value in losses.items():
            assert np.isfinite(value)
            assert value == pytest.approx(losses["pytorch"], rel=2e-5, abs=1e-5), (case, impl, losses)


@pytest.mark.slow
def test_duplication_rate(result):
    meta = next(r["meta"] for r in result if "meta" in r)["retriever"]
    # B=2, K=4, neg_repeat=2: 2 golds + 2·3/2 = 3 pooled negatives = 5 distinct of 8 candidates.
    assert meta["distinct_entities_per_batch"] == [5]
    assert meta["duplication_rate"] == pytest.approx(1 - 5 / 8)


@pytest.mark.slow
def test_flops_and_mfu_columns(result):
    """Step rows carry the analytic matmul count (hnjax and PyTorch: each its own token grid), hnjax rows XLA's count
    too, and MFU = model FLOPs · steps/s / --peak-tflops."""
    step_rows = [r for r in result if "impl" in r and r["case"].endswith("_step")]
    for r in step_rows:
        assert r["model_flops_per_step"] > 0, r
        assert r["model_tflops_per_s"] == pytest.approx(r["model_flops_per_step"] * r["steps_per_s"] / 1e12)
        assert r["peak_tflops"] == 0.5
        assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] / 0.5)
        assert r["device"] == "cpu" and r["peak_device_mem_mb"] is None
        if r["impl"].startswith("hnjax"):
            # XLA also counts LayerNorm, softmax, AdamW, ...: never fewer FLOPs than the matmuls
            assert r["xla_flops_per_step"] >= r["model_flops_per_step"], r
    by = {(r["case"], r["impl"]): r["model_flops_per_step"] for r in step_rows}
    # the reference pads to 32 and encodes all B·K candidates; de-duplication and buckets execute less
    assert by[("retriever_som_step", "pytorch")] > by[("retriever_som_step", "hnjax")]
    assert by[("retriever_som_step", "hnjax_no_dedup")] > by[("retriever_som_step", "hnjax")]
    for r in result:
        if "impl" in r and not r["case"].endswith("_step"):
            assert r["model_flops_per_step"] is None and r["mfu"] is None


def test_step_model_flops_by_hand():
    config = models.EncoderConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16)  # fmt: skip

    def enc(n, length):  # per layer: QKV+O 8·L·D², attention 4·L²·D, feed-forward 4·L·D·F; ×3 for training
        return 3 * n * 2 * (8 * length * 64 + 4 * length**2 * 8 + 4 * length * 8 * 16)

    dedup = {"mention_ids": np.zeros((2, 5)), "entity_ids": np.zeros((3, 7)), "cand_index": np.zeros((2, 4))}
    assert bench.step_model_flops("retriever_som_step", config, dedup) == enc(2, 5) + enc(3, 7) + 3 * 2 * 8 * 5 * 7 * 8
    per_row = {"mention_ids": np.zeros((2, 5)), "cand_ids": np.zeros((2, 4, 7))}
    assert (
        bench.step_model_flops("retriever_som_step", config, per_row) == enc(2, 5) + enc(8, 7) + 3 * 2 * 8 * 5 * 7 * 8
    )
    simcse = {"input_ids": np.zeros((4, 6))}
    assert bench.step_model_flops("simcse_focal_step", config, simcse) == enc(8, 6) + 3 * 2 * 8 * 8 * 8
