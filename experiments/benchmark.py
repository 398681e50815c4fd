"""Training-step throughput: hnjax vs the PyTorch reference logic, same weights, batches, lengths and loss, one run.

Cases: ``retriever_som_step`` (hard-nce-el retriever update, SOM, K candidates), ``simcse_focal_step`` (SimCSE /
Focal-InfoNCE update, two dropout views), ``loss_only`` (``nce`` + ``focal_infonce``, value and gradient),
``scorer_only`` (the SOM score, value and gradient); see :mod:`hnjax.bench.steps`.

Implementations (``--impls``; :data:`IMPLS` below: side, batch layout, dtype):
``hnjax`` / ``hnjax_bf16`` — the library's compiled step on packed sequences (no padding computed, each distinct
candidate entity once); ``hnjax_padded`` — the same step on bucketed, de-duplicated padded batches (the path before
packing); ``hnjax_no_dedup`` — packed, every candidate slot encoded; ``pytorch`` — the reference as its users run it
(eager ``transformers.BertModel``, retriever padded to ``--pad-length`` with all B·K candidates, SimCSE padded to the
batch's longest); ``pytorch_same_tricks`` — the same PyTorch code given hnjax's packed, de-duplicated inputs.

Each implementation runs in its own process (:mod:`hnjax.bench.harness`): set-ups one after the other, then rounds
that run them in turn; ``seq_per_s`` is the median over rounds of logical sequences per second (B·(1 + K) per
retriever step, B per SimCSE step, B rows for ``loss_only``, B·K pairs for ``scorer_only``). Before timing, each
computes its loss on the first batch with dropout off (``loss_check``). hnjax rows report the time from process start
to the end of the first step with an empty compilation cache (``time_to_first_step_s``) and with the cache it left
(``time_to_first_step_warm_s``). Step rows carry token counts (``tokens_real``, ``tokens_computed``,
``padding_fraction``, ``candidates_encoded`` of ``candidates_total``), model FLOPs of the grid as executed, model
TFLOP/s and ``mfu`` against the device's peak (a GPU's data sheet, or on CPU the physical limit cores × FMA units ×
lanes × 2 × clock, ``meta.cpu_peak``).

Run (from the repository root):

    python experiments/benchmark.py --quick --out runs/benchmark_quick.json   # small sizes, a few minutes
    python experiments/benchmark.py --out runs/benchmark.json                 # K = 64, lengths 32-128
    python experiments/benchmark.py --gpu-table --out runs/benchmark_gpu.json # GPU: fp32/bf16, MiniLM + BERT-base

Output JSON: rows ``{"case", "impl", "seq_per_s", "peak_mem_mb", ...}``, one ``{"case", "speedup", ...}`` per case
and per encoder, and ``{"meta": {...}}`` (machine, versions, sizes, XLA flags, load averages); a PNG chart next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile

from hnjax import runtime

CASES = ("retriever_som_step", "simcse_focal_step", "loss_only", "scorer_only")
# name: (side, layout, dtype); layouts of hnjax.bench.inputs ("dedup" means "bucketed" for SimCSE)
IMPLS = {
    "hnjax": ("hnjax", "packed", "fp32"),
    "hnjax_bf16": ("hnjax", "packed", "bf16"),
    "hnjax_padded": ("hnjax", "dedup", "fp32"),
    "hnjax_no_dedup": ("hnjax", "packed_no_dedup", "fp32"),
    "pytorch": ("torch", "padded", "fp32"),
    "pytorch_bf16": ("torch", "padded", "bf16"),
    "pytorch_same_tricks": ("torch", "packed", "fp32"),
    "pytorch_same_tricks_bf16": ("torch", "packed", "bf16"),
}
PRESETS = {
    "quick": dict(ret_batch=2, ret_cands=8, ret_min_len=32, ret_max_len=64, sim_batch=16, loss_batch=64, rounds=2,
                  round_seconds=1.0, batches=1, impls="hnjax,pytorch"),
    "full": dict(ret_batch=2, ret_cands=64, ret_min_len=32, ret_max_len=128, sim_batch=64, loss_batch=256, rounds=3,
                 round_seconds=5.0, batches=2, impls="hnjax,hnjax_bf16,hnjax_padded,hnjax_no_dedup,pytorch,"
                 "pytorch_same_tricks"),
    "gpu_table": dict(ret_batch=4, ret_cands=64, ret_min_len=32, ret_max_len=128, sim_batch=128, loss_batch=256,
                      rounds=3, round_seconds=2.0, batches=1, cases="retriever_som_step,simcse_focal_step",
                      encoders="minilm-random,bert-base-random", impls="hnjax,hnjax_bf16,pytorch,pytorch_bf16,"
                      "pytorch_same_tricks_bf16", no_warm_start=True),
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    p.add_argument("--gpu-table", action="store_true", help="GPU preset: fp32/bf16 with MFU, MiniLM and BERT-base")
    p.add_argument("--out", default="benchmark.json", help="output JSON file (the PNG chart goes next to it)")
    p.add_argument(
        "--encoders",
        default="all-MiniLM-L6-v2",
        help="comma-separated checkpoints (directory or known name) or minilm-random, bert-base-random "
        "(random weights from a config)",
    )
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLS)}")
    for name, kind, text in (
        ("ret-batch", int, "retriever: mentions per step B"), ("ret-cands", int, "retriever: candidates per mention K"),
        ("ret-min-len", int, "retriever: shortest sequence"), ("ret-max-len", int, "retriever: longest sequence"),
        ("sim-batch", int, "SimCSE: sentences per step B"), ("loss-batch", int, "loss_only: rows B (K = --ret-cands)"),
        ("batches", int, "distinct batches cycled through"), ("rounds", int, "timing rounds, implementations in turn"),
        ("round-seconds", float, "target seconds per implementation and round"),
    ):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, default=None, help=text)
    p.add_argument("--neg-repeat", type=int, default=2, help="retriever: each hard negative serves this many mentions")
    p.add_argument("--pad-length", type=int, default=128, help="retriever: the reference's padding length (max_len)")
    p.add_argument("--sim-min-len", type=int, default=8, help="SimCSE: shortest sentence")
    p.add_argument("--sim-max-len", type=int, default=32, help="SimCSE: longest sentence (max_seq_length)")
    p.add_argument(
        "--row-length", type=int, default=None, help="packed row length (default twice the case's longest sequence)"
    )
    p.add_argument("--threads", type=int, default=None, help="compute threads for torch and XLA (default: all CPUs)")
    p.add_argument("--torch-device", choices=("auto", "cpu", "cuda"), default="auto", help="where PyTorch runs")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: data sheet / CPU)")
    p.add_argument("--no-warm-start", action="store_true", help="skip the warm-cache time-to-first-step runs")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated batches, heads and random encoders")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    args = p.parse_args(argv)
    preset = PRESETS["gpu_table" if args.gpu_table else "quick" if args.quick else "full"]
    for name, value in preset.items():
        if name in ("cases", "encoders", "no_warm_start") and getattr(args, name) != p.get_default(name):
            continue  # given on the command line
        if getattr(args, name) is None or name in ("cases", "encoders", "no_warm_start"):
            setattr(args, name, value)
    for flag, value, known in (("--cases", args.cases, CASES), ("--impls", args.impls, IMPLS)):
        unknown = set(value.split(",")) - set(known)
        if unknown:
            p.error(f"{flag}: unknown {sorted(unknown)}; expected a subset of {list(known)}")
    if not {"hnjax", "pytorch"} <= set(args.impls.split(",")):
        p.error(f"--impls: expected hnjax and pytorch among {args.impls} (the speed-up compares them)")
    if args.round_seconds <= 0 or args.rounds < 1 or args.batches < 1:
        p.error("--round-seconds, --rounds, --batches: expected positive values")
    return args


def case_data(case: str, sizes, sim, width: int, vocab: int, args) -> dict:
    """The case's inputs, shared by every implementation (hnjax.bench.inputs)."""
    from hnjax.bench import inputs  # noqa: PLC0415

    if case == "retriever_som_step":
        return {"batches": inputs.retriever_batches(sizes, count=args.batches, vocab=vocab, seed=args.seed)}
    if case == "simcse_focal_step":
        return {"batches": inputs.simcse_batches(sim, count=args.batches, vocab=vocab, seed=args.seed + 1),
                "head": inputs.head(width, seed=args.seed + 2)}  # fmt: skip
    return {"vectors": inputs.vectors(sizes, loss_batch=args.loss_batch, width=width, seed=args.seed + 3)}


