"""Paper 1's entity linker end to end on a Zeshel-layout folder: retrieve, write candidates, rerank, compare.

Runs experiments/zeshel_retriever.py (OUT/retriever, candidates of train/val/test), then
experiments/zeshel_reranker.py over its top --num-candidates (OUT/reranker), and reports both stages side by side
per split: the retriever's R@1 and R@K, the reranker's unnormalized and normalized accuracy, the ceiling on
generated data, and the paired exact McNemar test of the mentions that only one stage links correctly (pooled over
val and test too). With --untrained-baseline it first evaluates the untrained retriever (--max-steps 0,
OUT/retriever-start), the "before" of the retriever's R@1.

Every flag of a stage can be given after --retriever-args / --reranker-args (one quoted string each); they come
after the pipeline's own choices, so they win. Run (from the repository root):

    python -m hnjax.data.synthetic runs/zs/data --names-per-world 30 --namesakes 10
    python experiments/zeshel_pipeline.py --data runs/zs/data --out runs/zp --scorer dual --num-candidates 8
    python experiments/zeshel_pipeline.py --data runs/zs/data --compare runs/zp/retriever runs/zp/reranker  # table only

Writes OUT/pipeline.json ({"val"|"test"|"pooled": {"retriever_r1", "retriever_rk", "reranker_accuracy", ...,
"only_retriever", "only_reranker", "mcnemar_p"}}) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import zeshel_reranker  # noqa: E402
import zeshel_retriever  # noqa: E402

from hnjax import eval as ev  # noqa: E402
from hnjax.data import zeshel  # noqa: E402

SPLITS = ("val", "test")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder in the Zeshel layout (documents/, mentions/)")
    p.add_argument("--out", help="output folder (retriever/, reranker/, pipeline.json)")
    p.add_argument("--compare", nargs=2, metavar=("RETRIEVER", "RERANKER"),
                   help="only compare two finished stage folders (no training; prints the table)")  # fmt: skip
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint of both stages")
    p.add_argument("--scorer", default="dual", help="retriever score function (default dual)")
    p.add_argument("--hard-share", default="0.5", help="retriever's share of hard negatives (default 0.5)")
    p.add_argument("--retriever-steps", default="40", help="retriever updates (default 40)")
    p.add_argument("--num-candidates", default="8", help="candidates reranked per mention (default 8)")
    p.add_argument("--reranker-steps", default="900", help="reranker updates (default 900)")
    p.add_argument("--seed", default="0", help="seed of both stages")
    p.add_argument("--untrained-baseline", action="store_true", help="also evaluate the untrained retriever")
    p.add_argument("--retriever-args", default="", help="more retriever flags, one quoted string")
    p.add_argument("--reranker-args", default="", help="more reranker flags, one quoted string")
    p.add_argument("--resume", action="store_true", help="continue both stages (a finished stage only re-evaluates)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = p.parse_args(argv)
    if args.out is None and args.compare is None:
        p.error("--out is required (or --compare RETRIEVER RERANKER)")
    return args


def compare(data: zeshel.Zeshel, retriever_dir: pathlib.Path, reranker_dir: pathlib.Path, k: int) -> dict:
    """Both stages' hits per mention, per split and pooled, with the exact McNemar test of the discordant ones."""
    report, pooled = {}, {"ret": [], "rr": [], "covered": []}
    for split in SPLITS:
        if not data.mentions.get(split):
            continue
        ids, _ = zeshel.read_candidates(retriever_dir / "candidates" / f"{split}.jsonl", data, split, k)
        preds = {r["mention_id"]: r for _, r in zeshel.json_lines(reranker_dir / "predictions" / f"{split}.jsonl")}
        ret, rr, covered = [], [], []
        for m, cands in zip(data.mentions[split], ids):
            p = preds.get(m.mention_id)
            if p is None or p["candidates"] != cands:
                raise ValueError(f"{reranker_dir}/predictions/{split}.jsonl: no prediction over the retriever's top "
                                 f"{k} for mention {m.mention_id!r}")  # fmt: skip
            ret.append(bool(cands) and cands[0] == m.label_document_id)
            rr.append(p["prediction"] == m.label_document_id)
            covered.append(m.label_document_id in cands)
        report[split] = _row(ret, rr, covered)
        results = json.loads((reranker_dir / "results.json").read_text()).get(split, {})
        report[split].update(ceiling=results.get("ceiling"), reranker_normalized_accuracy=results.get(
            "normalized_accuracy"))  # fmt: skip
        for key, values in (("ret", ret), ("rr", rr), ("covered", covered)):
            pooled[key].extend(values)
    report["pooled"] = _row(pooled["ret"], pooled["rr"], pooled["covered"])
    return report


