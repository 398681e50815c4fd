"""Peak memory and wall time of in-batch InfoNCE loss + gradient: plain (dense B×B logits) vs blockwise (custom VJP).

Each (method, B) case runs in its own process (hnjax.bench.memory.inbatch_loss), which builds random [B, D] views,
compiles ``jax.value_and_grad(loss, argnums=(0, 1))`` ahead of time, reads XLA's compiled memory analysis
(arguments + outputs + temporaries − aliased), and, when that fits under ``--limit-gib``, runs the step once and
records the wall time and the process's peak resident set size (``ru_maxrss``, which also counts the JAX runtime and
the compiler).
A plain case that would not fit is reported as "would need X GiB" from the analysis and not run.

Run (the table in docs/memory.md):

    python experiments/bench_memory.py --sizes 1024 4096 16384 65536 --dim 384 --block-size 2048 \
        --out results/bench_memory

Writes ``<out>/bench_memory.json`` and ``<out>/bench_memory.png`` (B vs peak memory, log-log) and prints a markdown
table.

GradCache overhead (encoder memory vs time; an MLP encoder with dropout, two SimCSE views, blockwise loss):

    python experiments/bench_memory.py --suite gradcache --gc-batch 4096 --gc-chunks 256 1024 \
        --out results/bench_memory
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from hnjax.bench import harness, memory

METHODS = ("plain", "blockwise")
GIB = memory.GIB

log = logging.getLogger("bench_memory")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="batch sizes B")
    p.add_argument("--dim", type=int, default=384, help="embedding width D")
    p.add_argument("--loss", choices=("infonce", "focal"), default="infonce", help="in-batch loss to benchmark")
    p.add_argument("--temperature", type=float, default=0.05, help="softmax temperature τ")
    p.add_argument("--block-size", type=int, default=2048, help="blockwise: columns per tile")
    p.add_argument("--row-block-size", type=int, default=None, help="blockwise: rows per tile (default: block size)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype of the input views")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to benchmark")
    p.add_argument(
        "--limit-gib", type=float, default=16.0, help="run a case only if its compiled peak estimate is below this"
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per case subprocess")
    p.add_argument("--seed", type=int, default=0, help="seed of the random views")
    p.add_argument("--out", default="results/bench_memory", help="output directory for JSON and PNG")
    p.add_argument("--suite", choices=("loss", "gradcache"), default="loss", help="what to benchmark")
    p.add_argument("--gc-batch", type=int, default=4096, help="gradcache suite: batch size B")
    p.add_argument("--gc-chunks", type=int, nargs="+", default=[256, 1024], help="gradcache suite: chunk sizes")
    p.add_argument("--gc-width", type=int, default=1024, help="gradcache suite: hidden width of the MLP encoder")
    p.add_argument("--gc-repeats", type=int, default=3, help="gradcache suite: timed runs (median reported)")
    args = p.parse_args(argv)
    for name in ("dim", "block_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if any(b < 2 for b in args.sizes):
        p.error(f"--sizes must all be >= 2, got {args.sizes}")
    return args


def run_case(args: argparse.Namespace, method: str, size: int) -> dict:
    """One (method, B) case in a fresh process (hnjax.bench.memory.inbatch_loss); failures become records."""
    kwargs = dict(method=method, batch=size, dim=args.dim, loss=args.loss, temperature=args.temperature,
                  block_size=args.block_size, row_block_size=args.row_block_size, dtype=args.dtype, seed=args.seed,
                  limit_gib=args.limit_gib)  # fmt: skip
    t0 = time.perf_counter()
    try:
        record, _ = harness.call_in_process(memory.inbatch_loss, kwargs, timeout=args.timeout)
    except (RuntimeError, TimeoutError) as e:
        return {"method": method, "batch": size, "dim": args.dim, "ran": False, "error": str(e).splitlines()[0]}
    record["process_wall_s"] = time.perf_counter() - t0
    return record


def _gib(x) -> str:
    return "–" if x is None else f"{x / GIB:.3f}"


def _mib(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


def markdown(records: list[dict]) -> str:
    head = (
        "| method | B | XLA peak estimate (MiB) | XLA temp (MiB) | peak RSS (MiB) | RSS before compile (MiB) "
        "| loss+grad time (s) | compile (s) | note |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = [head]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['batch']} | – | – | – | – | – | – | error: {r['error']} |")
            continue
        note = "" if r["ran"] else f"not run: would need {_gib(r['peak_estimate_bytes'])} GiB"
        if r["ran"] and not r.get("grad_finite", True):
            note = "non-finite gradient"
        run = f"{r['run_s']:.2f}" if r["ran"] else "–"
        rows.append(
            f"| {r['method']} | {r['batch']} | {_mib(r['peak_estimate_bytes'])} | {_mib(r['temp_bytes'])} "
            f"| {_mib(r.get('peak_rss_bytes'))} | {_mib(r['rss_before_compile_bytes'])} | {run} "
            f"| {r['compile_s']:.1f} | {note} |"
        )
    return "\n".join(rows)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = {"plain": "tab:red", "blockwise": "tab:blue"}
    for method in METHODS:
        rs = sorted((r for r in records if r["method"] == method and "error" not in r), key=lambda r: r["batch"])
        if not rs:
            continue
        bs = [r["batch"] for r in rs]
        ax.plot(bs, [r["peak_estimate_bytes"] / GIB for r in rs], "-", color=colors[method], label=f"{method}: XLA")
        ran = [r for r in rs if r["ran"]]
        skipped = [r for r in rs if not r["ran"]]
        if ran:
            ax.plot(
                [r["batch"] for r in ran],
                [r["peak_rss_bytes"] / GIB for r in ran],
                "o--",
                color=colors[method],
                label=f"{method}: peak RSS (ran)",
            )
        if skipped:
            ax.plot(
                [r["batch"] for r in skipped],
                [r["peak_estimate_bytes"] / GIB for r in skipped],
                "x",
                ms=10,
                color=colors[method],
                label=f"{method}: not run (estimate)",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("peak memory (GiB)")
    d = records[0]["dim"] if records else "?"
    ax.set_title(f"In-batch InfoNCE loss + gradient, D = {d}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gradcache_markdown(records: list[dict]) -> str:
    base = records[0]["median_s"]
    rows = ["| method | chunk | XLA temp (MiB) | step time (s, median) | time vs plain |", "|---|---:|---:|---:|---:|"]
    for r in records:
        chunk = r["chunk_size"] or "–"
        rows.append(
            f"| {r['method']} | {chunk} | {_mib(r['temp_bytes'])} | {r['median_s']:.3f} | {r['median_s'] / base:.2f}× |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from tqdm import tqdm

    os.makedirs(args.out, exist_ok=True)
    if args.suite == "gradcache":
        records = memory.gradcache_overhead(
            batch=args.gc_batch, dim=args.dim, width=args.gc_width, chunks=args.gc_chunks,
            temperature=args.temperature, block_size=args.block_size, repeats=args.gc_repeats, seed=args.seed,
        )  # fmt: skip
        with open(os.path.join(args.out, "bench_gradcache.json"), "w") as f:
            json.dump({"config": vars(args), "records": records}, f, indent=2)
        print(gradcache_markdown(records))
        return
    cases = [(m, b) for b in sorted(args.sizes) for m in args.methods]
    records = []
    json_path = os.path.join(args.out, "bench_memory.json")
    for method, size in tqdm(cases, desc="cases"):
        record = run_case(args, method, size)
        log.info("%s", json.dumps(record))
        records.append(record)
        with open(json_path, "w") as f:  # rewritten after every case, so a long run leaves partial results
            json.dump({"config": vars(args), "records": records}, f, indent=2)
    plot(records, os.path.join(args.out, "bench_memory.png"))
    print(markdown(records))


if __name__ == "__main__":
    main()
