"""Compares SimCSE runs (InfoNCE vs Focal-InfoNCE) written by experiments/simcse_focal.py: mean ± std over seeds.

Run (from the repository root), after training with the same steps, batch and corpus for every loss and seed:

    python experiments/simcse_compare.py runs/simcse/*-s* --out runs/simcse/compare

Writes OUT/compare.json (per loss: seeds, best STS-B dev Spearman per seed, mean, std; every final STS set found),
OUT/dev_spearman.png (dev Spearman vs step, one line per run, colour by loss) and OUT/align_uniform.png (alignment
vs uniformity of the selected encoders on STS-B dev, Wang & Isola 2020), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        f = pathlib.Path(p) / "results.json"
        if not f.exists():
            raise SystemExit(f"{f}: missing (is {p} a finished simcse_focal.py run?)")
        r = json.loads(f.read_text())
        for key in ("loss", "seed", "best_dev_spearman", "dev_curve", "final"):
            if key not in r:
                raise SystemExit(f"{f}: field {key!r} missing")
        r["path"] = str(p)
        runs.append(r)
    return runs


def summarize(runs: list[dict]) -> dict:
    """Per loss: seeds, best dev Spearman per seed, mean ± std (sample std; 0 for one seed), final sets' means."""
    out = {}
    for loss in sorted({r["loss"] for r in runs}):
        rs = sorted((r for r in runs if r["loss"] == loss), key=lambda r: r["seed"])
        best = [r["best_dev_spearman"] for r in rs]
        finals: dict[str, list[float]] = {}
        for r in rs:
            for name, v in r["final"].items():
                if isinstance(v, dict) and "spearman" in v:
                    finals.setdefault(name, []).append(v["spearman"])
        out[loss] = {
            "seeds": [r["seed"] for r in rs],
            "steps": sorted({r["steps"] for r in rs}),
            "best_dev_spearman": best,
            "mean": statistics.fmean(best),
            "std": statistics.stdev(best) if len(best) > 1 else 0.0,
            "start_dev_spearman": [r["dev_curve"][0]["stsb_dev_spearman"] for r in rs if r["dev_curve"]],
            "final_mean": {k: statistics.fmean(v) for k, v in finals.items()},
        }
    return out


def plot(runs: list[dict], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"infonce": "tab:blue", "focal": "tab:red"}
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for r in runs:
        c = r["dev_curve"]
        ax.plot([p["step"] for p in c], [p["stsb_dev_spearman"] for p in c], color=colours.get(r["loss"]),
                alpha=0.7, marker="o", label=f"{r['loss']} s{r['seed']}")  # fmt: skip
    ax.set(xlabel="step", ylabel="STS-B dev Spearman ×100", title="SimCSE: InfoNCE vs Focal-InfoNCE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "dev_spearman.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
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
    fig.savefig(out / "align_uniform.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of simcse_focal.py runs")
    p.add_argument("--out", required=True, help="folder for compare.json and the plots")
    args = p.parse_args(argv)
    runs = load_runs(args.runs)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    (out / "compare.json").write_text(json.dumps({"summary": summary, "runs": [r["path"] for r in runs]}, indent=1))
    plot(runs, out)
    print("| loss | seeds | steps | STS-B dev Spearman ×100 (best per run) | mean ± std |")
    print("|---|---|---|---|---|")
    for loss, s in summary.items():
        best = ", ".join(f"{b:.2f}" for b in s["best_dev_spearman"])
        print(f"| {loss} | {s['seeds']} | {s['steps']} | {best} | {s['mean']:.2f} ± {s['std']:.2f} |")
    return summary


if __name__ == "__main__":
    main()
