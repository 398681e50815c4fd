r"""Benchmark of the hnjax.mining index backends: recall@k against exact search, queries/s, build time, memory.

Exact baseline = FAISS ``IndexFlatIP`` (the fastest exact search on CPU); every backend's recall@k is measured
against its top-k ids and its speed-up is its queries/s divided by the baseline's, measured in the same run with
the same thread count.

Data (L2-normalised, inner product = cosine):
  clustered: ``--n-centres`` random unit centres in ``--dim`` dimensions; each vector = a uniformly chosen centre +
    noise · g / sqrt(D), g ~ N(0, I), then normalised (so ‖noise‖ ≈ ``--noise``; larger noise = looser clusters).
    Queries are fresh draws from the same mixture.
  gaussian: isotropic N(0, I) vectors, normalised (the worst case for any ANN index).

Exact commands behind the figures in docs/mining.md (OUT = any output directory):
  python experiments/bench_mining.py --n-docs 200000 --n-queries 2000 --dim 384 --k 64 --data clustered \
      --noise 2.0 --out OUT/clustered_200k_noise2.json                      # every backend
  python experiments/bench_mining.py --n-docs 200000 --n-queries 2000 --dim 384 --k 64 --data clustered \
      --noise 1.0 --backends flat,ivf,ivfpq --out OUT/clustered_200k_noise1.json
  python experiments/bench_mining.py --n-docs 200000 --n-queries 2000 --dim 384 --k 64 --data clustered \
      --noise 1.5 --backends flat,ivf --out OUT/clustered_200k_noise1.5.json   # also --noise 3.0
  python experiments/bench_mining.py --n-docs 200000 --n-queries 2000 --dim 384 --k 64 --data gaussian \
      --backends flat,ivf --out OUT/gaussian_200k.json
  python experiments/bench_mining.py --n-docs 1000000 --n-queries 1000 --dim 384 --k 64 --data clustered \
      --noise 1.0 --backends flat,ivf --nprobe 1,2,4,8 --out OUT/clustered_1m_noise1.json
  python experiments/bench_mining.py --n-docs 20000 --n-queries 200 --dim 384 --k 64 --data clustered \
      --backends flat --minilm-refresh-docs 100000 --minilm-measure-docs 256 --minilm-max-length 128 \
      --out OUT/minilm_refresh.json

Output: a JSON list of rows ``{"backend", "setting", "recall_at_k", "queries_per_s", "build_s",
"speedup_vs_exact", "peak_mem_mb", "index_mb", ...}`` (plus a ``{"measurement": "minilm_refresh", ...}`` row when
asked) and a PNG of recall against queries/s next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from hnjax import eval as ev
from hnjax import mining
from hnjax.bench import harness, inputs

logger = logging.getLogger("bench_mining")


def recall_vs_exact(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact top-k| / k (hnjax.eval.recall_at_k with the exact top-k as gold sets)."""
    k = truth.shape[1]
    return ev.recall_at_k(found[:, :k], list(truth), ks=(k,), multi_gold="fraction")[f"recall@{k}"]


def index_mb(index) -> float:
    if isinstance(index, mining.FaissIndex):
        return len(index._arrays()["faiss"]) / 2**20
    return index.size * index.dim * 4 / 2**20


def timed_search(index, queries, k):
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    return ids, time.perf_counter() - t


def run_backend(name, make, settings, apply, queries, docs, k, truth, exact_qps, common):
    """Builds one index, then searches once per setting; returns result rows."""
    index = make()
    with harness.PeakMemory() as mem:
        t = time.perf_counter()
        index.build(docs)
        build_s = time.perf_counter() - t
        compile_s = 0.0
        if name in ("exact", "approx"):  # compile outside the timing: once per (query block, k) shape
            t = time.perf_counter()
            index.search(queries[: index.query_block], k)
            compile_s = time.perf_counter() - t
        rows = []
        for setting in settings:
            apply(index, setting)
            ids, search_s = timed_search(index, queries, k)
            qps = len(queries) / search_s
            row = dict(common, backend=name, setting=setting, recall_at_k=recall_vs_exact(ids, truth),
                       queries_per_s=qps, build_s=build_s, speedup_vs_exact=qps / exact_qps if exact_qps else 1.0,
                       compile_s=compile_s, index_mb=index_mb(index))  # fmt: skip
            if getattr(index, "nlist_used", None):
                row["setting"] = f"nlist={index.nlist_used},{setting}"
            rows.append(row)
            logger.info("%-7s %-22s recall@%d %.4f  %8.1f q/s  x%.2f  build %.1fs", name, setting, k,
                        row["recall_at_k"], qps, row["speedup_vs_exact"], build_s)  # fmt: skip
    for row in rows:
        row["peak_mem_mb"] = mem.peak_mb
    return rows