def make_job(case: str, impl: str, checkpoint: str, data: dict, args, cache: str):
    """The harness job of one implementation of one case."""
    from hnjax.bench import harness, steps, torch_reference  # noqa: PLC0415

    side, layout, dtype = IMPLS[impl]
    if case == "simcse_focal_step" and layout == "dedup":
        layout = "bucketed"
    module = steps if side == "hnjax" else torch_reference
    extra = (
        {"compile_cache": cache} if side == "hnjax" else {"threads": args.threads, "torch_device": args.torch_device}
    )
    if case in steps.MICRO_CASES:
        extra.pop("compile_cache", None)
        return harness.Job(impl, module.micro, dict(case=case, dtype=dtype, vectors=data["vectors"], **extra),
                           threads=args.threads)  # fmt: skip
    longest = args.ret_max_len if case == "retriever_som_step" else args.sim_max_len
    row_length = args.row_length or 2 * longest
    kwargs = dict(case=case, checkpoint=checkpoint, layout=layout, dtype=dtype, batches=data["batches"],
                  pad_length=args.pad_length, max_length=args.sim_max_len, row_length=row_length,
                  head=data.get("head"), **extra)  # fmt: skip
    return harness.Job(impl, module.train_step, kwargs, threads=args.threads)


def impls_for(case: str, impls: list[str]) -> list[str]:
    """Implementations that apply to a case: micro cases compare hnjax(_bf16) with pytorch(_bf16) only; the
    de-duplication ablation is the retriever's."""
    if case in ("loss_only", "scorer_only"):
        return [i for i in impls if i in ("hnjax", "hnjax_bf16", "pytorch", "pytorch_bf16")]
    return [i for i in impls if case == "retriever_som_step" or i != "hnjax_no_dedup"]


