"""Zero-shot entity linking retriever (Zhang & Stratos 2021) on a folder in the Zeshel layout.

Trains a DUAL / MULTI-n / SOM / POLY-m retriever with NCE over 1 gold + K negatives per mention, the negatives
re-mined every epoch (or every --refresh-every steps) by hnjax.mining.Miner over the union of the training worlds'
entities: paper 1's mix of a share p of hard negatives (the top-scoring entities, gold excluded) and uniform random
ones, or model-distribution samples with the log-q corrected loss (--negatives model). Then ranks each val/test
mention against its own world's entities by the retriever's exact score and reports recall@{1,4,8,16,32,64};
writes the top-64 candidates per mention for the reranker.

Paper defaults: 64 negatives (32 random + 32 hard), AdamW lr 1e-5, 10% warmup, batch 16 × accumulation 2, 4 epochs,
max length 128 (BERT-base; the default encoder here is the bundled all-MiniLM-L6-v2).

Run (from the repository root):

    python -c "from hnjax.data import synthetic; synthetic.write_synthetic_zeshel('runs/zeshel_data')"
    python experiments/zeshel_retriever.py --data runs/zeshel_data --out runs/zr/som-p0.5 --scorer som \
        --hard-share 0.5 --max-steps 200 --num-negatives 15 --batch-size 8 --grad-accum 1 --max-length 48

Training batches are packed by default (--layout packed: mentions and each micro-batch's distinct candidate entities
laid end to end in rows of --row-length tokens, so neither padding nor repeated candidates are computed; equal losses
to --layout padded), and mining and evaluation encode packed too. The XLA:CPU flags measured for this CPU and the
persistent compilation cache (--compile-cache DIR|none) are set up before JAX starts (hnjax.runtime).

Writes OUT/results.json ({"val": {"recall@1": ..}, "test": {..}, ..., "runtime": {...}}), OUT/metrics.jsonl,
OUT/candidates/<split>.jsonl (lines {"mention_id", "world", "candidates": [document_id, ...], "scores": [...]}),
checkpoints for --resume, and with --export OUT/export (each tower a sentence-transformers folder +
hnjax_retriever.json; docs/models.md).

Several processes (one per host; or locally: python -m hnjax.launch --num-processes 2 --devices-per-process 4 -- \
experiments/zeshel_retriever.py ... --parallel shard_map): each process feeds its rows of every batch, mines for its
share of the mentions against the whole entity pool, and evaluates its share of each world; process 0 writes the files.

Mining POLY: the mention's m codes against the entity's [CLS] vector is not an inner-product search; the Miner
shortlists by ⟨Σ_i code_i, entity⟩ and takes the top of that shortlist (documented approximation).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import distributed, embed, export, mining, models, parallel, retriever, runtime
from hnjax import eval as ev
from hnjax.data import packing, tokenize, zeshel
from hnjax.train import config as config_lib
from hnjax.train import feed, loop, metrics

logger = logging.getLogger("zeshel_retriever")
RECALL_KS = (1, 4, 8, 16, 32, 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder in the Zeshel layout (documents/, mentions/)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint directory or 'all-MiniLM-L6-v2'")
    p.add_argument("--scorer", choices=retriever.SCORERS, default="som", help="score function (default som)")
    p.add_argument("--num-entity-vectors", type=int, default=8, help="n of MULTI-n (default 8)")
    p.add_argument("--num-codes", type=int, default=16, help="m of POLY-m (default 16)")
    p.add_argument("--shared-encoder", action="store_true", help="one encoder for mentions and entities")
    p.add_argument("--num-negatives", type=int, default=64, help="negatives per mention, K (default 64)")
    p.add_argument("--hard-share", type=float, default=0.5, help="share p of hard negatives (default 0.5)")
    p.add_argument("--negatives", choices=("mixed", "model"), default="mixed",
                   help="mixed: p hard + (1-p) random; model: sampled from the model distribution with log-q "
                   "corrected NCE")  # fmt: skip
    p.add_argument("--refresh-every", type=int, default=None, help="re-mine every N steps (default: every epoch)")
    p.add_argument("--async-refresh", action="store_true", help="mine in a background thread (not bit-resumable)")
    p.add_argument("--index", default="auto", help="mining index backend (default auto; see hnjax.mining)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per mention and per entity (default 128)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="sequences per encoder call in evaluation")
    p.add_argument("--eval-splits", nargs="+", default=["val", "test"], help="splits evaluated (default val test)")
    p.add_argument("--candidate-splits", nargs="+", default=["train", "val", "test"],
                   help="splits whose top-64 candidates are written for the reranker")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype")
    p.add_argument("--layout", choices=("packed", "padded"), default=None,
                   help="packed: mentions and each batch's distinct candidate entities laid end to end in rows, no "
                   "padding computed, also when encoding for mining and evaluation (default); padded: every "
                   "candidate slot padded to --max-length")  # fmt: skip
    p.add_argument("--row-length", type=int, default=None, help="tokens per packed row (default 2 × --max-length)")
    p.add_argument("--export", action="store_true",
                   help="also write OUT/export: the towers as ST folders and the scorer JSON")  # fmt: skip
    defaults = config_lib.TrainConfig(batch_size=16, grad_accum=2, lr=1e-5, max_steps=1)
    config_lib.add_train_arguments(p, defaults, epochs=4.0, require_out=True)
    distributed.add_distributed_arguments(p)
    runtime.add_arguments(p)
    args = p.parse_args(argv)
    args.row_length = args.row_length or 2 * args.max_length
    if args.row_length < args.max_length:
        p.error(f"--row-length must be >= --max-length {args.max_length}, got {args.row_length}")
    if not 0.0 <= args.hard_share <= 1.0:
        p.error(f"--hard-share must be in [0, 1], got {args.hard_share}")
    if args.num_negatives < 1:
        p.error(f"--num-negatives must be >= 1, got {args.num_negatives}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup = runtime.from_args(args)  # before JAX computes anything: XLA flags, compilation cache
    distributed.initialize_from_args(args)
    distributed.configure_logging()
    out = pathlib.Path(args.out)
    data = zeshel.load_zeshel(args.data)
    if "train" not in data.mentions or not data.mentions["train"]:
        raise SystemExit(f"{args.data}: mentions/train.json has no mentions to train on")

    model_dir = models.resolve_checkpoint(args.model)
    encoder, encoder_params = models.from_pretrained(model_dir, dtype=jnp.bfloat16 if args.dtype == "bfloat16"
                                                     else jnp.float32)  # fmt: skip
    tokenizer = tokenize.load_tokenizer(model_dir)
    ret = retriever.Retriever(encoder, retriever.RetrieverConfig(
        scorer=args.scorer, num_entity_vectors=args.num_entity_vectors, num_codes=args.num_codes,
        shared_encoder=args.shared_encoder, row_length=args.row_length))  # fmt: skip
    params = ret.init(encoder_params, jax.random.key(args.seed))
    length = args.max_length

    # Training data: mentions of the train split against the union of the training worlds' entities.
    train_mentions = data.mentions["train"]
    pool = data.entities(data.worlds("train"))
    position = {(d.world, d.document_id): i for i, d in enumerate(pool)}
    gold = np.array([position[(m.world, m.label_document_id)] for m in train_mentions], np.int64)
    m_ids, m_mask = zeshel.pad_ids(zeshel.mention_input_ids(tokenizer, data, train_mentions, max_length=length),
                                   length=length)  # fmt: skip
    e_ids, e_mask = zeshel.pad_ids(zeshel.entity_input_ids(tokenizer, pool, max_length=length), length=length)
    k = args.num_negatives
    if k > len(pool) - 1:
        raise SystemExit(f"--num-negatives {k} exceeds the {len(pool) - 1} non-gold training entities")
    config = config_lib.config_from_args(args, num_examples=len(train_mentions))
    try:
        args.layout = feed.choose_layout(args.layout)
    except ValueError as e:
        raise SystemExit(f"--layout: {e}") from None
    packed = args.layout == "packed"
    devices = parallel.DataParallel(config.parallel, config.devices).n_devices
    if packed and config.batch_size % devices:
        raise SystemExit(f"--layout packed: --batch-size {config.batch_size} must divide over the {devices} devices "
                         "(or use --layout padded)")  # fmt: skip
    pad_id = tokenizer.pad_token_id or 0
    m_seqs, _ = packing.unpad(m_ids, m_mask)
    e_seqs, _ = packing.unpad(e_ids, e_mask)

    # one static shape for every packed encoder call: rows for a batch of the training entities' mean length
    eval_rows = packing.bucket_rows(max(int(np.ceil(1.1 * args.eval_batch_size * e_mask.sum(1).mean()
                                                    / args.row_length)), 1))  # fmt: skip

    def corpus(ids, mask):  # what the encoders below take: packed groups of one static shape, or padded arrays
        if not packed:
            return {"ids": ids, "mask": mask}
        return embed.packed_groups(packing.unpad(ids, mask)[0], row_length=args.row_length, length=length,
                                   batch_size=args.eval_batch_size, rows=eval_rows, pad_id=pad_id)  # fmt: skip

    if packed:
        encode_entities = embed.trim_to_group(jax.jit(lambda p, s: ret.encode_entities_packed(p, s)))
        encode_mentions = embed.trim_to_group(jax.jit(lambda p, s: ret.encode_mentions_packed(p, s)))
    else:
        encode_entities = jax.jit(lambda p, b: ret.encode_entities(p, b["ids"], b["mask"]))
        encode_mentions = jax.jit(lambda p, b: ret.encode_mentions(p, b["ids"], b["mask"]))
    single = args.scorer == "dual"

    def entity_tokens(p, batch):  # (vectors [b, n, D], mask [b, n])
        return encode_entities(p, batch)

    def mention_tokens(p, batch):
        return encode_mentions(p, batch)

    def entity_fn(p, batch):
        v, m = entity_tokens(p, batch)
        return v[:, 0] if single else (v, m)

    def mention_fn(p, batch):
        v, m = mention_tokens(p, batch)
        return v[:, 0] if single else (v, m)

    recipe = (mining.Recipe("model") if args.negatives == "model" else
              mining.Recipe("mixed", hard_share=args.hard_share))  # fmt: skip
    miner = mining.Miner(
        entity_fn, corpus(e_ids, e_mask), corpus(m_ids, m_mask), [[g] for g in gold],
        index=args.index, recipe=recipe, num_negatives=k, refresh_every=args.refresh_every,
        seed=args.seed, asynchronous=args.async_refresh, batch_size=args.eval_batch_size,
        query_encode_fn=mention_fn,
    )  # fmt: skip

    def batch_fn(indices, candidates):
        neg, log_q = candidates
        cand = np.concatenate([gold[indices, None], neg], axis=1)  # [b, K + 1], gold at column 0
        if packed:  # each distinct entity of a micro-batch stored once (candidate_keys)
            batch = retriever.pack_batch(
                [m_seqs[i] for i in indices],
                [[e_seqs[c] for c in row] for row in cand],
                row_length=args.row_length,
                mention_length=length,
                entity_length=length,
                candidate_keys=cand,
                rows=parallel.padded_size(config.batch_size, devices) * config.grad_accum,  # short batches filled
                devices=devices // jax.process_count(),
                grad_accum=config.grad_accum,
                pad_id=pad_id,
            )  # fmt: skip  (this process's rows over its own devices)
        else:
            batch = {"mention_ids": m_ids[indices], "mention_mask": m_mask[indices],
                     "cand_ids": e_ids[cand], "cand_token_mask": e_mask[cand]}  # fmt: skip
        if args.negatives == "model":
            batch["log_q"] = np.concatenate([np.zeros((len(indices), 1), np.float32), log_q], axis=1)
        return batch

    extra = {k_: getattr(args, k_) for k_ in ("data", "model", "scorer", "num_entity_vectors", "num_codes",
                                             "shared_encoder", "num_negatives", "hard_share", "negatives",
                                             "refresh_every", "max_length", "dtype")}  # fmt: skip
    layout = {"layout": args.layout, "row_length": args.row_length}  # results only: resuming may switch layouts
    result = loop.fit(config, params=params, loss_fn=ret.loss, batch_fn=batch_fn, num_examples=len(train_mentions),
                      miner=miner, extra_config=extra)  # fmt: skip
    print(result.format_time_split())
    trained = jax.device_put(result.state.params)
    if args.export and distributed.is_main_process():
        export.export_retriever(out / "export", ret, trained, tokenizer_from=model_dir, max_length=length)

    # Evaluation: every mention against its own world's entities, exact retriever scores. Each process encodes its
    # share of a world's entities (gathered) and ranks its share of the world's mentions (gathered on process 0).
    results: dict = {}
    writer = distributed.is_main_process()
    if writer:
        (out / "candidates").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for split in dict.fromkeys(args.eval_splits + args.candidate_splits):
        mentions = data.mentions.get(split, [])
        if not mentions:
            if split in args.eval_splits:
                logger.warning("split %s has no mentions in %s; not evaluated", split, args.data)
            continue
        lines = []
        for world in dict.fromkeys(m.world for m in mentions):
            ms = [m for m in mentions if m.world == world]
            ents = list(data.documents[world].values())
            own = distributed.shard_range(len(ents))
            ents_own = [ents[i] for i in own] or ents[:1]  # an empty share still encodes one entity for the shapes
            ei, em = zeshel.pad_ids(zeshel.entity_input_ids(tokenizer, ents_own, max_length=length), length=length)
            d, dm = mining.encode(entity_tokens, trained, corpus(ei, em), batch_size=args.eval_batch_size,
                                  desc=f"{split}/{world}", progress=config.progress and writer)  # fmt: skip
            d, dm = distributed.allgather_rows((d[: len(own)], dm[: len(own)]))
            doc_ids = np.array([e.document_id for e in ents])
            ms_own = [ms[i] for i in distributed.shard_range(len(ms))]
            world_lines = []
            if ms_own:
                mi, mm = zeshel.pad_ids(zeshel.mention_input_ids(tokenizer, data, ms_own, max_length=length),
                                        length=length)  # fmt: skip
                q, qm = mining.encode(mention_tokens, trained, corpus(mi, mm),
                                      batch_size=args.eval_batch_size, desc=f"{split}/{world}",
                                      progress=config.progress and writer)  # fmt: skip
                scores, idx = retriever.top_k(ret, jnp.asarray(q), jnp.asarray(qm), jnp.asarray(d), jnp.asarray(dm),
                                              max(RECALL_KS))  # fmt: skip
                for m, row, srow in zip(ms_own, idx, scores):
                    world_lines.append({"mention_id": m.mention_id, "world": world, "gold": m.label_document_id,
                                        "candidates": doc_ids[row].tolist(),
                                        "scores": [round(float(x), 5) for x in srow]})  # fmt: skip
            lines += [line for part in distributed.allgather_objects(world_lines) for line in part]
        gold_ids = [line.pop("gold") for line in lines]
        if split in args.candidate_splits and writer:
            with open(out / "candidates" / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
        if split in args.eval_splits:
            width = max(RECALL_KS)  # a world with fewer entities pads its lists with "" (never a gold id)
            ranked = [line["candidates"] for line in lines]
            table = np.array([r + [""] * (width - len(r)) for r in ranked], dtype=object)
            recall = ev.recall_at_k(table, np.array(gold_ids, dtype=object), RECALL_KS)
            results[split] = {**recall, "mentions": len(ranked)}
            logger.info("%s: %s", split, results[split])
    results.update(
        scorer=args.scorer, hard_share=args.hard_share, negatives=args.negatives, steps=config.max_steps,
        seed=args.seed, **metrics.run_summary(out, result.time_split), eval_s=time.perf_counter() - started,
        config={**config.to_dict(), **extra, **layout}, runtime=setup,
    )  # fmt: skip
    if writer:
        metrics.write_results(out, results)
    return results


if __name__ == "__main__":
    main()
