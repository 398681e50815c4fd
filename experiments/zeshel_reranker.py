"""Zero-shot entity linking reranker (Zhang & Stratos 2021, §3.2–3.3) over a retriever's top-K candidates.

A cross-encoder (hnjax.reranker.CrossEncoder) reads ``[CLS] mention window [SEP] entity prefix [SEP]`` for each of a
mention's K candidates (pairs of --max-length tokens) and is trained with softmax cross-entropy over the K scores.
In training the gold entity is forced into slot 0: when the retriever missed it, it replaces the last candidate (or
fills a free slot when the mention has fewer than K candidates). Mentions with fewer than K candidates (small worlds)
are padded and masked with ``cand_mask``, never truncated; a mention of the split without a candidate line is an
error naming the file.

Evaluation reports, per split, the unnormalized accuracy (over all mentions; a mention whose gold was not retrieved
is wrong) and the normalized accuracy (over the mentions whose gold is among the candidates), each pooled over the
mentions (micro) and averaged over the worlds (macro).

Paper defaults: K = 64 candidates, pairs of 256 tokens, AdamW lr 2e-5, 20% warmup, 3 epochs, batch 2 × accumulation
2 (BERT-base; the default encoder here is the bundled all-MiniLM-L6-v2).

Run (from the repository root), after experiments/zeshel_retriever.py wrote RUN/candidates/{train,val,test}.jsonl:

    python experiments/zeshel_reranker.py --data runs/zeshel_data --candidates runs/zr/som-p0.5/candidates \
        --out runs/zrr/som-p0.5 --num-candidates 64 --max-length 256 --model all-MiniLM-L6-v2

Writes OUT/results.json ({"val": {"normalized_accuracy", "unnormalized_accuracy", "macro_normalized_accuracy",
"macro_unnormalized_accuracy", "mentions", "mentions_with_gold", "per_world"}, "test": {..}, ...}),
OUT/metrics.jsonl (step, loss, ...), OUT/predictions/<split>.jsonl (lines {"mention_id", "world", "gold",
"prediction", "candidates", "scores"}), checkpoints for --resume, and with --export OUT/export (a one-label
sequence classifier: transformers' AutoModelForSequenceClassification and sentence-transformers' CrossEncoder load it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from hnjax import distributed, export, models, reranker
from hnjax import eval as ev
from hnjax.data import tokenize, zeshel
from hnjax.train import config as config_lib
from hnjax.train import loop, metrics

logger = logging.getLogger("zeshel_reranker")


class CandidateFileError(ValueError):
    """A candidate file that does not match the data; the message names file, line and field."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder in the Zeshel layout (documents/, mentions/)")
    p.add_argument("--candidates", required=True,
                   help="folder of <split>.jsonl candidate lists (OUT/candidates of zeshel_retriever.py)")  # fmt: skip
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint directory or 'all-MiniLM-L6-v2'")
    p.add_argument("--num-candidates", type=int, default=64, help="candidates K per mention, the top of each list")
    p.add_argument("--max-length", type=int, default=256, help="tokens per [mention ; entity] pair (default 256)")
    p.add_argument("--train-split", default="train", help="split trained on (default train)")
    p.add_argument("--eval-splits", nargs="+", default=["val", "test"], help="splits evaluated (default val test)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="mentions (× K pairs) per scoring call")
    p.add_argument("--dropout", type=float, default=None, help="dropout of the score head (default: the encoder's)")
    p.add_argument(
        "--pooling",
        choices=("cls", "mean"),
        default="cls",
        help="what the score head reads: cls = BERT's pooled [CLS] (paper), mean = masked mean of the token states "
        "(for mean-pooled sentence encoders such as all-MiniLM-L6-v2)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype")
    p.add_argument("--export", action="store_true",
                   help="also write OUT/export: a one-label sequence classifier (CrossEncoder loads it)")  # fmt: skip
    defaults = config_lib.TrainConfig(batch_size=2, grad_accum=2, lr=2e-5, warmup=0.2, max_steps=1)
    config_lib.add_train_arguments(p, defaults)
    p.add_argument("--epochs", type=float, default=3.0, help="epochs when --max-steps is not given (default 3)")
    p.set_defaults(max_steps=None)
    distributed.add_distributed_arguments(p)
    args = p.parse_args(argv)
    if args.out is None:
        p.error("--out is required")
    if args.num_candidates < 1:
        p.error(f"--num-candidates must be >= 1, got {args.num_candidates}")
    if args.max_length < 8:
        p.error(f"--max-length must be >= 8 for a mention window and an entity prefix, got {args.max_length}")
    if args.eval_batch_size < 1:
        p.error(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")
    return args


def read_candidates(path: pathlib.Path, data: zeshel.Zeshel, split: str, k: int) -> list[list[str]]:
    """The top-``k`` candidate document ids of every mention of ``split``, in the split's mention order.

    Raises:
      CandidateFileError: missing file, bad JSON, a missing or mistyped field, a duplicate or unknown mention id, a
        world that differs from the mention's, a candidate that is not a document of the mention's world, or a
        mention of the split without a line (file, line and field named).
    """
    mentions = data.mentions.get(split, [])
    by_id = {m.mention_id: m for m in mentions}
    if not path.is_file():
        raise CandidateFileError(f"{path}: missing; split {split!r} has {len(mentions)} mentions to rerank")
    found: dict[str, list[str]] = {}
    for lineno, rec in zeshel.json_lines(path, CandidateFileError):
        where = f"{path}:{lineno}"
        mid, cands = rec.get("mention_id"), rec.get("candidates")
        if not isinstance(mid, str):
            raise CandidateFileError(f"{where}: field 'mention_id' must be a string, got {mid!r:.60}")
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise CandidateFileError(f"{where}: field 'candidates' must be a list of document ids")
        if mid not in by_id:
            raise CandidateFileError(f"{where}: field 'mention_id': {mid!r} is not a mention of split {split!r}")
        if mid in found:
            raise CandidateFileError(f"{where}: field 'mention_id': duplicate line for {mid!r}")
        world = by_id[mid].world
        if "world" in rec and rec["world"] != world:
            raise CandidateFileError(f"{where}: field 'world': {rec['world']!r}, but mention {mid!r} is in {world!r}")
        docs = data.documents[world]
        for c in cands:
            if c not in docs:
                raise CandidateFileError(f"{where}: field 'candidates': {c!r} is not a document of world {world!r}")
        if len(set(cands)) != len(cands):
            raise CandidateFileError(f"{where}: field 'candidates': duplicate document ids")
        found[mid] = cands[:k]
    missing = [m.mention_id for m in mentions if m.mention_id not in found]
    if missing:
        raise CandidateFileError(
            f"{path}: {len(missing)} mentions of split {split!r} have no candidate line, first {missing[0]!r}"
        )
    return [found[m.mention_id] for m in mentions]


def with_gold_first(candidates: list[str], gold: str, k: int) -> list[str]:
    """Training list: the gold at slot 0, then the other candidates in order, at most ``k`` (paper 1 §3.2: a missed
    gold replaces the last candidate)."""
    return ([gold] + [c for c in candidates if c != gold])[:k]


class PairBuilder:
    """Builds [b, K, L] cross-encoder inputs from token-id caches of mentions and entities."""

    def __init__(self, tokenizer, data: zeshel.Zeshel, length: int):
        self.tokenizer, self.data, self.length = tokenizer, data, length
        self.entity: dict[tuple[str, str], list[int]] = {}
        # The shortest valid pair ([CLS] [SEP] [SEP]) fills masked candidate slots.
        self.filler = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.sep_token_id]

    def add_entities(self, keys) -> None:
        """Tokenizes the (world, document_id) pairs not cached yet."""
        new = sorted({key for key in keys if key not in self.entity})
        if new:
            docs = [self.data.document(w, d) for w, d in new]
            ids = zeshel.entity_input_ids(self.tokenizer, docs, max_length=self.length)
            self.entity.update(zip(new, ids))

    def build(self, mention_ids: list[list[int]], worlds: list[str], lists: list[list[str]], k: int) -> dict:
        """mention_ids: token ids per mention; lists: candidate ids per mention (at most k)."""
        b, length = len(lists), self.length
        ids = np.zeros((b, k, length), np.int32)
        mask = np.zeros((b, k, length), bool)
        types = np.zeros((b, k, length), np.int32)
        cand_mask = np.zeros((b, k), bool)
        m_rows, e_rows, slots = [], [], []
        for i, (m, w, cands) in enumerate(zip(mention_ids, worlds, lists)):
            for j, c in enumerate(cands):
                m_rows.append(m)
                e_rows.append(self.entity[(w, c)])
                slots.append((i, j))
        rows, row_types = zeshel.pair_input_ids(self.tokenizer, m_rows, e_rows, max_length=length)
        for (i, j), r, t in zip(slots, rows, row_types):
            ids[i, j, : len(r)] = r
            types[i, j, : len(t)] = t
            mask[i, j, : len(r)] = True
            cand_mask[i, j] = True
        for i, j in zip(*np.nonzero(~cand_mask)):
            ids[i, j, :3] = self.filler
            types[i, j, 2] = 1
            mask[i, j, :3] = True
        return {"pair_ids": ids, "pair_mask": mask, "pair_types": types, "cand_mask": cand_mask}


def accuracies(rows: list[dict]) -> dict:
    """Micro (pooled) and macro (per-world mean) normalized and unnormalized accuracy of prediction rows."""

    def pair(sub: list[dict]) -> tuple[float, float, int]:
        width = max(len(r["candidates"]) for r in sub)
        cands = np.array([r["candidates"] + [""] * (width - len(r["candidates"])) for r in sub], dtype=object)
        pred = np.array([r["prediction"] for r in sub], dtype=object)
        gold = np.array([r["gold"] for r in sub], dtype=object)
        covered = int(sum(r["gold"] in r["candidates"] for r in sub))
        return ev.normalized_accuracy(pred, gold, cands), ev.unnormalized_accuracy(pred, gold), covered

    norm, unnorm, covered = pair(rows)
    per_world = {}
    for world in dict.fromkeys(r["world"] for r in rows):
        sub = [r for r in rows if r["world"] == world]
        n, u, c = pair(sub)
        per_world[world] = {"normalized_accuracy": n, "unnormalized_accuracy": u, "mentions": len(sub),
                            "mentions_with_gold": c}  # fmt: skip
    worlds = list(per_world.values())
    normalized = [w["normalized_accuracy"] for w in worlds if w["mentions_with_gold"]]
    return {
        "normalized_accuracy": norm,
        "unnormalized_accuracy": unnorm,
        # A world where the retriever found no gold has no normalized accuracy; it is left out of that average.
        "macro_normalized_accuracy": float(np.mean(normalized)) if normalized else float("nan"),
        "macro_unnormalized_accuracy": float(np.mean([w["unnormalized_accuracy"] for w in worlds])),
        "mentions": len(rows),
        "mentions_with_gold": covered,
        "per_world": per_world,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    distributed.initialize_from_args(args)
    distributed.configure_logging()
    writer = distributed.is_main_process()
    out = pathlib.Path(args.out)
    cand_dir = pathlib.Path(args.candidates)
    data = zeshel.load_zeshel(args.data)
    k, length = args.num_candidates, args.max_length
    train_mentions = data.mentions.get(args.train_split, [])
    if not train_mentions:
        raise SystemExit(f"{args.data}: mentions/{args.train_split}.json has no mentions to train on")
    splits = list(dict.fromkeys([args.train_split] + args.eval_splits))
    lists = {}
    for split in splits:
        if split != args.train_split and not data.mentions.get(split):
            logger.warning("split %s has no mentions in %s; not evaluated", split, args.data)
            continue
        lists[split] = read_candidates(cand_dir / f"{split}.jsonl", data, split, k)

    model_dir = models.resolve_checkpoint(args.model)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    encoder, encoder_params = models.from_pretrained(model_dir, dtype=dtype)
    head, head_params = models.init_cross_encoder_head(
        encoder.config,
        jax.random.key(args.seed),
        checkpoint=model_dir,
        dropout_rate=args.dropout,
        pooling=args.pooling,
    )
    cross = reranker.CrossEncoder(encoder, head)
    params = {"encoder": encoder_params, "head": head_params}
    tokenizer = tokenize.load_tokenizer(model_dir)
    pairs = PairBuilder(tokenizer, data, length)
    for split, split_lists in lists.items():
        ms = data.mentions[split]
        extra_gold = [(m.world, m.label_document_id) for m in ms] if split == args.train_split else []
        pairs.add_entities([(m.world, c) for m, cs in zip(ms, split_lists) for c in cs] + extra_gold)

    # Training: gold at slot 0, padded slots masked; K = the longest list (at most --num-candidates).
    train_lists = [with_gold_first(c, m.label_document_id, k) for m, c in zip(train_mentions, lists[args.train_split])]
    k_train = max(len(c) for c in train_lists)
    if k_train < k:
        logger.info("train: at most %d candidates per mention (< K = %d); training over %d slots", k_train, k, k_train)
    train_ids = zeshel.mention_input_ids(tokenizer, data, train_mentions, max_length=length)
    train_worlds = [m.world for m in train_mentions]
    if args.max_steps is None:
        args.max_steps = max(1, math.ceil(args.epochs * len(train_mentions) / (args.batch_size * args.grad_accum)))
    config = config_lib.config_from_args(args)

    def batch_fn(indices, candidates):
        del candidates  # no miner: the retriever's candidates are fixed
        return pairs.build([train_ids[i] for i in indices], [train_worlds[i] for i in indices],
                           [train_lists[i] for i in indices], k_train)  # fmt: skip

    extra = {k_: getattr(args, k_) for k_ in ("data", "candidates", "model", "num_candidates", "max_length",
                                             "train_split", "dropout", "pooling", "dtype")}  # fmt: skip
    result = loop.fit(config, params=params, loss_fn=cross.loss, batch_fn=batch_fn, num_examples=len(train_mentions),
                      extra_config=extra)  # fmt: skip
    print(result.format_time_split())
    trained = jax.device_put(result.state.params)
    if args.export and writer:
        export.export_reranker(out / "export", cross, trained, tokenizer_from=model_dir, max_length=length)

    # Evaluation: rerank the retrieved lists as they are (no gold inserted); each process its share of the mentions.
    score_fn = jax.jit(lambda p, batch: cross.scores(p, batch["pair_ids"], batch["pair_mask"], batch["pair_types"]))
    results: dict = {}
    if writer:
        (out / "predictions").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for split in args.eval_splits:
        if split not in lists:
            continue
        own = distributed.shard_range(len(data.mentions[split]))
        ms, split_lists = data.mentions[split][own.start : own.stop], lists[split][own.start : own.stop]
        k_eval = max(1, max(len(c) for c in lists[split]))
        m_ids = zeshel.mention_input_ids(tokenizer, data, ms, max_length=length) if ms else []
        rows = []
        bs = args.eval_batch_size
        for start in tqdm.trange(0, len(ms), bs, desc=f"rerank {split}", disable=not (args.progress and writer)):
            take = np.minimum(np.arange(start, start + bs), len(ms) - 1)  # last batch padded: one compilation
            batch = pairs.build([m_ids[i] for i in take], [ms[i].world for i in take],
                                [split_lists[i] for i in take], k_eval)  # fmt: skip
            s = np.asarray(score_fn(trained, batch))
            for row, i in enumerate(take[: min(bs, len(ms) - start)]):
                cands = split_lists[i]
                sc = s[row, : len(cands)]
                rows.append({"mention_id": ms[i].mention_id, "world": ms[i].world, "gold": ms[i].label_document_id,
                             "prediction": cands[int(np.argmax(sc))] if cands else None, "candidates": cands,
                             "scores": [float(x) for x in sc]})  # fmt: skip
        rows = [row for part in distributed.allgather_objects(rows) for row in part]
        if writer:
            with open(out / "predictions" / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        results[split] = accuracies(rows)
        logger.info("%s: %s", split, {key: v for key, v in results[split].items() if key != "per_world"})
    results.update(
        steps=args.max_steps, seed=args.seed, num_candidates=k, train_candidates=k_train,
        **metrics.run_summary(out, result.time_split), eval_s=time.perf_counter() - started,
        config={**config.to_dict(), **extra},
    )  # fmt: skip
    if writer:
        metrics.write_results(out, results)
    return results


if __name__ == "__main__":
    main()
