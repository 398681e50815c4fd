"""experiments/zeshel_table.py: recall table and paired McNemar comparisons of retriever runs."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("zeshel_table", ROOT / "experiments" / "zeshel_table.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def _write_run(root: pathlib.Path, name: str, firsts: dict[str, str], recall1: float) -> pathlib.Path:
    run = root / name
    (run / "candidates").mkdir(parents=True)
    for split in ("val", "test"):
        lines = [
            json.dumps({"mention_id": m, "world": "w", "candidates": [c, "X"], "scores": [2.0, 1.0]})
            for m, c in firsts.items()
            if m.startswith(split)
        ]
        (run / "candidates" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    recalls = {f"recall@{k}": recall1 if k == 1 else 1.0 for k in (1, 4, 8, 16, 32, 64)}
    (run / "results.json").write_text(json.dumps({"val": recalls, "test": recalls}))
    return run


def test_table_and_comparison_counts(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "mentions").mkdir(parents=True)
    gold = {f"val-{i}": f"G{i}" for i in range(4)} | {f"test-{i}": f"G{i + 4}" for i in range(4)}
    for split in ("val", "test"):
        rows = [json.dumps({"mention_id": m, "label_document_id": g}) for m, g in gold.items() if m.startswith(split)]
        (data / "mentions" / f"{split}.json").write_text("\n".join(rows) + "\n")
    # run a: right on val-0, val-1, test-0; run b: right on val-0, val-2, val-3, test-0, test-1
    a_right, b_right = {"val-0", "val-1", "test-0"}, {"val-0", "val-2", "val-3", "test-0", "test-1"}
    a = _write_run(tmp_path, "a", {m: g if m in a_right else "WRONG" for m, g in gold.items()}, 0.5)
    b = _write_run(tmp_path, "b", {m: g if m in b_right else "WRONG" for m, g in gold.items()}, 0.75)
    out = table.main([str(a), str(b), "--data", str(data), "--compare", f"{a}:{b}", "--out", str(tmp_path / "t.json")])
    c = out["comparisons"][0]
    assert (c["mentions"], c["only_a"], c["only_b"]) == (8, 1, 3)
    assert (c["r1_a"], c["r1_b"]) == (3 / 8, 5 / 8)
    assert c["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # P(X <= 1), X ~ Bin(4, 1/2), two-sided
    assert [r["val_recall@1"] for r in out["rows"]] == [0.5, 0.75]
    assert json.loads((tmp_path / "t.json").read_text()) == out
    printed = capsys.readouterr().out
    assert "| a | 0.500 |" in printed and "only b 3, only a 1" in printed


def test_unknown_mention_and_missing_file_are_named(tmp_path):
    data = tmp_path / "data"
    (data / "mentions").mkdir(parents=True)
    for split in ("val", "test"):
        (data / "mentions" / f"{split}.json").write_text(
            json.dumps({"mention_id": f"{split}-0", "label_document_id": "G"}) + "\n"
        )
    run = _write_run(tmp_path, "r", {"val-0": "G", "test-9": "G"}, 1.0)
    with pytest.raises(ValueError, match=r"test\.jsonl, line 1: mention_id 'test-9'"):
        table.top1_hits(run, table.gold_labels(data))
    (run / "candidates" / "val.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        table.top1_hits(run, table.gold_labels(data))
