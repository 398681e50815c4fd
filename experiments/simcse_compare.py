"""Compares SimCSE runs (InfoNCE vs Focal-InfoNCE) written by experiments/simcse_focal.py: mean ± std over seeds.

Run (from the repository root), after training with the same steps, batch and corpus for every loss and seed:

    python experiments/simcse_compare.py runs/simcse/*-s* --out runs/simcse/compare.json

Writes OUT (per loss: seeds, best STS-B dev Spearman per seed, mean, std; every final STS set found), and next to it
OUT_dev_spearman.png (dev Spearman vs step, one line per run, colour by loss) and OUT_align_uniform.png (alignment vs
uniformity of the selected encoders on STS-B dev, Wang & Isola 2020), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from hnjax import plots, simcse
from hnjax.train import metrics


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of simcse_focal.py runs")
    p.add_argument("--out", required=True, help="JSON file to write (the two PNG figures go next to it)")
    args = p.parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            runs.append({**metrics.read_results(path, required=simcse.RUN_FIELDS), "path": path})
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
    summary = simcse.compare_runs(runs)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": [r["path"] for r in runs]}, indent=1))
    stem = out.with_suffix("")
    plots.simcse_comparison(runs, f"{stem}_dev_spearman.png", f"{stem}_align_uniform.png")
    print("| loss | seeds | steps | STS-B dev Spearman ×100 (best per run) | mean ± std |")
    print("|---|---|---|---|---|")
    for loss, s in summary.items():
        best = ", ".join(f"{b:.2f}" for b in s["best_dev_spearman"])
        print(f"| {loss} | {s['seeds']} | {s['steps']} | {best} | {s['mean']:.2f} ± {s['std']:.2f} |")
    return summary


if __name__ == "__main__":
    main()
