"""Figures of the experiments, written as PNG files.

Figures are built with matplotlib's object interface (``matplotlib.figure.Figure``), never ``pyplot``: no window, no
global backend switch, nothing left open.

The experiment scripts compute their results with the library and hand them here; the figures are the only thing this
module makes, and it changes no result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib import figure


def seed_band(ax, per_seed: dict, key: str, label: str, color: str, paper: Sequence | None = None) -> None:
    """One curve per seed (thin), their mean (thick) and mean ± std floored at the seed minimum (band); ``paper``
    (per-step values, None = no point) dashed on top."""
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


def bias_figures(out: str, per_seed: dict, groups: dict, summary: dict, paper: dict) -> list[str]:
    """The synthetic gradient-bias experiment's figures, written to the folder ``out``.

    Args:
      out: output folder.
      per_seed: seed -> :func:`hnjax.bias_synthetic.synthetic_experiment` result.
      groups: the extension groups of :func:`hnjax.bias_synthetic.experiment_samplers` (empty: no extension plots).
      summary: :func:`hnjax.bias_synthetic.summarize` of ``per_seed``.
      paper: :func:`hnjax.bias_synthetic.paper_figure`.

    Returns:
      The file names written: ``bias.png``, ``loss.png`` and, with extensions, ``extensions.png``, ``bias_vs_p.png``,
      ``bias_vs_K.png``.
    """
    written = []
    fig = figure.Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    seed_band(ax, per_seed, "hard_bias", "Hard NCE", "tab:red", paper["hard_bias"])
    seed_band(ax, per_seed, "random_bias", "Random NCE", "tab:blue", paper["random_bias"])
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
    written.append("bias.png")

    fig = figure.Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    seed_band(ax, per_seed, "ce_loss", "CE (full softmax)", "black", paper["ce_loss"])
    seed_band(ax, per_seed, "hard_nce_loss", "Hard NCE", "tab:red", paper["hard_nce_loss"])
    seed_band(ax, per_seed, "random_nce_loss", "Random NCE", "tab:blue", paper["random_nce_loss"])
    ent = np.mean([r["pop_entropy"] for r in per_seed.values()])
    ax.axhline(ent, color="gray", ls=":", label=f"population entropy (mean {ent:.3f}; paper 0.802)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title("Loss along the CE trajectory (paper step 30: hard NCE 0.818, CE 0.819)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=120)
    written.append("loss.png")

    if not groups:
        return written
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fig = figure.Figure(figsize=(16, 4.5))
    axes = fig.subplots(1, 3)
    for i, name in enumerate(groups["logq"]):
        seed_band(axes[0], per_seed, f"{name}_bias", name, colors[i % len(colors)])
    axes[0].set_title("log-q corrected model-distribution negatives")
    for i, (p, name) in enumerate(groups["hard_share"].items()):
        seed_band(axes[1], per_seed, f"{name}_bias", f"hard share p={p:g}", colors[i % len(colors)])
    axes[1].set_title("mixed: top-k hard share p, rest uniform")
    for i, (big_k, names) in enumerate(groups["K"].items()):
        seed_band(axes[2], per_seed, f"{names['hard']}_bias", f"hard K={big_k}", colors[i % len(colors)])
    axes[2].set_title("model-distribution negatives, K candidates")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient bias")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "extensions.png"), dpi=120)
    written.append("extensions.png")

    by = summary["bias_mean_steps20_30_by_sampler"]
    if by.get("hard", {}).get("mean") is not None:
        fig = figure.Figure(figsize=(5.5, 4))
        ax = fig.subplots()
        ps = list(groups["hard_share"])
        m = [by[groups["hard_share"][p]]["mean"] for p in ps]
        s = [by[groups["hard_share"][p]]["std"] for p in ps]
        ax.errorbar(ps, m, yerr=s, marker="o", capsize=3)
        ax.set_yscale("log")
        ax.set_xlabel("hard share p (top-k hard, rest uniform)")
        ax.set_ylabel("bias, mean over steps 20-30 (mean +- std over seeds)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "bias_vs_p.png"), dpi=120)

        fig = figure.Figure(figsize=(5.5, 4))
        ax = fig.subplots()
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
        written += ["bias_vs_p.png", "bias_vs_K.png"]
    return written


def dev_curve(curve: Sequence[dict], path: str, title: str) -> None:
    """STS-B dev Spearman against the training step of one SimCSE run (``[{"step", "stsb_dev_spearman"}, ...]``)."""
    fig = figure.Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot([c["step"] for c in curve], [c["stsb_dev_spearman"] for c in curve], marker="o")
    ax.set(xlabel="step", ylabel="STS-B dev Spearman ×100", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def simcse_comparison(runs: Sequence[dict], dev_path: str, geometry_path: str) -> None:
    """Figures comparing SimCSE runs: dev Spearman against step, one line per run coloured by loss (``dev_path``),
    and alignment against uniformity of the selected encoders on STS-B dev (``geometry_path``, Wang & Isola 2020).

    Args:
      runs: ``results.json`` contents of ``experiments/simcse_focal.py`` runs.
      dev_path, geometry_path: PNG files to write.
    """
    colours = {"infonce": "tab:blue", "focal": "tab:red"}
    fig = figure.Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for r in runs:
        c = r["dev_curve"]
        ax.plot([p["step"] for p in c], [p["stsb_dev_spearman"] for p in c], color=colours.get(r["loss"]),
                alpha=0.7, marker="o", label=f"{r['loss']} s{r['seed']}")  # fmt: skip
    ax.set(xlabel="step", ylabel="STS-B dev Spearman ×100", title="SimCSE: InfoNCE vs Focal-InfoNCE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(dev_path, dpi=120)

    fig = figure.Figure(figsize=(4.5, 3.5))
    ax = fig.subplots()
    for r in runs:
        dev = r["final"].get("STSBenchmark-dev", {})
        if "alignment" in dev and "uniformity" in dev:
            ax.scatter(dev["uniformity"], dev["alignment"], color=colours.get(r["loss"]), label=r["loss"])
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys())
    ax.set(xlabel="uniformity (lower is better)", ylabel="alignment (lower is better)", title="STS-B dev")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(geometry_path, dpi=120)