def seq_per_step(case: str, args) -> int:
    return {"retriever_som_step": args.ret_batch * (1 + args.ret_cands), "simcse_focal_step": args.sim_batch,
            "loss_only": args.loss_batch, "scorer_only": args.ret_batch * args.ret_cands}[case]  # fmt: skip


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    flags = runtime.apply_cpu_flags()  # before JAX starts; the workers inherit XLA_FLAGS
    import tqdm  # noqa: PLC0415

    from hnjax import models  # noqa: PLC0415
    from hnjax.bench import harness, inputs, report  # noqa: PLC0415

    cases, impls = args.cases.split(","), args.impls.split(",")
    sizes = inputs.RetrieverSizes(args.ret_batch, args.ret_cands, args.ret_min_len, args.ret_max_len, args.neg_repeat,
                                  args.pad_length)  # fmt: skip
    sim = inputs.SimCSESizes(args.sim_batch, args.sim_min_len, args.sim_max_len)
    rows, machine_start = [], report.machine()
    with tempfile.TemporaryDirectory(prefix="hnjax_bench_") as tmp:
        for e, encoder in enumerate(args.encoders.split(",")):
            path = inputs.encoder_checkpoint(encoder, tmp, seed=args.seed)
            config = models.EncoderConfig.from_json(path)
            plan = {c: impls_for(c, impls) for c in cases}
            with tqdm.tqdm(total=sum(len(v) + args.rounds for v in plan.values()), desc=encoder) as bar:
                for case in cases:
                    data = case_data(case, sizes, sim, config.hidden_size, config.vocab_size, args)
                    # one empty cache per implementation: its timed process compiles cold, the warm run reuses it
                    jobs = [make_job(case, i, path, data, args, os.path.join(tmp, "cache", str(e), case, i))
                            for i in plan[case]]  # fmt: skip
                    results = harness.run_interleaved(jobs, rounds=args.rounds, round_seconds=args.round_seconds,
                                                      progress=lambda: bar.update(1))  # fmt: skip
                    for job, result in zip(jobs, results):
                        if not args.no_warm_start and "compile_cache" in job.kwargs:
                            warm = harness.run_once(job)  # same cache, now filled by the timed process
                            result["time_to_first_step_warm_s"] = warm["time_to_first_step_s"]
                    dtypes = {i: IMPLS[i][2] for i in plan[case]}
                    rows += report.rows(case, encoder, results, seq_per_step=seq_per_step(case, args), dtypes=dtypes,
                                        peak_override=args.peak_tflops)  # fmt: skip
    meta = {
        "command": "python experiments/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sizes": {"retriever": dataclasses.asdict(sizes), "simcse": dataclasses.asdict(sim),
                  "loss_batch": args.loss_batch, "batches": args.batches, "row_length": args.row_length},
        "rounds": args.rounds, "round_seconds": args.round_seconds, "threads": args.threads,
        "xla_flags_applied": flags, "machine": machine_start, "loadavg_end": os.getloadavg(),
    }  # fmt: skip
    out = rows + report.speedups(rows) + [{"meta": meta}]
    report.write(out, args.out, plot=not args.no_plot)
    logging.info("results (%s):\n%s", args.out, report.markdown(rows))
    for row in report.speedups(rows):
        logging.info("%s", row)
    return out


if __name__ == "__main__":
    main()
