"""Zero-shot entity linking reranker (Zhang & Stratos 2021, §3.2–3.3) over a retriever's top-K candidates.

A cross-encoder (hnjax.reranker) reads ``[CLS] mention window [SEP] entity prefix [SEP]`` for each of a mention's K
candidates (pairs of --max-length tokens, the mention window cut about the marked mention) and is trained with
softmax cross-entropy over the K scores, the gold forced into slot 0 (a missed gold replaces the last candidate).
Short lists are padded and masked, never truncated; a mention without a candidate line is an error naming the file.

Default recipe (measured in docs/zeshel.md): mean-pooling head at --head-lr 1e-3 over an encoder at --lr 5e-5, 5 %
warmup, no dropout, and the retriever's score added with a learned weight (--prior retriever: the untrained reranker
ranks as the retriever did and training learns a correction). The paper's cross-encoder is ``--paper`` (pooled
[CLS], the cross-encoder alone, lr 2e-5 everywhere, 20 % warmup, dropout 0.1, K = 64, pairs of 256 tokens, batch 2 ×
accumulation 2, 3 epochs); any flag given explicitly still wins.

Evaluation reports per split the unnormalized accuracy (all mentions; a gold the retriever missed is wrong) and the
normalized accuracy (mentions whose gold is among the candidates), micro and macro over worlds, the retriever's own
R@1 on the same lists, and, on generated data (DATA/clues/), the ceiling (best accuracy any reranker can reach over
these lists) and the share of it reached. With --eval-every N the first eval split is scored every N steps (and at
step 0): OUT/eval.jsonl and the curve OUT/val_accuracy.png.

Run (from the repository root), after experiments/zeshel_retriever.py wrote RUN/candidates/{train,val,test}.jsonl:

    python experiments/zeshel_reranker.py --data runs/zs/data --candidates runs/zs/dual-p0.5/candidates \
        --out runs/zs/rerank-dual --num-candidates 8 --max-length 64 --batch-size 4 --max-steps 300

Writes OUT/results.json ({"val": {"normalized_accuracy", "unnormalized_accuracy", "macro_normalized_accuracy",
"macro_unnormalized_accuracy", "mentions", "mentions_with_gold", "first_stage_accuracy", "per_world", ["ceiling",
"share_of_ceiling"]}, "test": {..}, ...}), OUT/metrics.jsonl, OUT/predictions/<split>.jsonl (lines {"mention_id",
"world", "gold", "prediction", "candidates", "scores"}), checkpoints for --resume, and with --export OUT/export (a
one-label sequence classifier: transformers' AutoModelForSequenceClassification and sentence-transformers'
CrossEncoder load it; the paper's head only: --pooling cls --prior none).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

from hnjax import distributed, export, models, plots, reranker
from hnjax.data import synthetic, tokenize, zeshel
from hnjax.train import config as config_lib
from hnjax.train import loop, metrics

logger = logging.getLogger("zeshel_reranker")

PAPER = dict(pooling="cls", prior="none", head_lr=None, lr=2e-5, warmup=0.2, dropout=None, encoder_dropout=None,
             num_candidates=64, max_length=256, batch_size=2, grad_accum=2)  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder in the Zeshel layout (documents/, mentions/)")
    p.add_argument("--candidates", required=True,
                   help="folder of <split>.jsonl candidate lists (OUT/candidates of zeshel_retriever.py)")  # fmt: skip
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint directory or 'all-MiniLM-L6-v2'")
    p.add_argument("--paper", action="store_true", help="the paper's settings as defaults (see above)")
    p.add_argument("--num-candidates", type=int, default=64, help="candidates K per mention, the top of each list")
    p.add_argument("--max-length", type=int, default=256, help="tokens per [mention ; entity] pair (default 256)")
    p.add_argument("--mention-length", type=int, default=None,
                   help="word pieces of the mention window in a pair (default (max-length - 3) // 2)")  # fmt: skip
    p.add_argument("--train-split", default="train", help="split trained on (default train)")
    p.add_argument("--eval-splits", nargs="+", default=["val", "test"], help="splits evaluated (default val test)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="mentions (× K pairs) per scoring call")
    p.add_argument("--eval-mentions", type=int, default=None,
                   help="with --eval-every: score only the first N mentions of the first eval split")  # fmt: skip
    p.add_argument("--pooling", choices=("cls", "mean"), default="mean",
                   help="what the score head reads: mean = masked mean of the token states (for mean-pooled sentence "
                   "encoders such as all-MiniLM-L6-v2), cls = BERT's pooled [CLS] (paper)")  # fmt: skip
    p.add_argument("--prior", choices=("retriever", "none"), default="retriever",
                   help="retriever: add the candidate file's scores with a learned weight (start = the retriever's "
                   "ranking); none: the cross-encoder alone (paper)")  # fmt: skip
    p.add_argument("--head-lr", type=float, default=1e-3,
                   help="peak learning rate of the score head and prior weight (--lr is the encoder's)")  # fmt: skip
    p.add_argument("--dropout", type=float, default=0.0, help="dropout of the score head (paper: the encoder's)")
    p.add_argument("--encoder-dropout", type=float, default=0.0,
                   help="hidden and attention dropout in the encoder (paper: the checkpoint's, 0.1)")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype")
    p.add_argument("--export", action="store_true",
                   help="also write OUT/export: a one-label sequence classifier (CrossEncoder loads it); needs "
                   "--pooling cls --prior none")  # fmt: skip
    defaults = config_lib.TrainConfig(batch_size=4, grad_accum=1, lr=5e-5, warmup=0.05, max_steps=1)
    config_lib.add_train_arguments(p, defaults, epochs=3.0, require_out=True)
    distributed.add_distributed_arguments(p)
    if "--paper" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**PAPER)
    args = p.parse_args(argv)
    if args.export and (args.pooling != "cls" or args.prior != "none"):
        p.error(
            "--export writes a one-label sequence classifier, whose head reads the pooled [CLS] alone: it needs "
            f"--pooling cls --prior none (or --paper), got --pooling {args.pooling} --prior {args.prior}"
        )
    if args.num_candidates < 1:
        p.error(f"--num-candidates must be >= 1, got {args.num_candidates}")
    if args.max_length < 8:
        p.error(f"--max-length must be >= 8 for a mention window and an entity prefix, got {args.max_length}")
    for name in ("eval_batch_size", "eval_mentions"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    distributed.initialize_from_args(args)
    distributed.configure_logging()
    writer = distributed.is_main_process()
    out = pathlib.Path(args.out)
    data = zeshel.load_zeshel(args.data)
    k, train_split = args.num_candidates, args.train_split
    train_mentions = data.mentions.get(train_split, [])
    if not train_mentions:
        raise SystemExit(f"{args.data}: mentions/{train_split}.json has no mentions to train on")
    full, lists, priors = {}, {}, {}  # full: the file's whole lists (the gold's score may lie below the top K)
    for split in dict.fromkeys([train_split] + args.eval_splits):
        if split != train_split and not data.mentions.get(split):
            logger.warning("split %s has no mentions in %s; not evaluated", split, args.data)
            continue
        full[split] = zeshel.read_candidates(pathlib.Path(args.candidates) / f"{split}.jsonl", data, split)
        ids, scores = full[split]
        if args.prior == "retriever" and scores is None:
            raise SystemExit(f"{args.candidates}/{split}.jsonl has no 'scores': pass --prior none")
        lists[split] = [c[:k] for c in ids]
        priors[split] = [reranker.standardize(s[:k]) for s in scores] if args.prior == "retriever" else None

    # Training lists: gold at slot 0, padded slots masked; K = the longest list (at most --num-candidates).
    golds = [m.label_document_id for m in train_mentions]
    ids, scores = full[train_split]
    train_lists = [reranker.with_gold_first(c, g, k) for c, g in zip(ids, golds)]
    train_priors = None
    if args.prior == "retriever":
        train_priors = [
            reranker.standardize(reranker.gold_first_scores(c, s, g, k)) for c, s, g in zip(ids, scores, golds)
        ]
    k_train = max(len(c) for c in train_lists)
    if k_train < k:
        logger.info("train: at most %d candidates per mention (< K = %d); training over %d slots", k_train, k, k_train)

    model_dir = models.resolve_checkpoint(args.model)
    cross, params = reranker.from_pretrained(
        model_dir, jax.random.key(args.seed), pooling=args.pooling, dropout=args.dropout,
        encoder_dropout=args.encoder_dropout, prior=args.prior == "retriever",
        dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
    )  # fmt: skip
    pairs = reranker.PairBuilder(tokenize.load_tokenizer(model_dir), data, args.max_length,
                                 mention_length=args.mention_length)  # fmt: skip
    config = config_lib.config_from_args(args, num_examples=len(train_mentions))
    optimizer, schedule = reranker.make_optimizer(
        lr=config.lr, head_lr=args.head_lr, total_steps=config.schedule_steps, warmup=config.warmup,
        decay=config.decay, end_factor=config.end_lr_factor, weight_decay=config.weight_decay,
        clip_norm=config.effective_clip_norm, b1=config.b1, b2=config.b2, eps=config.eps,
    )  # fmt: skip

    def batch_fn(indices, candidates):
        del candidates  # no miner: the retriever's candidates are fixed
        return pairs.build([train_mentions[i] for i in indices], [train_lists[i] for i in indices], k_train,
                           None if train_priors is None else [train_priors[i] for i in indices])  # fmt: skip

    score_fn = jax.jit(cross.batch_scores)
    curve_split = next((s for s in args.eval_splits if s in lists), None)

    def eval_fn(p, step):
        n = args.eval_mentions or len(lists[curve_split])
        ms, ls = data.mentions[curve_split][:n], lists[curve_split][:n]
        ps = None if priors[curve_split] is None else priors[curve_split][:n]
        s = reranker.rerank(score_fn, p, pairs, ms, ls, ps, batch_size=args.eval_batch_size)
        table = reranker.accuracies(reranker.prediction_rows(ms, ls, s))
        return {"accuracy": table["unnormalized_accuracy"], "normalized_accuracy": table["normalized_accuracy"]}

    periodic = curve_split is not None and args.eval_every > 0
    if periodic and not (out / "checkpoints").is_dir():  # a fresh run: the curve starts at step 0
        start = eval_fn(params, 0)
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            (out / "eval.jsonl").write_text(json.dumps({"step": 0, **start}) + "\n")
    extra = {k_: getattr(args, k_) for k_ in ("data", "candidates", "model", "num_candidates", "max_length",
                                             "mention_length", "train_split", "pooling", "prior", "head_lr",
                                             "dropout", "encoder_dropout", "dtype")}  # fmt: skip
    result = loop.fit(config, params=params, loss_fn=cross.loss, batch_fn=batch_fn, num_examples=len(train_mentions),
                      eval_fn=eval_fn if periodic else None, optimizer=optimizer, schedule=schedule,
                      extra_config=extra)  # fmt: skip
    print(result.format_time_split())
    trained = jax.device_put(result.state.params)
    if args.export and writer:
        export.export_reranker(out / "export", cross, trained, tokenizer_from=model_dir, max_length=args.max_length)

    # Evaluation: rerank the retrieved lists as they are (no gold inserted); each process its share of the mentions.
    results: dict = {}
    if writer:
        (out / "predictions").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for split in args.eval_splits:
        if split not in lists:
            continue
        own = distributed.shard_range(len(lists[split]))
        ms, ls = data.mentions[split][own.start : own.stop], lists[split][own.start : own.stop]
        ps = None if priors[split] is None else priors[split][own.start : own.stop]
        s = reranker.rerank(score_fn, trained, pairs, ms, ls, ps, batch_size=args.eval_batch_size,
                            progress=args.progress and writer, desc=f"rerank {split}") if ms else []  # fmt: skip
        rows = [row for part in distributed.allgather_objects(reranker.prediction_rows(ms, ls, s)) for row in part]
        ms, ls = data.mentions[split], lists[split]
        if writer:
            with open(out / "predictions" / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        results[split] = reranker.accuracies(rows)
        results[split]["first_stage_accuracy"] = reranker.first_stage_accuracy([m.label_document_id for m in ms], ls)
        matching = synthetic.read_matching(args.data, split)
        if matching is not None:
            bound = reranker.ceiling([m.label_document_id for m in ms], ls, [matching[m.mention_id] for m in ms])
            results[split].update(ceiling=bound, share_of_ceiling=results[split]["unnormalized_accuracy"] / bound)
        logger.info("%s: %s", split, {key: v for key, v in results[split].items() if key != "per_world"})
    curve = metrics.read_jsonl(str(out / "eval.jsonl")) if periodic and writer else []
    results.update(
        steps=args.max_steps, seed=args.seed, num_candidates=k, train_candidates=k_train,
        prior_weight=float(trained["prior_weight"]) if "prior_weight" in trained else None, curve_split=curve_split,
        curve=curve,
        **metrics.run_summary(out, result.time_split), eval_s=time.perf_counter() - started,
        config={**config.to_dict(), **extra},
    )  # fmt: skip
    if writer:
        metrics.write_results(out, results)
    if curve:
        ref = results.get(curve_split, {})
        lines = {"retriever R@1": ref.get("first_stage_accuracy")} if args.eval_mentions is None else {}
        if args.eval_mentions is None and "ceiling" in ref:
            lines["ceiling"] = ref["ceiling"]
        plots.accuracy_curve(curve, str(out / "val_accuracy.png"), {k_: v for k_, v in lines.items() if v is not None},
                             f"reranker over the top {k}, {curve_split}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