def parse_list(text: str, cast=int) -> list:
    return [cast(v) for v in text.split(",") if v]


def minilm_refresh(n_docs_target: int, n_measure: int, max_length: int, batch_size: int, threads: int | None):
    """Encodes n_measure synthetic documents of max_length tokens with all-MiniLM-L6-v2 and builds the default index
    over n_docs_target vectors; extrapolates encode time linearly to n_docs_target documents."""
    import jax

    from hnjax import models

    model, params = models.from_pretrained("all-MiniLM-L6-v2")
    vocab = model.config.vocab_size

    @jax.jit
    def encode_fn(p, batch):
        hidden = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"])
        return models.poolers.mean(hidden, batch["attention_mask"])

    rng = np.random.default_rng(0)
    tokens = {
        "input_ids": rng.integers(1000, vocab, (n_measure, max_length), dtype=np.int32),
        "attention_mask": np.ones((n_measure, max_length), np.int32),
    }
    mining.encode(
        encode_fn, params, {k: v[:batch_size] for k, v in tokens.items()}, batch_size=batch_size, progress=False
    )  # fmt: skip  (compile)
    t = time.perf_counter()
    vecs = mining.encode(encode_fn, params, tokens, batch_size=batch_size, desc="MiniLM encode")
    encode_s = time.perf_counter() - t
    docs = np.resize(vecs, (n_docs_target, vecs.shape[1])).astype(np.float32)  # vectors for the build timing
    docs += 1e-3 * rng.standard_normal(docs.shape, np.float32)
    backend = mining.default_backend(n_docs_target)
    extra = {"threads": threads} if backend in mining.FaissIndex.KINDS else {}
    t = time.perf_counter()
    mining.make_index(backend, metric="cosine", **extra).build(docs)
    build_s = time.perf_counter() - t
    per_s = n_measure / encode_s
    return {
        "measurement": "minilm_refresh",
        "encoder": "all-MiniLM-L6-v2",
        "device": jax.devices()[0].platform,
        "max_length": max_length,
        "batch_size": batch_size,
        "docs_encoded": n_measure,
        "encode_docs_per_s": per_s,
        "n_docs": n_docs_target,
        "encode_s_extrapolated": n_docs_target / per_s,
        "index_backend": backend,
        "build_s": build_s,
        "refresh_s_estimate": n_docs_target / per_s + build_s,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-docs", type=int, default=200_000, help="corpus size N")
    p.add_argument("--n-queries", type=int, default=2_000, help="number of queries")
    p.add_argument("--dim", type=int, default=384, help="vector width D")
    p.add_argument("--k", type=int, default=64, help="neighbours per query (recall@k)")
    p.add_argument("--data", choices=["clustered", "gaussian"], default="clustered", help="data generator")
    p.add_argument("--noise", type=float, default=1.0, help="clustered: noise norm around each centre")
    p.add_argument("--n-centres", type=int, default=2000, help="clustered: number of mixture centres")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--backends", default="flat,exact,approx,hnsw,ivf,ivfpq",
                   help="comma list of backends to run (flat is always run: it is the exact baseline)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads for every FAISS backend")
    p.add_argument("--hnsw-m", type=int, default=16, help="HNSW graph degree M")
    p.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction")
    p.add_argument("--ef-search", default="16,32,64,128,256", help="HNSW efSearch values to sweep")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the library's, round(2 sqrt(N)))")
    p.add_argument("--nprobe", default="1,2,4,8,16,32", help="IVF nprobe values to sweep")
    p.add_argument("--pq-m", type=int, default=None, help="IVF-PQ sub-quantisers (default D/8)")
    p.add_argument("--pq-nprobe", default="4,16", help="IVF-PQ nprobe values to sweep")
    p.add_argument("--rerank", default="4", help="IVF-PQ exact re-rank factors to sweep (candidates = factor * k)")
    p.add_argument("--recall-target", type=float, default=0.95, help="recall_target of lax.approx_max_k")
    p.add_argument("--query-block", type=int, default=256, help="device backends: queries per compiled call")
    p.add_argument("--corpus-block", type=int, default=16_384, help="device backends: documents per score block")
    p.add_argument("--minilm-refresh-docs", type=int, default=0,
                   help="if > 0, also estimate the refresh time of N documents with all-MiniLM-L6-v2")  # fmt: skip
    p.add_argument("--minilm-measure-docs", type=int, default=512, help="documents actually encoded for the estimate")
    p.add_argument("--minilm-max-length", type=int, default=128, help="tokens per document for the estimate")
    p.add_argument("--out", required=True, help="output JSON file (a PNG plot is written next to it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    backends = parse_list(args.backends, str)
    unknown = set(backends) - set(mining.BACKENDS)
    if unknown:
        p.error(f"--backends: unknown {sorted(unknown)}; choose from {mining.BACKENDS}")
    k = min(args.k, args.n_docs)

    t = time.perf_counter()
    docs, queries = inputs.mining_vectors(args.data, args.n_docs, args.n_queries, args.dim, noise=args.noise,
                                          n_centres=args.n_centres, seed=args.seed)  # fmt: skip
    logger.info("data %s %s in %.1fs", args.data, docs.shape, time.perf_counter() - t)
    common = dict(data=args.data, noise=args.noise if args.data == "clustered" else None, n_docs=args.n_docs,
                  n_queries=args.n_queries, dim=args.dim, k=k, threads=args.threads)  # fmt: skip
    faiss_common = dict(metric="ip", threads=args.threads)

    # Exact baseline: FAISS flat; its ids are the ground truth.
    flat = mining.make_index("flat", **faiss_common)
    with harness.PeakMemory() as mem:
        t = time.perf_counter()
        flat.build(docs)
        flat_build = time.perf_counter() - t
        truth, flat_s = timed_search(flat, queries, k)
    exact_qps = args.n_queries / flat_s
    rows = [dict(common, backend="flat", setting="exact", recall_at_k=1.0, queries_per_s=exact_qps,
                 build_s=flat_build, speedup_vs_exact=1.0, compile_s=0.0, index_mb=index_mb(flat),
                 peak_mem_mb=mem.peak_mb)]  # fmt: skip
    logger.info("flat    exact baseline          %8.1f q/s  build %.1fs", exact_qps, flat_build)
    del flat

    no_knob = lambda index, setting: None
    plans = {
        "exact": (lambda: mining.make_index("exact", query_block=args.query_block, corpus_block=args.corpus_block),
                  ["exact"], no_knob),
        "approx": (lambda: mining.make_index("approx", recall_target=args.recall_target,
                                             query_block=args.query_block, corpus_block=args.corpus_block),
                   [f"recall_target={args.recall_target}"], no_knob),
        "hnsw": (lambda: mining.make_index("hnsw", M=args.hnsw_m, ef_construction=args.ef_construction,
                                           **faiss_common),
                 [f"M={args.hnsw_m},efSearch={e}" for e in parse_list(args.ef_search)],
                 lambda index, s: index.set_search_params(ef_search=int(s.split("efSearch=")[1]))),
        "ivf": (lambda: mining.make_index("ivf", nlist=args.nlist, **faiss_common),
                [f"nprobe={n}" for n in parse_list(args.nprobe)],
                lambda index, s: index.set_search_params(nprobe=int(s.split("=")[1]))),
        "ivfpq": (lambda: mining.make_index("ivfpq", nlist=args.nlist, pq_m=args.pq_m, **faiss_common),
                  [f"nprobe={n},rerank={r}" for n in parse_list(args.pq_nprobe) for r in parse_list(args.rerank)],
                  lambda index, s: index.set_search_params(nprobe=int(s.split(",")[0].split("=")[1]),
                                                           rerank=int(s.split("rerank=")[1]))),
    }  # fmt: skip
    for name in backends:
        if name == "flat":
            continue
        make, settings, apply = plans[name]
        rows.extend(run_backend(name, make, settings, apply, queries, docs, k, truth, exact_qps, common))

    if args.minilm_refresh_docs > 0:
        row = minilm_refresh(args.minilm_refresh_docs, args.minilm_measure_docs, args.minilm_max_length, 64,
                             args.threads)  # fmt: skip
        logger.info("MiniLM refresh estimate: %s", row)
        rows.append(row)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.splitext(args.out)[0] + ".png", args)
    logger.info("wrote %s", args.out)


def plot(rows, path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["backend"] for r in rows if "backend" in r):
        pts = [(r["queries_per_s"], r["recall_at_k"]) for r in rows if r.get("backend") == name]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("queries / s")
    ax.set_ylabel(f"recall@{args.k} vs exact")
    noise = f", noise {args.noise}" if args.data == "clustered" else ""
    ax.set_title(f"{args.data}{noise}: {args.n_docs:,} x {args.dim}, {args.n_queries:,} queries", fontsize=9)
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
