"""Encoder throughput: hnjax (jit, float32 / bf16 compute, any XLA flag sets) vs PyTorch transformers, one run.

Every implementation encodes the same batch ([CLS] + random word pieces + [SEP], no padding, every sequence
``--max-length`` tokens; :func:`hnjax.bench.steps.encoder_batch`) with the same checkpoint: a forward pass, or with
``--backward`` forward and backward (the gradient of Σ hidden states for every parameter, dropout off). Each
implementation runs in its own process (:mod:`hnjax.bench.harness`): set-ups one after the other, then ``--rounds``
rounds run them in turn for ``--round-seconds`` each, so that load changes on a shared machine hit all alike;
``seq_per_s`` is the median over rounds. ``--xla-flag-sets`` adds one hnjax-fp32 implementation per named flag set
of :data:`hnjax.runtime.CPU_FLAG_SETS` (its ``XLA_FLAGS`` set for that process only): this is how the flags that
the scripts apply were chosen (docs/benchmark.md).

Run (from the repository root):

    python experiments/bench_encoder.py --batch-size 32 --max-length 128 --out runs/bench_encoder.json
    python experiments/bench_encoder.py --backward --batch-size 32 --max-length 128 --impls torch-fp32 \
        --xla-flag-sets default,onednn,xnn_dot,xnn_greedy,ynn_dot,vector_512 --out runs/xla_flags.json

Output JSON: {"rows": [{"impl", "dtype", "flags", "seq_per_s", "compile_s", "seq_per_s_rounds", "model_tflops_per_s",
"peak_mem_mb", ...}], "parity_padded_batch": {impl: max |Δ| vs torch-fp32 on a copy of the batch with random lengths
and padding}, "meta": {...}} with the machine, its physical peak, thread counts and load averages.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from hnjax import runtime

IMPLS = ("hnjax-fp32", "hnjax-bf16", "torch-fp32", "torch-bf16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="all-MiniLM-L6-v2", help="checkpoint, or minilm-random / bert-base-random")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence (all real, no padding)")
    p.add_argument("--backward", action="store_true", help="forward + backward instead of forward only")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds, implementations in turn (median reported)")
    p.add_argument("--round-seconds", type=float, default=5.0, help="target seconds per implementation and round")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    p.add_argument("--xla-flag-sets", default="", help=f"extra hnjax-fp32 runs, one per set of "
                   f"{','.join(runtime.CPU_FLAG_SETS)}")  # fmt: skip
    p.add_argument("--single-thread", action="store_true", help="one compute thread (one CPU) for every process")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check on a padded copy of the batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--out", default="bench_encoder.json", help="output JSON file")
    args = p.parse_args(argv)
    for name in ("batch_size", "max_length", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    unknown = set(filter(None, args.impls.split(","))) - set(IMPLS)
    unknown |= set(filter(None, args.xla_flag_sets.split(","))) - set(runtime.CPU_FLAG_SETS)
    if unknown:
        p.error(f"--impls / --xla-flag-sets: unknown {sorted(unknown)}")
    return args


def make_jobs(args, checkpoint: str) -> list:
    from hnjax.bench import harness, steps, torch_reference  # noqa: PLC0415

    threads = 1 if args.single_thread else None
    common = dict(checkpoint=checkpoint, batch_size=args.batch_size, length=args.max_length, seed=args.seed,
                  backward=args.backward)  # fmt: skip
    jobs = []
    for impl in filter(None, args.impls.split(",")):
        family, dtype = impl.split("-")
        if family == "hnjax":
            jobs.append(harness.Job(impl, steps.encoder_pass, dict(common, dtype=dtype), threads=threads))
        else:
            kwargs = dict(common, dtype=dtype, threads=threads, torch_device="cpu")
            jobs.append(harness.Job(impl, torch_reference.encoder_pass, kwargs, threads=threads))
    for name in filter(None, args.xla_flag_sets.split(",")):
        env = {"XLA_FLAGS": runtime.CPU_FLAG_SETS[name]}
        jobs.append(harness.Job(f"hnjax-fp32[{name}]", steps.encoder_pass, dict(common, dtype="fp32"), env, threads))
    return jobs


def parity(checkpoint: str, args) -> dict:
    """hnjax (fp32, bf16) vs torch fp32 on a copy of the batch with random lengths and padding: max |Δ| on real
    tokens, on every position, and of the mean-pooled L2-normalised vectors (float64)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from hnjax import models  # noqa: PLC0415
    from hnjax.bench import steps  # noqa: PLC0415

    config = models.EncoderConfig.from_json(checkpoint)
    ids, _ = steps.encoder_batch(config, args.batch_size, args.max_length, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    lengths = rng.integers(2, ids.shape[1] + 1, size=ids.shape[0])
    lengths[0] = ids.shape[1]
    mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    ids = np.where(mask, ids, config.pad_token_id).astype(np.int32)
    ids[np.arange(len(ids)), lengths - 1] = ids[0, -1]
    reference = transformers.AutoModel.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        ref = reference(input_ids=torch.from_numpy(ids.astype(np.int64)),
                        attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()  # fmt: skip

    def pooled(h):
        v = (h.astype(np.float64) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    out = {}
    for name, dtype in (("hnjax-fp32", jnp.float32), ("hnjax-bf16", jnp.bfloat16)):
        model, params = models.from_pretrained(checkpoint, dtype=dtype)
        got = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))
        out[name] = {"max_abs_diff_real_tokens": float(np.abs(got - ref)[mask].max()),
                     "max_abs_diff_all_positions": float(np.abs(got - ref).max()),
                     "max_abs_diff_mean_pooled_normalised": float(np.abs(pooled(got) - pooled(ref)).max())}  # fmt: skip
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    flags = runtime.apply_cpu_flags()  # the default for the plain hnjax rows; flag-set rows bring their own
    import tempfile  # noqa: PLC0415

    from hnjax.bench import harness, inputs, report  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="hnjax_bench_") as tmp:
        checkpoint = inputs.encoder_checkpoint(args.checkpoint, tmp, seed=args.seed)
        jobs = make_jobs(args, checkpoint)
        results = harness.run_interleaved(jobs, rounds=args.rounds, round_seconds=args.round_seconds,
                                          skip_failed=True)  # fmt: skip
        rows = []
        for job, r in zip(jobs, results):
            if "error" in r:  # e.g. a flag set this CPU cannot run
                rows.append({**r, "flags": job.env.get("XLA_FLAGS")})
                continue
            dtype = job.kwargs["dtype"]
            peak, source = report.peak_tflops(r["device"], dtype)
            tflops = r["model_flops_per_step"] * r["steps_per_s"] / 1e12
            rows.append({**r, "dtype": dtype, "flags": job.env.get("XLA_FLAGS", os.environ.get("XLA_FLAGS", "")),
                         "seq_per_s": r["steps_per_s"] * args.batch_size,
                         "seq_per_s_rounds": [x * args.batch_size for x in r["steps_per_s_rounds"]],
                         "model_tflops_per_s": tflops, "peak_tflops": peak, "peak_source": source,
                         "share_of_peak": None if peak is None else tflops / peak})  # fmt: skip
        checks = {} if args.no_parity else parity(checkpoint, args)
    meta = {"command": "python experiments/bench_encoder.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "batch_size": args.batch_size, "max_length": args.max_length, "backward": args.backward,
            "single_thread": args.single_thread, "xla_flags_applied": flags, "machine": report.machine(),
            "loadavg_end": os.getloadavg()}  # fmt: skip
    out = {"rows": rows, "parity_padded_batch": checks, "meta": meta}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    for row in (r for r in rows if "error" not in r):
        logging.info("%-24s %8.2f seq/s  %.3f s/step  compile %s  %.4f TFLOP/s  peak %.0f MB", row["impl"],
                     row["seq_per_s"], 1 / row["steps_per_s"], row["compile_s"], row["model_tflops_per_s"],
                     row["peak_mem_mb"])  # fmt: skip
    logging.info("wrote %s", args.out)
    return out


if __name__ == "__main__":
    main()
