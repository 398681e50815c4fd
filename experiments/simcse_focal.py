"""Unsupervised SimCSE with InfoNCE or Focal-InfoNCE (Hou & Li 2023), evaluated on STS.

Trains a sentence encoder on a plain-text corpus (one sentence per line) with two dropout views per sentence and
in-batch negatives, evaluates Spearman on the STS-B dev set every --eval-every steps, keeps the best encoder in
OUT/best (a sentence-transformers folder with the evaluated pooling: `SentenceTransformer("OUT/best").encode(...)`
gives the vectors that were evaluated; `experiments/sts_eval.py --model OUT/best` evaluates it too), and finally
evaluates the best encoder on every STS set found under --sts-dev and --sts-data.

Paper defaults (BERT-base): 1 epoch, batch 64, max length 32, lr 3e-5, τ = 0.05, m = 0.3, [CLS] + MLP in training
only, STS-B dev every 125 steps. The default encoder here is the bundled all-MiniLM-L6-v2.

Run (from the repository root):

    python experiments/simcse_focal.py --corpus corpus.txt --sts-dev DATA/sts --loss focal --max-steps 200 \
        --out runs/simcse/focal-s0 --seed 0
    python experiments/simcse_compare.py runs/simcse/*-s* --out runs/simcse/compare

Training batches are packed by default (--layout packed: both dropout views of every sentence laid end to end in rows
of --row-length tokens, no padding computed; equal losses to --layout padded), and STS evaluation encodes packed too.
The XLA:CPU flags measured for this CPU and the persistent compilation cache (--compile-cache DIR|none) are set up
before JAX starts (hnjax.runtime).

Writes OUT/results.json (best_dev_spearman, best_step, steps, dev_curve, final STS results, corpus statistics,
time split, runtime set-up), OUT/metrics.jsonl, OUT/dev_spearman.png, OUT/best/ and checkpoints for --resume.

Several processes (python -m hnjax.launch --num-processes 2 --devices-per-process 4 -- experiments/simcse_focal.py
...): each process reads and tokenizes only its rows of every batch, the in-batch negatives are gathered over every
device of every process, evaluation sentences are encoded in shares and gathered; process 0 writes the files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import distributed, embed, export, models, parallel, plots, runtime, simcse
from hnjax import eval as ev
from hnjax.data import packing, sts, text, tokenize
from hnjax.train import config as config_lib
from hnjax.train import feed, loop, metrics

logger = logging.getLogger("simcse_focal")
BEST_INFO = "hnjax_best.json"
EVAL_MAX_LENGTH = 128  # tokens per sentence when evaluating on STS (and in the exported OUT/best)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="text file, one sentence per line (blank lines are skipped)")
    p.add_argument("--sts-dev", required=True, help="folder holding STSBenchmark/sts-dev.csv (model selection)")
    p.add_argument("--sts-data", default=None, help="extra folder searched for STS sets for the final evaluation")
    p.add_argument("--loss", choices=simcse.LOSSES, default="focal", help="training loss (default focal)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint directory or 'all-MiniLM-L6-v2'")
    p.add_argument("--pooling", choices=simcse.POOLINGS, default="cls",
                   help="cls: [CLS] + MLP in training only (the papers' setting); mean: masked mean")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.05, help="τ (default 0.05)")
    p.add_argument("--margin", type=float, default=0.3, help="m of Focal-InfoNCE (default 0.3)")
    p.add_argument("--max-length", type=int, default=32, help="tokens per sentence (default 32)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype")
    p.add_argument("--loss-impl", choices=simcse.LOSS_IMPLS, default="dense",
                   help="dense: the B×B logits at once; blockwise: tiles of --block-size (same loss and gradients, "
                   "memory linear in B)")  # fmt: skip
    p.add_argument("--block-size", type=int, default=1024, help="rows and columns per tile of the blockwise loss")
    p.add_argument("--grad-cache-chunk", type=int, default=None,
                   help="GradCache: encode C sentences at a time per device (both views), backpropagate chunk by "
                   "chunk; the rows per device must divide by C (default: plain backpropagation)")  # fmt: skip
    p.add_argument("--eval-batch-size", type=int, default=128, help="sentences per evaluation call")
    p.add_argument("--layout", choices=("packed", "padded"), default=None,
                   help="packed: both views of every sentence laid end to end in rows, no padding computed "
                   "(default); padded: each view padded to the batch's bucket length (the default with "
                   "--grad-cache-chunk or several processes)")  # fmt: skip
    p.add_argument("--row-length", type=int, default=None, help="tokens per packed row (default 2 × --max-length)")
    p.add_argument("--no-start-eval", dest="start_eval", action="store_false",
                   help="do not evaluate the starting encoder (step 0 of the dev curve)")  # fmt: skip
    defaults = config_lib.TrainConfig(batch_size=64, lr=3e-5, eval_every=125, max_steps=1)
    config_lib.add_train_arguments(p, defaults, epochs=1.0, require_out=True)
    distributed.add_distributed_arguments(p)
    runtime.add_arguments(p)
    args = p.parse_args(argv)
    if args.max_length < 4:
        p.error(f"--max-length must be >= 4, got {args.max_length}")
    args.row_length = args.row_length or 2 * args.max_length
    if args.row_length < args.max_length:
        p.error(f"--row-length must be >= --max-length {args.max_length}, got {args.row_length}")
    return args


def check_grad_cache_chunk(config: config_lib.TrainConfig, chunk: int | None) -> None:
    """GradCache chunks split each device's micro-batch: its rows (the batch padded to the devices) must divide by C."""
    if chunk is None:
        return
    if chunk < 1:
        raise SystemExit(f"--grad-cache-chunk must be >= 1, got {chunk}")
    devices = parallel.DataParallel(config.parallel, config.devices).n_devices
    rows = parallel.padded_size(config.batch_size, devices) // devices
    if rows % chunk:
        raise SystemExit(
            f"--grad-cache-chunk {chunk} does not divide the {rows} rows each of the {devices} device(s) gets from "
            f"--batch-size {config.batch_size}; choose a batch size that is a multiple of {chunk * devices}"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup = runtime.from_args(args)  # before JAX computes anything: XLA flags, compilation cache
    distributed.initialize_from_args(args)
    distributed.configure_logging()
    writer = distributed.is_main_process()
    out = pathlib.Path(args.out)
    corpus = text.LineCorpus(args.corpus)
    config = config_lib.config_from_args(args, num_examples=len(corpus))
    check_grad_cache_chunk(config, args.grad_cache_chunk)

    model_dir = models.resolve_checkpoint(args.model)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    encoder, encoder_params = models.from_pretrained(model_dir, dtype=dtype)
    tokenizer = tokenize.load_tokenizer(model_dir)
    net = simcse.SimCSE(encoder, pooling=args.pooling, loss=args.loss, temperature=args.temperature,
                        margin=args.margin, row_length=args.row_length, loss_impl=args.loss_impl,
                        block_size=args.block_size, grad_cache_chunk=args.grad_cache_chunk)  # fmt: skip
    params = net.init(encoder_params, jax.random.key(args.seed))
    dev_sets = sts.load_sts_sets(args.sts_dev, names=["STSBenchmark-dev"])
    try:
        args.layout = feed.choose_layout(args.layout, grad_cache=args.grad_cache_chunk is not None)
    except ValueError as e:
        raise SystemExit(f"--layout: {e}") from None
    packed = args.layout == "packed"
    eval_row_length = max(args.row_length, EVAL_MAX_LENGTH)
    dev_encode = (embed.make_packed_encode_fn(encoder, pooling=args.pooling, row_length=eval_row_length) if packed
                  else embed.make_encode_fn(encoder, pooling=args.pooling))  # fmt: skip
    devices = parallel.DataParallel(config.parallel, config.devices).n_devices
    if packed and config.batch_size % devices:
        raise SystemExit(f"--layout packed: --batch-size {config.batch_size} must divide over the {devices} devices "
                         "(or use --layout padded)")  # fmt: skip
    pad_id = tokenizer.pad_token_id or 0
    truncated = {"sentences": 0}

    def batch_fn(indices, candidates):
        del candidates
        enc = tokenize.batch_encode(tokenizer, corpus[indices], max_length=args.max_length)
        truncated["sentences"] += enc.n_truncated
        if not packed:
            return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask.astype(bool)}
        sentences, _ = packing.unpad(enc.input_ids, enc.attention_mask)
        return simcse.pack_batch(
            sentences,
            row_length=args.row_length,
            length=args.max_length,
            rows=parallel.padded_size(config.batch_size, devices) * config.grad_accum,  # short batches filled
            devices=devices // jax.process_count(),
            grad_accum=config.grad_accum,
            pad_id=pad_id,
        )  # fmt: skip  (this process's rows over its own devices)

    best_path = out / "best"
    best = {"stsb_dev_spearman": -math.inf, "step": None}
    if args.resume and (best_path / BEST_INFO).exists():
        best.update(json.loads((best_path / BEST_INFO).read_text()))

    def dev_spearman(encoder_params) -> float:
        embed_fn = lambda s: distributed.map_shards(  # noqa: E731  (each process encodes a share)
            lambda share: embed.encode_sentences(
                encoder, encoder_params, tokenizer, share, batch_size=args.eval_batch_size,
                max_length=EVAL_MAX_LENGTH, encode_fn=dev_encode, progress=False,
            ), s,
        )  # fmt: skip
        return ev.evaluate_sts(embed_fn, dev_sets, geometry=False)["STSBenchmark-dev"]["spearman"]

    def eval_fn(p, step):
        value = dev_spearman(p["encoder"])
        if value > best["stsb_dev_spearman"]:
            best.update(stsb_dev_spearman=value, step=step)
            if writer:
                export.export_simcse(best_path, net, p, tokenizer_from=model_dir, max_seq_length=EVAL_MAX_LENGTH)
                (best_path / BEST_INFO).write_text(json.dumps({**best, "pooling": args.pooling}))
        return {"stsb_dev_spearman": value}

    extra = {k: getattr(args, k) for k in ("corpus", "loss", "model", "pooling", "temperature", "margin",
                                           "max_length", "dtype")}  # fmt: skip
    layout = {"layout": args.layout, "row_length": args.row_length}  # results only: resuming may switch layouts
    if args.loss_impl != "dense" or args.grad_cache_chunk is not None:  # recorded when used (older runs resume)
        extra.update(loss_impl=args.loss_impl, block_size=args.block_size, grad_cache_chunk=args.grad_cache_chunk)
    if (args.start_eval or args.max_steps == 0) and not args.resume:  # the curve starts at step 0
        # With --max-steps 0 the starting encoder is the one selected and evaluated in full.
        value = eval_fn(params, 0)["stsb_dev_spearman"] if args.max_steps == 0 else dev_spearman(encoder_params)
        start = {"step": 0, "stsb_dev_spearman": value}
        if writer:
            os.makedirs(out, exist_ok=True)
            (out / "dev_start.json").write_text(json.dumps(start))
    result = loop.fit(config, params=params, loss_fn=net.loss_fn, batch_fn=batch_fn, num_examples=len(corpus),
                      eval_fn=eval_fn, extra_config=extra)  # fmt: skip
    print(result.format_time_split())

    # Final evaluation of the selected encoder on every STS set available.
    final_sets = sts.load_sts_sets(args.sts_dev)
    if args.sts_data:
        final_sets.update(sts.load_sts_sets(args.sts_data))
    distributed.barrier("simcse-best-written")  # process 0 wrote OUT/best
    best_model, best_params = models.from_pretrained(best_path)
    final = ev.evaluate_sts(
        lambda s: distributed.map_shards(
            lambda share: embed.encode_sentences(best_model, best_params, tokenizer, share, pooling=args.pooling,
                                                 batch_size=args.eval_batch_size, max_length=EVAL_MAX_LENGTH,
                                                 pack=packed, row_length=eval_row_length, progress=False), s),
        final_sets,
    )  # fmt: skip
    curve_path = out / "dev_start.json"
    curve = ([json.loads(curve_path.read_text())] if curve_path.exists() else []) + [
        {"step": e["step"], "stsb_dev_spearman": e["stsb_dev_spearman"]}
        for e in metrics.read_jsonl(str(out / "eval.jsonl")) if "stsb_dev_spearman" in e
    ]  # fmt: skip
    results = {
        "loss": args.loss,
        "seed": args.seed,
        "steps": config.max_steps,
        "best_dev_spearman": best["stsb_dev_spearman"],
        "best_step": best["step"],
        "dev_curve": curve,
        "final": final,
        **metrics.run_summary(out, result.time_split),
        "corpus": {**corpus.stats(), "truncated_this_run": truncated["sentences"]},
        "config": {**config.to_dict(), **extra, **layout},
        "devices": jax.device_count(),
        "runtime": setup,
    }
    if writer:
        metrics.write_results(out, results)
        plots.dev_curve(curve, str(out / "dev_spearman.png"), f"{args.loss}, seed {args.seed}")
    logger.info("best STS-B dev Spearman %.2f at step %s; results in %s", best["stsb_dev_spearman"], best["step"], out)
    return results


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
