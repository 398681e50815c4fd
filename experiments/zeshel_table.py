"""Tables of a Zeshel retriever sweep: recall@k per run and paired comparisons of top-1 hits.

Reads ``RUN/results.json`` and ``RUN/candidates/{val,test}.jsonl`` of every run folder given (the outputs of
``experiments/zeshel_retriever.py``) and the gold labels of the data folder, and prints

* a Markdown table of recall@{1,4,8,64} on val and test per run (rows in the order given);
* for each pair ``A:B`` of ``--compare``, the mentions (val and test pooled) that only A or only B ranks first
  correctly, and the exact two-sided McNemar p-value (binomial test of the discordant pairs at 1/2): whether B's
  R@1 differs from A's by more than the luck of which mentions a run gets right. It says nothing of seed-to-seed
  variation: compare runs of several seeds for that.

Run (from the repository root):

    python experiments/zeshel_table.py --data runs/zs/data runs/zs/dual-p0.0 runs/zs/dual-p0.5 \\
        --compare runs/zs/dual-p0.0:runs/zs/dual-p0.5 --out runs/zs/table.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from hnjax import eval as ev
from hnjax.data import zeshel
from hnjax.train import metrics

SPLITS = ("val", "test")
KS = (1, 4, 8, 64)


def gold_labels(data: pathlib.Path) -> dict[str, str]:
    gold = {}
    for split in SPLITS:
        path = data / "mentions" / f"{split}.json"
        for number, record in zeshel.json_lines(path, ValueError):
            try:
                gold[record["mention_id"]] = record["label_document_id"]
            except KeyError as e:
                raise ValueError(f"{path}, line {number}: missing field {e}") from None
    return gold


def top1_hits(run: pathlib.Path, gold: dict[str, str]) -> dict[str, bool]:
    """mention_id -> whether the run's first candidate is the gold, over the val and test candidate files."""
    hits = {}
    for split in SPLITS:
        path = run / "candidates" / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (run the retriever with --candidate-splits val test)")
        for number, record in zeshel.json_lines(path, ValueError):
            mention = record.get("mention_id")
            if mention not in gold:
                raise ValueError(f"{path}, line {number}: mention_id {mention!r} is not in the data's {split} split")
            hits[mention] = bool(record["candidates"]) and record["candidates"][0] == gold[mention]
    return hits


def compare(a: pathlib.Path, b: pathlib.Path, gold: dict[str, str]) -> dict:
    ha, hb = top1_hits(a, gold), top1_hits(b, gold)
    if set(ha) != set(hb):
        raise ValueError(f"{a} and {b} rank different mentions ({len(set(ha) ^ set(hb))} differ)")
    order = sorted(ha)
    c = ev.paired_comparison(np.array([ha[m] for m in order]), np.array([hb[m] for m in order]))
    return {"a": str(a), "b": str(b), "mentions": c["items"], "r1_a": c["accuracy_a"], "r1_b": c["accuracy_b"],
            "only_a": c["only_a"], "only_b": c["only_b"], "mcnemar_p": c["mcnemar_p"]}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders of experiments/zeshel_retriever.py")
    parser.add_argument("--data", required=True, help="the data folder the runs were evaluated on")
    parser.add_argument("--compare", nargs="*", default=[], metavar="A:B", help="pairs of run folders to compare")
    parser.add_argument("--out", default=None, help="JSON file to also write the rows and comparisons to")
    args = parser.parse_args(argv)
    rows = []
    print("| run | " + " | ".join(f"{s} R@{k}" for s in SPLITS for k in KS) + " |")
    print("|---" * (1 + len(SPLITS) * len(KS)) + "|")
    for run in map(pathlib.Path, args.runs):
        results = metrics.read_results(run, required=SPLITS)
        row = {"run": str(run), **{f"{s}_recall@{k}": results[s][f"recall@{k}"] for s in SPLITS for k in KS}}
        rows.append(row)
        print(f"| {run.name} | " + " | ".join(f"{row[f'{s}_recall@{k}']:.3f}" for s in SPLITS for k in KS) + " |")
    gold = gold_labels(pathlib.Path(args.data)) if args.compare else {}
    comparisons = []
    for pair in args.compare:
        if pair.count(":") != 1:
            parser.error(f"--compare: expected A:B, got {pair!r}")
        a, b = map(pathlib.Path, pair.split(":"))
        c = compare(a, b, gold)
        comparisons.append(c)
        print(
            f"{a.name} -> {b.name}: R@1 {c['r1_a']:.3f} -> {c['r1_b']:.3f} over {c['mentions']} mentions; "
            f"only {b.name} {c['only_b']}, only {a.name} {c['only_a']}, exact McNemar p = {c['mcnemar_p']:.2g}"
        )
    out = {"rows": rows, "comparisons": comparisons}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
