"""Paper 1's synthetic gradient-bias experiment: NCE with hard (model-distribution) vs random negatives.

A 1000-label population softmax(u / 0.001), an input-free model e -> Linear(300, 300) -> ReLU -> Linear(300, 1000)
trained 30 Adam steps on full cross-entropy; after each step, the bias ||grad J_CE - grad J_NCE||_2 of NCE with 4
negatives from the uniform ("random") or the model distribution ("hard"), gold excluded, without replacement, 10
negative draws per gold label, the NCE loss exact over gold labels weighted by the population. Beyond the paper:
log-q corrected model-distribution negatives (with and without replacement), a hard share p of top-k hard negatives
(paper 1's mixed negatives) and the number of candidates K.

Run (one seed, ~1-2 min on CPU):
    python experiments/bias_synthetic.py --out runs/bias_synthetic --seed 0
Ten seeds with per-seed results and mean +- std (the numbers of docs/bias.md):
    python experiments/bias_synthetic.py --out runs/bias_synthetic_seeds --seeds 0-9
Writes OUT/results.json (per-step lists ``ce_loss``, ``hard_nce_loss``, ``random_nce_loss``, ``hard_bias``,
``random_bias``, index 0 = step 1: the mean over the seeds run; ``per_seed``; ``summary``) and OUT/*.png.

References:
  Zhang & Stratos (2021), Understanding Hard Negatives in Noise Contrastive Estimation, NAACL-HLT 2021; official
  code github.com/WenzhengZhang/hard-nce-el, ``gradient-bias/main.py`` and its figures ``bias.pdf``, ``loss.pdf``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import jax
import tqdm

from hnjax import bias_synthetic, plots


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' -> [0, 3, 5]; '4' -> [4]."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds: no seed in {text!r}")
    return seeds


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (results.json and the PNG plots)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of a single run (default 0)")
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="several seeds in one run, e.g. '0-9' or '0,3,5' (overrides --seed)",
    )
    parser.add_argument("--steps", type=int, default=30, help="Adam steps on full CE (default 30)")
    parser.add_argument("--num-labels", type=int, default=1000, help="number of labels N (default 1000)")
    parser.add_argument(
        "--pop-temperature",
        type=float,
        default=0.001,
        help="population = softmax(u / T), u ~ U(0,1)^N (default 0.001: very peaked)",
    )
    parser.add_argument("--dim", type=int, default=300, help="width D of the model (default 300)")
    parser.add_argument("--batch-size", type=int, default=128, help="labels drawn from the population per step (128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--num-negatives", type=int, default=4, help="negatives per gold, K - 1 (default 4)")
    parser.add_argument("--draws", type=int, default=10, help="negative draws per gold label (default 10)")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=128,
        help="evaluate NCE on this many gold labels of largest population weight only (default 128; 0 = all N, "
        "as the official script). With the default population every other label has weight exactly 0 in float32, "
        "so the objective is unchanged; results.json reports the dropped mass per seed",
    )
    parser.add_argument(
        "--extensions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure log-q correction, hard share p and K (default on; --no-extensions off)",
    )
    parser.add_argument(
        "--hard-shares",
        type=floats,
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="hard shares p for the mixed sampler, comma separated (default 0,0.25,0.5,0.75,1)",
    )
    parser.add_argument(
        "--candidates",
        type=ints,
        default=[2, 5, 17, 65],
        help="numbers of candidates K for the bias-vs-K curves, comma separated (default 2,5,17,65)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.steps < 1 or args.draws < 1:
        parser.error(f"--steps and --draws must be >= 1, got {args.steps}, {args.draws}")
    too_big = [k for k in args.candidates if not 2 <= k <= args.num_labels]
    if not 1 <= args.num_negatives < args.num_labels or too_big:
        parser.error(
            f"--num-negatives must be in [1, N-1] and --candidates in [2, N]; got {args.num_negatives}, "
            f"{too_big}, N = {args.num_labels}"
        )
    seeds = args.seeds if args.seeds is not None else [args.seed]
    samplers, groups = bias_synthetic.experiment_samplers(
        args.num_negatives, extensions=args.extensions, hard_shares=args.hard_shares, candidates=args.candidates
    )
    os.makedirs(args.out, exist_ok=True)

    bar = tqdm.tqdm(total=len(seeds) * args.steps * len(samplers), disable=args.no_progress, unit="eval")
    per_seed, seconds = {}, {}
    for seed in seeds:
        bar.set_description(f"seed {seed}")
        t0 = time.perf_counter()
        per_seed[seed] = bias_synthetic.synthetic_experiment(
            jax.random.key(seed),
            samplers,
            num_labels=args.num_labels,
            pop_temperature=args.pop_temperature,
            dim=args.dim,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            num_draws=args.draws,
            max_rows=args.max_rows or None,
            callback=bar.update,
        )
        seconds[seed] = time.perf_counter() - t0
        r = per_seed[seed]
        logging.info(
            "seed %d (%.1fs): entropy %.3f, step %d: CE %.3f hard-NCE %.3f random-NCE %.3f, bias hard %.4f random %.4f",
            seed,
            seconds[seed],
            r["pop_entropy"],
            args.steps,
            r["ce_loss"][-1],
            r["hard_nce_loss"][-1],
            r["random_nce_loss"][-1],
            r["hard_bias"][-1],
            r["random_bias"][-1],
        )
    bar.close()

    summary = bias_synthetic.summarize(per_seed)
    paper = bias_synthetic.paper_figure()
    results = bias_synthetic.average_over_seeds(per_seed)
    results["seeds"] = seeds
    results["per_seed"] = {str(s): per_seed[s] for s in seeds}
    results["seconds_per_seed"] = {str(s): seconds[s] for s in seeds}
    results["summary"] = summary
    results["samplers"] = {name: dataclasses.asdict(s) for name, s in samplers.items()}
    results["groups"] = {
        g: ({str(k): v for k, v in d.items()} if isinstance(d, dict) else d) for g, d in groups.items()
    }
    results["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    results["paper_reference"] = paper
    results["plots"] = plots.bias_figures(args.out, per_seed, groups, summary, paper)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    claims = summary["claims (need --steps >= 30)"]
    logging.info("claims: %s", json.dumps(claims))
    logging.info("wrote %s", os.path.join(args.out, "results.json"))


if __name__ == "__main__":
    main()
