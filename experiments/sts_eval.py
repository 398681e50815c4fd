"""Evaluates a sentence encoder on the SentEval STS sets: Spearman ×100 of the cosine similarity with gold scores.

Finds, anywhere under --data, the sets in SentEval's layout (folders `STS12-en-test` … `STS16-en-test`, files
`sts-dev.csv`, `sts-test.csv`, `SICK_test_annotated.txt`) and evaluates the ones present. STS12–16 report the "all"
setting (Spearman over the pairs of all subsets together) with "mean"/"wmean" and per-subset values beside it;
"avg7" is the average of STS12–16, STSBenchmark-test and SICK-R when all seven are present.

Run (from the repository root):

    python experiments/sts_eval.py --model all-MiniLM-L6-v2 --data DIR --out sts.json
    python experiments/sts_eval.py --model runs/simcse/best --data DIR --out sts.json   # its modules.json: cls
    # a sentence-transformers folder (e.g. runs/simcse/best) against SentenceTransformer(folder).encode:
    python experiments/sts_eval.py --model runs/simcse/best --data DIR --sets STSBenchmark-dev \
        --reference-sentence-transformers --out sts_st.json
    # parity with the PyTorch pipeline (transformers + the same pooling; needs torch):
    python experiments/sts_eval.py --model all-MiniLM-L6-v2 --data DIR --sets STSBenchmark-dev --reference-torch \
        --out sts_parity.json

Output: {"<set>": {"spearman": float, "pairs": int, ...}, ...}; with --reference-torch (or
--reference-sentence-transformers) each set also holds
"spearman_torch", "spearman_diff" (hnjax − torch) and "cosine_max_abs_diff" (largest difference of a pair's
cosine between the two pipelines).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import jax.numpy as jnp
import numpy as np

from hnjax import embed, models
from hnjax import eval as ev
from hnjax.data import sts, tokenize

logger = logging.getLogger("sts_eval")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint directory (Hugging Face layout, e.g. written by hnjax.models.save_pretrained) or "
        "'all-MiniLM-L6-v2' (the bundled sentence-transformers checkpoint)",
    )
    p.add_argument("--data", required=True, help="directory searched recursively for the STS sets (SentEval layout)")
    p.add_argument("--out", default=None, help="JSON file to write the results to (default: print them)")
    p.add_argument(
        "--sets",
        nargs="+",
        default=None,
        choices=sts.SET_NAMES,
        help="sets to evaluate, each of which must be found (default: every set found under --data)",
    )
    p.add_argument(
        "--pooling",
        choices=sorted(embed.POOLINGS),
        default=None,
        help="sentence vector: masked mean of the last hidden states or the first token's state (SimCSE-style "
        "encoders); default: the checkpoint's sentence-transformers pipeline (modules.json: pooling, Dense, "
        "Normalize) when it has one, else mean",
    )
    p.add_argument("--batch-size", type=int, default=64, help="sentences per encoder call (default 64)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per sentence, special tokens included (default: the sentence-transformers folder's "
        "max_seq_length, else 128)",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise the sentence vectors on the device (cosine scores, and so Spearman, do not change; "
        "alignment and uniformity are always computed on normalised vectors)",
    )
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="encoder compute dtype (default float32)"
    )
    p.add_argument(
        "--no-geometry", action="store_true", help="skip alignment and uniformity (Wang & Isola) of each set"
    )
    p.add_argument(
        "--reference-torch",
        action="store_true",
        help="also score every set with PyTorch transformers (same tokenizer, pooling and max length) and report "
        "spearman_torch and spearman_diff; needs torch",
    )
    p.add_argument(
        "--reference-sentence-transformers",
        action="store_true",
        help="as --reference-torch, with SentenceTransformer(--model).encode (its own modules.json pipeline and "
        "max_seq_length) as the reference; needs sentence-transformers",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 2:
        p.error(f"--max-length must be >= 2, got {args.max_length}")
    return args


def torch_embed_fn(model_name: str, *, pooling: str, max_length: int, batch_size: int, progress: bool):
    """Sentence vectors from PyTorch transformers: the reference pipeline (not used by hnjax itself)."""
    import torch
    import tqdm
    import transformers

    directory = str(models.resolve_checkpoint(model_name))
    tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    net = transformers.AutoModel.from_pretrained(directory, local_files_only=True).eval()

    def embed_fn(sentences):
        out = []
        with torch.inference_mode():
            for start in tqdm.trange(0, len(sentences), batch_size, desc="torch", disable=not progress):
                batch = tok(
                    list(sentences[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                hidden = net(**batch).last_hidden_state  # [B, L, D]
                if pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    vec = hidden[:, 0]
                out.append(vec.numpy())
        return np.concatenate(out)

    return embed_fn


def st_embed_fn(model_name: str, *, batch_size: int, progress: bool):
    """Sentence vectors from sentence-transformers itself, offline (not used by hnjax itself)."""
    import sentence_transformers

    directory = str(models.resolve_checkpoint(model_name))
    net = sentence_transformers.SentenceTransformer(directory, device="cpu", local_files_only=True)
    return lambda sentences: net.encode(
        list(sentences), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress
    )


def capture(embed_fn, store: dict):
    """Wraps an embedding function so that it also records sentence → vector in `store`."""

    def wrapped(sentences):
        vectors = np.asarray(embed_fn(sentences))
        store.update(zip(sentences, vectors))
        return vectors

    return wrapped


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sets = sts.load_sts_sets(args.data, names=args.sets)
    logger.info("sets: %s", {name: s.pairs for name, s in sets.items()})

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    pretrained = models.load_pretrained(args.model, dtype=dtype)
    model, params = pretrained.model, pretrained.params
    tokenizer = tokenize.load_tokenizer(args.model)
    pipeline = pretrained.pipeline if args.pooling is None else None
    if pipeline is not None:
        logger.info("embedding: the checkpoint's sentence-transformers pipeline, %s", pipeline.describe())
        if args.reference_torch and (pipeline.dense or len(pipeline.pooling) > 1 or pipeline.pooling[0] not in
                                     embed.POOLINGS):  # fmt: skip
            raise SystemExit(f"--reference-torch implements {sorted(embed.POOLINGS)} pooling only; pass --pooling")
    args.pooling = args.pooling or (pipeline.pooling[0] if pipeline is not None else "mean")
    if args.max_length is None:
        folder_length = pretrained.pipeline.max_seq_length if pretrained.pipeline is not None else None
        args.max_length = folder_length or 128
    encode_fn = embed.make_encode_fn(model, pooling=args.pooling, normalize=args.normalize, pipeline=pipeline)

    def embed_fn(sentences):
        return embed.encode_sentences(
            model,
            params,
            tokenizer,
            sentences,
            batch_size=args.batch_size,
            max_length=args.max_length,
            encode_fn=encode_fn,
            progress=not args.no_progress,
        )

    t0 = time.perf_counter()
    ours = {}  # sentence → vector, kept to compare with the reference pipeline
    results = ev.evaluate_sts(capture(embed_fn, ours), sets, geometry=not args.no_geometry)
    logger.info("hnjax evaluation took %.1f s", time.perf_counter() - t0)

    if args.reference_torch or args.reference_sentence_transformers:
        t0 = time.perf_counter()
        if args.reference_sentence_transformers:
            ref_fn = st_embed_fn(args.model, batch_size=args.batch_size, progress=not args.no_progress)
        else:
            ref_fn = torch_embed_fn(
                args.model,
                pooling=args.pooling,
                max_length=args.max_length,
                batch_size=args.batch_size,
                progress=not args.no_progress,
            )
        theirs = {}
        reference = ev.evaluate_sts(capture(ref_fn, theirs), sets, geometry=False)
        logger.info("torch evaluation took %.1f s", time.perf_counter() - t0)
        for name, entry in reference.items():
            results[name]["spearman_torch"] = entry["spearman"]
            results[name]["spearman_diff"] = results[name]["spearman"] - entry["spearman"]
        for name, diff in ev.sts_cosine_agreement(sets, ours, theirs).items():
            results[name]["cosine_max_abs_diff"] = diff
        diff = np.max(np.abs(np.stack(list(ours.values())) - np.stack([theirs[s] for s in ours])))
        logger.info("max |hnjax - torch| over %d sentence vectors: %.3g", len(ours), diff)

    for name, entry in results.items():
        extra = f" (torch {entry['spearman_torch']:.2f})" if "spearman_torch" in entry else ""
        logger.info("%-18s %6.2f%s over %d pairs", name, entry["spearman"], extra, entry["pairs"])
    text = json.dumps(results, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        logger.info("wrote %s", args.out)
    else:
        print(text)
    return results


if __name__ == "__main__":
    main()