def _row(ret: list[bool], rr: list[bool], covered: list[bool]) -> dict:
    paired = ev.paired_comparison(ret, rr)  # A: the retriever's top 1, B: the reranker
    return {"mentions": paired["items"], "retriever_r1": paired["accuracy_a"], "retriever_rk": sum(covered) / len(ret),
            "reranker_accuracy": paired["accuracy_b"], "only_retriever": paired["only_a"],
            "only_reranker": paired["only_b"], "mcnemar_p": paired["mcnemar_p"]}  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.compare:
        retriever_dir, reranker_dir = map(pathlib.Path, args.compare)
        report = compare(zeshel.load_zeshel(args.data), retriever_dir, reranker_dir, int(args.num_candidates))
        print(format_table(report, int(args.num_candidates)))
        return report
    out = pathlib.Path(args.out)
    common = ["--data", args.data, "--model", args.model, "--seed", args.seed, "--no-tensorboard"]
    common += [] if args.progress else ["--no-progress"]
    common += ["--resume"] if args.resume else []
    retriever = ["--scorer", args.scorer, "--hard-share", args.hard_share, "--num-negatives", "7", "--batch-size", "8",
                 "--grad-accum", "1", "--max-length", "40", "--max-steps", args.retriever_steps, "--refresh-every",
                 "20"]  # fmt: skip
    retriever += shlex.split(args.retriever_args)
    start = None
    if args.untrained_baseline:
        start = zeshel_retriever.main(common + retriever + ["--out", str(out / "retriever-start"), "--max-steps", "0",
                                                           "--candidate-splits", "val"])  # fmt: skip
    r_results = zeshel_retriever.main(
        common + retriever + ["--out", str(out / "retriever"), "--candidate-splits", "train", "val", "test"]
    )
    reranker = ["--candidates", str(out / "retriever" / "candidates"), "--out", str(out / "reranker"),
                "--num-candidates", args.num_candidates, "--max-length", "64", "--batch-size", "4", "--grad-accum",
                "1", "--max-steps", args.reranker_steps]  # fmt: skip
    rr_results = zeshel_reranker.main(common + reranker + shlex.split(args.reranker_args))

    k = rr_results["num_candidates"]
    report = compare(zeshel.load_zeshel(args.data), out / "retriever", out / "reranker", k)
    for split in SPLITS:
        if split in report and start is not None:
            report[split]["retriever_r1_untrained"] = start[split]["recall@1"]
    report["retriever_steps"], report["reranker_steps"] = r_results["steps"], rr_results["steps"]
    (out / "pipeline.json").write_text(json.dumps(report, indent=1))
    print(format_table(report, k))
    return report


def format_table(report: dict, k: int) -> str:
    lines = [f"| split | retriever R@1 | retriever R@{k} | reranker accuracy | ceiling | only retriever / only "
             "reranker | McNemar p |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for split in (*SPLITS, "pooled"):
        if split not in report:
            continue
        r = report[split]
        before = f"{r['retriever_r1_untrained']:.3f} → " if r.get("retriever_r1_untrained") is not None else ""
        ceiling = f"{r['ceiling']:.3f}" if r.get("ceiling") is not None else "–"
        lines.append(f"| {split} | {before}{r['retriever_r1']:.3f} | {r['retriever_rk']:.3f} | "
                     f"{r['reranker_accuracy']:.3f} | {ceiling} | {r['only_retriever']} / {r['only_reranker']} | "
                     f"{r['mcnemar_p']:.2g} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
