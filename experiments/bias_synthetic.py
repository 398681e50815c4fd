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
import matplotlib
import numpy as np
import tqdm

from hnjax import bias, bias_synthetic

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

# Per-step values of the official figures (hard-nce-el gradient-bias/bias.pdf and loss.pdf, seed 42), read from
# their vector data; step 1's CE is off the chart there and left out.
PAPER = {
    "hard_bias": [
        3.012,
        4.983,
        7.002,
        9.063,
        10.356,
        12.343,
        11.402,
        8.436,
        4.724,
        2.290,
        1.144,
        0.641,
        0.327,
        0.250,
        0.156,
        0.115,
        0.099,
        0.065,
        0.061,
        0.059,
        0.038,
        0.031,
        0.025,
        0.021,
        0.019,
        0.017,
        0.016,
        0.014,
        0.013,
        0.012,
    ],
    "random_bias": [
        3.100,
        5.013,
        6.895,
        8.728,
        10.085,
        10.241,
        8.340,
        4.500,
        2.802,
        4.628,
        5.922,
        6.669,
        7.118,
        7.383,
        7.471,
        7.380,
        7.032,
        6.339,
        5.454,
        3.207,
        1.292,
        3.633,
        7.506,
        9.715,
        9.799,
        10.068,
        7.713,
        6.180,
        3.551,
        1.513,
    ],
    "ce_loss": [
        None,
        5.388,
        4.699,
        4.014,
        3.328,
        2.650,
        2.042,
        1.609,
        1.401,
        1.340,
        1.335,
        1.328,
        1.308,
        1.276,
        1.224,
        1.155,
        1.076,
        0.996,
        0.922,
        0.868,
        0.844,
        0.863,
        0.911,
        0.953,
        0.968,
        0.951,
        0.907,
        0.863,
        0.833,
        0.819,
    ],
    "hard_nce_loss": [
        1.060,
        0.697,
        0.460,
        0.405,
        0.339,
        0.602,
        0.784,
        1.030,
        1.171,
        1.243,
        1.290,
        1.304,
        1.297,
        1.268,
        1.219,
        1.152,
        1.073,
        0.994,
        0.920,
        0.866,
        0.843,
        0.862,
        0.910,
        0.952,
        0.967,
        0.950,
        0.907,
        0.863,
        0.832,
        0.818,
    ],
    "random_nce_loss": [
        1.023,
        0.658,
        0.463,
        0.311,
        0.216,
        0.171,
        0.100,
        0.068,
        0.039,
        0.020,
        0.016,
        0.016,
        0.007,
        0.004,
        0.004,
        0.002,
        0.002,
        0.002,
        0.011,
        0.001,
        0.010,
        0.016,
        0.010,
        0.001,
        0.026,
        0.007,
        0.034,
        0.017,
        0.003,
        0.001,
    ],
    "pop_entropy": 0.802,
}


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


def build_samplers(args) -> tuple[dict, dict]:
    """The negative distributions to measure: name -> NegativeSampler, and the extension groups for the plots."""
    k = args.num_negatives
    samplers = {"hard": bias.NegativeSampler("model", k=k), "random": bias.NegativeSampler("uniform", k=k)}
    groups: dict = {}
    if args.extensions:
        samplers["hard_logq_replace"] = bias.NegativeSampler(
            "model", k=k, replace=True, log_q_correction="renormalized"
        )
        samplers["hard_logq_noreplace"] = bias.NegativeSampler("model", k=k, log_q_correction="renormalized")
        groups["logq"] = ["hard", "hard_logq_replace", "hard_logq_noreplace"]
        groups["hard_share"] = {}
        for p in args.hard_shares:
            name = f"mixed_p{p:g}"
            samplers[name] = bias.NegativeSampler("mixed", k=k, hard_share=p)
            groups["hard_share"][p] = name
        groups["K"] = {}
        for big_k in args.candidates:
            names = {}
            for kind, base in (("hard", "model"), ("random", "uniform")):
                name = kind if big_k == k + 1 else f"{kind}_K{big_k}"
                samplers.setdefault(name, bias.NegativeSampler(base, k=big_k - 1))
                names[kind] = name
            groups["K"][big_k] = names
    return samplers, groups


def window_mean(values, lo: int, hi: int):
    """Mean of values at steps lo..hi (1-based, inclusive); None when the run is shorter than lo."""
    part = values[lo - 1 : hi]
    return float(np.mean(part)) if len(values) >= lo else None


