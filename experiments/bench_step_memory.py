"""Peak memory of one full SimCSE training step against the batch size: dense loss vs GradCache + blockwise loss.

One step is what ``experiments/simcse_focal.py`` runs: both dropout views of every sentence through the encoder
(the bundled all-MiniLM-L6-v2 by default), [CLS] + MLP, Focal-InfoNCE over the in-batch cosine matrix, gradients of
every parameter, an AdamW update. ``dense`` is plain backpropagation with the dense loss (every activation of the
batch kept for the backward pass, plus the B×B logits); ``gradcache`` is ``--grad-cache-chunk C --loss-impl
blockwise`` (encoder activations of one chunk of C sentences alive at a time, no B×B matrix).

Each (method, B) case runs in its own process: it compiles the step ahead of time and reads XLA's memory analysis
(arguments + outputs + temporaries − aliased), then, if B <= --run-up-to and the estimate fits under --limit-gib,
runs the step once and records its wall time and the process's peak resident set size (which includes the JAX
runtime, the model and the compiler).

Run (the table in docs/memory.md):

    python experiments/bench_step_memory.py --sizes 64 256 1024 4096 --chunk 64 --max-length 32 --run-up-to 256 \
        --out results/step_memory.json

Writes the JSON file OUT (rewritten after every case, so that a long run keeps what it measured) and prints a markdown
table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time

METHODS = ("dense", "gradcache")
GIB = 1024**3
log = logging.getLogger("bench_step_memory")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096], help="batch sizes B")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to measure")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint directory or 'all-MiniLM-L6-v2'")
    p.add_argument("--max-length", type=int, default=32, help="tokens per sentence (every row full length)")
    p.add_argument("--chunk", type=int, default=64, help="GradCache chunk C (sentences per encoder chunk)")
    p.add_argument("--block-size", type=int, default=1024, help="tile of the blockwise loss")
    p.add_argument("--run-up-to", type=int, default=256, help="run the step only for B up to this (else compile only)")
    p.add_argument("--limit-gib", type=float, default=12.0, help="run only if XLA's estimate is below this")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds allowed per case process")
    p.add_argument("--out", default="results/step_memory.json", help="the JSON file written")
    p.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for b in args.sizes:
        if b % args.chunk:
            p.error(f"--sizes must be multiples of --chunk {args.chunk}, got {b}")
    return args


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args: argparse.Namespace) -> dict:
    """One case in a fresh process: compile one training step, read XLA's analysis, maybe run it."""
    import jax
    import numpy as np

    from hnjax import models, simcse
    from hnjax.train import state as state_lib
    from hnjax.train import step as step_lib

    b, length = args.size, args.max_length
    encoder, encoder_params = models.from_pretrained(models.resolve_checkpoint(args.model))
    kw = {} if args.worker == "dense" else {"loss_impl": "blockwise", "grad_cache_chunk": args.chunk}
    net = simcse.SimCSE(encoder, pooling="cls", loss="focal", block_size=args.block_size, **kw)
    optimizer, _ = state_lib.make_optimizer(lr=3e-5, total_steps=10)
    state = state_lib.create_train_state(net.init(encoder_params, jax.random.key(0)), optimizer, seed=0)
    rng = np.random.default_rng(0)
    vocab = encoder.config.vocab_size
    batch = {"input_ids": rng.integers(1000, vocab, size=(b, length)).astype(np.int32),
             "attention_mask": np.ones((b, length), bool), "valid": np.ones((b,), bool)}  # fmt: skip
    step = jax.jit(step_lib.make_train_step(net.loss_fn, optimizer), donate_argnums=0)
    rss_before = _peak_rss_bytes()
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    record = {
        "method": args.worker, "batch": b, "max_length": length, "model": args.model,
        "chunk": None if args.worker == "dense" else args.chunk, "compile_s": compile_s,
        "rss_before_compile_bytes": rss_before,
        "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes), "alias_bytes": int(mem.alias_size_in_bytes), "ran": False,
    }  # fmt: skip
    record["peak_estimate_bytes"] = (record["argument_bytes"] + record["output_bytes"] + record["temp_bytes"]
                                     - record["alias_bytes"])  # fmt: skip
    if b > args.run_up_to or record["peak_estimate_bytes"] > args.limit_gib * GIB:
        return record
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    loss = float(jax.device_get(metrics["loss"]))
    record.update(ran=True, run_s=time.perf_counter() - t0, loss=loss, peak_rss_bytes=_peak_rss_bytes())
    return record


def run_case(args: argparse.Namespace, method: str, size: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--size", str(size), "--model", args.model,
           "--max-length", str(args.max_length), "--chunk", str(args.chunk), "--block-size", str(args.block_size),
           "--run-up-to", str(args.run_up_to), "--limit-gib", str(args.limit_gib), "--sizes", str(size)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"method": method, "batch": size, "error": f"timeout {args.timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"method": method, "batch": size, "error": " | ".join(proc.stderr.strip().splitlines()[-3:])}
    return json.loads(lines[-1])


def markdown(records: list[dict]) -> str:
    mib = lambda x: "–" if x is None else f"{x / 2**20:,.0f}"  # noqa: E731
    rows = ["| method | B | XLA peak estimate (MiB) | XLA temp (MiB) | peak RSS (MiB) | step (s) | compile (s) |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in records:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['batch']:,} | error: {r['error']} | | | | |")
            continue
        name = "dense" if r["method"] == "dense" else f"GradCache C={r['chunk']} + blockwise"
        run = f"{r['run_s']:.1f}" if r["ran"] else "not run"
        rows.append(f"| {name} | {r['batch']:,} | {mib(r['peak_estimate_bytes'])} | {mib(r['temp_bytes'])} "
                    f"| {mib(r.get('peak_rss_bytes'))} | {run} | {r['compile_s']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker is not None:
        print(json.dumps(worker(args)), flush=True)
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    records = []
    for size in sorted(args.sizes):
        for method in args.methods:
            records.append(run_case(args, method, size))
            log.info("%s", json.dumps(records[-1]))
            with open(args.out, "w") as f:  # partial results survive a long run
                json.dump({"config": vars(args), "records": records}, f, indent=2)
    print(markdown(records))


if __name__ == "__main__":
    main()
