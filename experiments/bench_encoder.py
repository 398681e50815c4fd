"""Encoder forward throughput: hnjax (jit, float32 and bfloat16 compute) vs PyTorch transformers, same run.

Every implementation encodes the same batch ([CLS] + random word pieces + [SEP], no padding, every sequence
``--max-length`` tokens) with the same checkpoint. hnjax's compile time is reported apart from its steady-state
throughput; PyTorch runs eagerly (compile_s is null). After set-up and ``--warmup`` untimed calls, ``--rounds`` rounds
time ``--steps`` forward passes of each implementation in turn, so that load changes on a shared machine hit all of
them alike; seq_per_s is the median over rounds. PyTorch is imported here only, as the baseline; hnjax never imports
it.

Run (from the repository root):

    python experiments/bench_encoder.py --batch-size 32 --max-length 128 --steps 5 --rounds 3 \
        --out runs/bench_encoder.json          # add --single-thread for one compute thread each

Output JSON: {"rows": [{"impl", "dtype", "seq_per_s", "compile_s", "seq_per_s_rounds", "max_abs_diff_vs_torch_fp32"},
...],
"parity_padded_batch": {impl: max |Δ| vs torch-fp32 on a copy of the batch with random lengths and padding}, "meta":
{...}} with the machine, thread counts and load averages (a shared machine makes figures noisy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hnjax import models

IMPLS = ("hnjax-fp32", "hnjax-bf16", "torch-fp32", "torch-bf16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="all-MiniLM-L6-v2", help="checkpoint directory or known name")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence (all real, no padding)")
    parser.add_argument("--steps", type=int, default=10, help="timed forward passes per implementation and round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="timing rounds, implementations interleaved; the median is reported"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes after the first, before timing")
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)} (run in this order)"
    )
    parser.add_argument(
        "--single-thread",
        action="store_true",
        help="one compute thread for both: torch.set_num_threads(1) and XLA_FLAGS=--xla_cpu_multi_thread_eigen=false "
        "intra_op_parallelism_threads=1 (fairer on an oversubscribed CPU, where thread pools spin-wait)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    parser.add_argument("--out", default="bench_encoder.json", help="output JSON file")
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_length", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown:
        parser.error(f"--impls: unknown {sorted(unknown)}; expected a subset of {IMPLS}")
    return args


def make_batch(config: models.EncoderConfig, batch_size: int, max_length: int, seed: int):
    """[CLS] w_1 … w_{L-2} [SEP] with random word-piece ids (BERT vocabulary layout; RoBERTa uses 0 and 2)."""
    if max_length > config.max_length:
        raise ValueError(f"--max-length: expected at most {config.max_length} for this checkpoint, got {max_length}")
    rng = np.random.default_rng(seed)
    bos, eos, low = (0, 2, 4) if config.model_type == "roberta" else (101, 102, 1000)
    ids = rng.integers(low, config.vocab_size, size=(batch_size, max_length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = bos, eos
    return ids, np.ones_like(ids, dtype=bool)


def pad_copy(ids: np.ndarray, mask: np.ndarray, pad_id: int, eos: int, seed: int):
    """The same batch with random lengths in [2, L] (sequence ends with [SEP], then padding): a parity check input."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(2, ids.shape[1] + 1, size=ids.shape[0])
    lengths[0] = ids.shape[1]  # at least one full-length row
    mask = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    ids = np.where(mask, ids, pad_id).astype(np.int32)
    ids[np.arange(len(ids)), lengths - 1] = eos
    return ids, mask


def setup_hnjax(checkpoint, dtype, ids, mask, padded, args):
    """Loads and compiles; returns (compile_s, step, output on the batch, output on the padded batch)."""
    model, params = models.from_pretrained(checkpoint, dtype=dtype)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m))
    ids_d, mask_d = jnp.asarray(ids), jnp.asarray(mask)
    start = time.perf_counter()
    compiled = forward.lower(params, ids_d, mask_d).compile()
    compile_s = time.perf_counter() - start

    def step():
        return compiled(params, ids_d, mask_d).block_until_ready()

    out = step()
    for _ in range(args.warmup):
        step()
    out_padded = compiled(params, jnp.asarray(padded[0]), jnp.asarray(padded[1]))  # same shape: no recompile
    return compile_s, step, np.asarray(out), np.asarray(out_padded)