def summarize_seed(r: dict) -> dict:
    steps = len(r["ce_loss"])
    gap = np.abs(np.asarray(r["hard_nce_loss"]) - np.asarray(r["ce_loss"]))
    return {
        "pop_entropy": r["pop_entropy"],
        "dropped_pop_mass": r["dropped_pop_mass"],
        "hard_bias_mean_steps20_30": window_mean(r["hard_bias"], 20, 30),
        "random_bias_mean_steps20_30": window_mean(r["random_bias"], 20, 30),
        "hard_bias_last": r["hard_bias"][-1],
        "random_bias_last": r["random_bias"][-1],
        "hard_below_random_last": r["hard_bias"][-1] < r["random_bias"][-1],
        "max_abs_hard_loss_minus_ce_steps15_30": float(gap[14:30].max()) if steps >= 15 else None,
        "last_step": steps,
    }


def mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def summarize(per_seed: dict, groups: dict) -> dict:
    s = {seed: summarize_seed(r) for seed, r in per_seed.items()}
    hb = [x["hard_bias_mean_steps20_30"] for x in s.values()]
    rb = [x["random_bias_mean_steps20_30"] for x in s.values()]
    gaps = [x["max_abs_hard_loss_minus_ce_steps15_30"] for x in s.values()]
    full = all(x["last_step"] >= 30 for x in s.values())
    out = {
        "per_seed": s,
        "claims (need --steps >= 30)": {
            "hard_mean_bias_below_random_on_every_seed (steps 20-30)": all(h < r for h, r in zip(hb, rb))
            if full
            else None,
            "seeds_with_hard_below_random_at_last_step": sum(x["hard_below_random_last"] for x in s.values()),
            "num_seeds": len(s),
            "median_max_abs_hard_loss_minus_ce_steps15_30": float(np.median(gaps)) if full else None,
        },
    }
    for key in (
        "hard_bias_mean_steps20_30",
        "random_bias_mean_steps20_30",
        "hard_bias_last",
        "random_bias_last",
        "max_abs_hard_loss_minus_ce_steps15_30",
        "pop_entropy",
    ):
        out[key] = mean_std([x[key] for x in s.values()])
    names = sorted({n for r in per_seed.values() for n in r if n.endswith("_bias")})
    out["bias_mean_steps20_30_by_sampler"] = {
        n[: -len("_bias")]: mean_std([window_mean(r[n], 20, 30) for r in per_seed.values()]) for n in names
    }
    out["bias_last_step_by_sampler"] = {
        n[: -len("_bias")]: mean_std([r[n][-1] for r in per_seed.values()]) for n in names
    }
    return out


def plot_band(ax, per_seed, key, label, color, paper=None):
    curves = np.asarray([r[key] for r in per_seed.values()], np.float64)  # [S, steps]
    x = np.arange(1, curves.shape[1] + 1)
    for c in curves if len(curves) > 1 else []:
        ax.plot(x, c, color=color, alpha=0.25, lw=0.7)
    mean = curves.mean(0)
    ax.plot(x, mean, color=color, lw=2, label=f"{label} (mean of {len(curves)} seeds)" if len(curves) > 1 else label)
    if len(curves) > 1:
        std = curves.std(0, ddof=1)
        ax.fill_between(x, np.maximum(mean - std, curves.min(0)), mean + std, color=color, alpha=0.12)
    if paper is not None:
        px = [i + 1 for i, v in enumerate(paper) if v is not None and i < curves.shape[1]]
        ax.plot(
            px,
            [paper[i - 1] for i in px],
            color=color,
            ls="--",
            marker="o",
            ms=2.5,
            lw=1,
            label=f"{label}, paper figure",
        )


