"""The closing table of ``make demo``: what each part of the demo measured, in a few lines.

Reads DEMO/bias/results.json (experiments/bias_synthetic.py) and DEMO/pipeline/pipeline.json
(experiments/zeshel_pipeline.py with --untrained-baseline) and prints

* the gradient bias of NCE at the last step, hard (model-distribution) vs random negatives;
* per split, the retriever's R@1 before and after training, and the reranker's accuracy over its top K, with the
  exact McNemar p-value of reranker vs retriever.

Run (from the repository root): ``python experiments/demo_table.py runs/demo``.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", help="the demo's output folder (bias/, pipeline/)")
    root = pathlib.Path(p.parse_args(argv).demo)
    bias = json.loads((root / "bias" / "results.json").read_text())
    report = json.loads((root / "pipeline" / "pipeline.json").read_text())
    steps = len(bias["hard_bias"])
    lines = [
        f"Gradient bias |grad CE - grad NCE| at step {steps} (lower is better): hard negatives "
        f"{bias['hard_bias'][-1]:.4f}, random negatives {bias['random_bias'][-1]:.4f}",
        "",
        f"Entity linking on generated data (retriever {report['retriever_steps']} steps, reranker "
        f"{report['reranker_steps']} steps):",
        "| split | retriever R@1 untrained -> trained | reranker accuracy | McNemar p (reranker vs retriever) |",
        "|---|---|---|---|",
    ]
    for split in ("val", "test"):
        if split in report:
            r = report[split]
            lines.append(f"| {split} | {r['retriever_r1_untrained']:.3f} -> {r['retriever_r1']:.3f} | "
                         f"{r['reranker_accuracy']:.3f} | {r['mcnemar_p']:.2g} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