def setup_torch(checkpoint, dtype, ids, mask, padded, args):
    """Loads the transformers model (eager); returns (None, step, output, output on the padded batch)."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(str(models.resolve_checkpoint(checkpoint))).eval()
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    ids_t, mask_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

    def step():
        with torch.inference_mode():
            return model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

    out = step()
    for _ in range(args.warmup):
        step()
    with torch.inference_mode():
        ids_p, mask_p = (torch.from_numpy(x.astype(np.int64)) for x in padded)
        out_padded = model(input_ids=ids_p, attention_mask=mask_p).last_hidden_state
    return None, step, out.float().numpy(), out_padded.float().numpy()


def mean_normalised(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence-transformers' embedding in float64: masked mean of token states, L2-normalised. [B, D]."""
    m = mask[..., None].astype(np.float64)
    v = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.single_thread:
        # Read when the XLA backend starts, which has not happened yet.
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
        import torch

        torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = models.EncoderConfig.from_json(models.resolve_checkpoint(args.checkpoint))
    ids, mask = make_batch(config, args.batch_size, args.max_length, args.seed)
    padded = pad_copy(ids, mask, config.pad_token_id, int(ids[0, -1]), args.seed)
    load_start = os.getloadavg()
    impls = args.impls.split(",")
    steps, compile_s, outputs, outputs_padded = {}, {}, {}, {}
    for impl in impls:
        family, dtype = impl.split("-")
        logging.info("%s: set up, batch %d × %d tokens", impl, args.batch_size, args.max_length)
        setup = setup_hnjax if family == "hnjax" else setup_torch
        dtype_arg = dtype if family == "torch" else (jnp.bfloat16 if dtype == "bf16" else jnp.float32)
        compile_s[impl], steps[impl], outputs[impl], outputs_padded[impl] = setup(
            args.checkpoint, dtype_arg, ids, mask, padded, args
        )
    # Round robin, so that changes in the load of a shared machine hit every implementation alike.
    seconds = {impl: [] for impl in impls}
    for r in tqdm.trange(args.rounds, desc="rounds"):
        for impl in impls:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[impl]()
            seconds[impl].append(time.perf_counter() - start)
        logging.info("round %d: %s", r, {k: round(args.batch_size * args.steps / v[-1], 2) for k, v in seconds.items()})
    rows = []
    reference = outputs.get("torch-fp32")
    for impl in impls:
        family, dtype = impl.split("-")
        per_round = [args.batch_size * args.steps / t for t in seconds[impl]]
        rows.append(
            {
                "impl": family,
                "dtype": dtype,
                "seq_per_s": float(np.median(per_round)),
                "compile_s": compile_s[impl],
                "seq_per_s_rounds": per_round,
                "max_abs_diff_vs_torch_fp32": (
                    None if reference is None else float(np.abs(outputs[impl] - reference).max())
                ),
            }
        )
    parity = {}
    reference = outputs_padded.get("torch-fp32")
    if reference is not None:
        real = padded[1]
        for impl, out in outputs_padded.items():
            parity[impl] = {
                "max_abs_diff_all_positions": float(np.abs(out - reference).max()),
                "max_abs_diff_real_tokens": float(np.abs(out - reference)[real].max()),
                "max_abs_diff_mean_pooled_normalised": float(
                    np.abs(mean_normalised(out, real) - mean_normalised(reference, real)).max()
                ),
            }
            logging.info("parity on the padded batch, %s vs torch-fp32: %s", impl, json.dumps(parity[impl]))
    import torch  # baseline only, for its thread count

    meta = {
        "checkpoint": args.checkpoint,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "single_thread": args.single_thread,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "padded_batch_lengths": padded[1].sum(axis=1).tolist(),
    }
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "parity_padded_batch": parity, "meta": meta}, f, indent=2)
        f.write("\n")
    for row in rows:
        logging.info("%s", json.dumps(row))
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