def write_plots(out: str, per_seed: dict, groups: dict, summary: dict) -> list[str]:
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_band(ax, per_seed, "hard_bias", "Hard NCE", "tab:red", PAPER["hard_bias"])
    plot_band(ax, per_seed, "random_bias", "Random NCE", "tab:blue", PAPER["random_bias"])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\|\nabla J_{CE} - \nabla J_{NCE}\|_2$")
    ax.set_title(
        "Gradient bias of NCE (thin: seeds; band: mean +- std, floored at the seed minimum)\n"
        "dashed: paper figure (one seed), step 30: hard 0.012, random 1.51",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bias.png"), dpi=120)
    plt.close(fig)
    written.append("bias.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_band(ax, per_seed, "ce_loss", "CE (full softmax)", "black", PAPER["ce_loss"])
    plot_band(ax, per_seed, "hard_nce_loss", "Hard NCE", "tab:red", PAPER["hard_nce_loss"])
    plot_band(ax, per_seed, "random_nce_loss", "Random NCE", "tab:blue", PAPER["random_nce_loss"])
    ent = np.mean([r["pop_entropy"] for r in per_seed.values()])
    ax.axhline(ent, color="gray", ls=":", label=f"population entropy (mean {ent:.3f}; paper 0.802)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("Loss along the CE trajectory (paper step 30: hard NCE 0.818, CE 0.819)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=120)
    plt.close(fig)
    written.append("loss.png")

    if not groups:
        return written
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, name in enumerate(groups["logq"]):
        plot_band(axes[0], per_seed, f"{name}_bias", name, colors[i % len(colors)])
    axes[0].set_title("log-q corrected model-distribution negatives")
    for i, (p, name) in enumerate(groups["hard_share"].items()):
        plot_band(axes[1], per_seed, f"{name}_bias", f"hard share p={p:g}", colors[i % len(colors)])
    axes[1].set_title("mixed: top-k hard share p, rest uniform")
    for i, (big_k, names) in enumerate(groups["K"].items()):
        plot_band(axes[2], per_seed, f"{names['hard']}_bias", f"hard K={big_k}", colors[i % len(colors)])
    axes[2].set_title("model-distribution negatives, K candidates")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient bias")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "extensions.png"), dpi=120)
    plt.close(fig)
    written.append("extensions.png")

    by = summary["bias_mean_steps20_30_by_sampler"]
    if by.get("hard", {}).get("mean") is not None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ps = list(groups["hard_share"])
        m = [by[groups["hard_share"][p]]["mean"] for p in ps]
        s = [by[groups["hard_share"][p]]["std"] for p in ps]
        ax.errorbar(ps, m, yerr=s, marker="o", capsize=3)
        ax.set_yscale("log")
        ax.set_xlabel("hard share p (top-k hard, rest uniform)")
        ax.set_ylabel("bias, mean over steps 20-30 (mean +- std over seeds)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bias_vs_p.png"), dpi=120)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(5.5, 4))
        ks = list(groups["K"])
        for kind, color in (("hard", "tab:red"), ("random", "tab:blue")):
            m = [by[groups["K"][kk][kind]]["mean"] for kk in ks]
            s = [by[groups["K"][kk][kind]]["std"] for kk in ks]
            ax.errorbar(ks, m, yerr=s, marker="o", capsize=3, color=color, label=f"{kind} NCE")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("K (candidates: gold + K-1 negatives)")
        ax.set_ylabel("bias, mean over steps 20-30 (mean +- std over seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bias_vs_K.png"), dpi=120)
        plt.close(fig)
        written += ["bias_vs_p.png", "bias_vs_K.png"]
    return written


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
    samplers, groups = build_samplers(args)
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

    summary = summarize(per_seed, groups)
    keys = [k for k in per_seed[seeds[0]] if k not in ("pop_entropy", "dropped_pop_mass")]
    results = {key: np.mean([per_seed[s][key] for s in seeds], axis=0).tolist() for key in keys}
    results.update(
        {
            f"{key}_std": np.std([per_seed[s][key] for s in seeds], axis=0, ddof=min(1, len(seeds) - 1)).tolist()
            for key in keys
        }
    )
    results["seeds"] = seeds
    results["per_seed"] = {str(s): per_seed[s] for s in seeds}
    results["seconds_per_seed"] = {str(s): seconds[s] for s in seeds}
    results["summary"] = summary
    results["samplers"] = {name: dataclasses.asdict(s) for name, s in samplers.items()}
    results["groups"] = {
        g: ({str(k): v for k, v in d.items()} if isinstance(d, dict) else d) for g, d in groups.items()
    }
    results["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    results["paper_reference"] = PAPER
    results["plots"] = write_plots(args.out, per_seed, groups, summary)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    claims = summary["claims (need --steps >= 30)"]
    logging.info("claims: %s", json.dumps(claims))
    logging.info("wrote %s", os.path.join(args.out, "results.json"))


if __name__ == "__main__":
    main()
