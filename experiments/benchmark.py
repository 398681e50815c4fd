"""Training-step throughput: hnjax vs the PyTorch reference logic, same checkpoint, batch, lengths and loss, one run.

Cases (every implementation gets the same token ids, candidates and initial parameters):

- ``retriever_som_step``: one hard-nce-el retriever update: mention encoder + a separate entity encoder (both
  initialised from the checkpoint), SOM score (Σ_i max_j ⟨x_i, y_j⟩ over token states), softmax CE over ``[B, K]``
  with the gold at column 0, gradient clipping 1.0, AdamW.
- ``simcse_focal_step``: one unsupervised SimCSE / Focal-InfoNCE update: two dropout views, [CLS] → Linear + tanh,
  N×N cosine matrix, ``sp_logits`` (τ = 0.05, m = 0.3), CE, AdamW.
- ``loss_only``: value and gradient of ``nce([B, K] scores) + focal_infonce([B, D], [B, D])`` on fixed inputs.
- ``scorer_only``: value and gradient of the SOM score of B mentions against K candidates each, token vectors given.

Implementations (``--impls``):

- ``hnjax`` (float32) and ``hnjax_bf16`` (bfloat16 matmuls, float32 parameters and accumulation): the library's
  compiled step (``make_train_step`` under one ``jax.jit`` with the state donated), length buckets
  (``hnjax.data.tokenize.default_buckets``) and, for the retriever, each distinct candidate entity encoded once
  (``entity_ids`` + ``cand_index``).
- ``pytorch``: the reference logic as its users run it: ``transformers.BertModel`` in eager mode, float32, inputs
  padded to ``--pad-length`` (128, hard-nce-el ``--max_len``) on both sides and all B·K candidates encoded
  (retriever); SimCSE's ``cl_forward`` (one pass over the 2B duplicated sentences, padded to the longest of the
  batch, the Hugging Face collator's default).
- ``pytorch_same_tricks`` / ``pytorch_same_tricks_bf16``: the same PyTorch code given hnjax's length buckets and
  candidate de-duplication (and bfloat16 autocast), to show how much of the speed-up is the tricks and how much the
  compiled step.
- ``hnjax_no_dedup`` / ``hnjax_no_bucket`` (retriever ablations): hnjax without one of the two tricks.

One deliberate difference from hard-nce-el: its ``HardAttention`` lets padding states into the sum and the max; both
implementations here mask padding (hnjax always does), so that they compute the same loss on the same inputs. Before
timing, every implementation evaluates its loss on the first batch with dropout off, and the JSON reports these
values (``loss_check``): hnjax and PyTorch agree to float32 rounding.

Each implementation runs in its own spawned process (its peak resident memory, ``ru_maxrss``, is ``peak_mem_mb``;
it includes the runtime, the model and the optimizer state). Processes are set up one after the other (hnjax's
compile time, over every distinct batch shape, is ``compile_s``), then ``--rounds`` timing rounds run each
implementation in turn for about ``--round-seconds`` each, so load changes on a shared machine hit all alike;
``seq_per_s`` is the median over rounds. Both frameworks use ``--threads`` compute threads (torch.set_num_threads;
XLA:CPU sizes its pool by the CPUs a process may use, so with fewer threads than CPUs every worker's CPU affinity is
restricted to ``--threads`` CPUs). ``seq_per_s`` counts logical sequences: B·(1 + K) per retriever step (mentions and
candidates, duplicates included), B sentences per SimCSE step, B rows for ``loss_only``, B·K pairs for
``scorer_only``.

Run (from the repository root):

    python experiments/benchmark.py --out runs/benchmark.json            # full configuration, about 15 minutes
    python experiments/benchmark.py --quick --out runs/benchmark_quick.json   # small sizes, under 5 minutes

On a GPU: JAX runs on its default backend (install a CUDA build of jax) and the PyTorch side on CUDA
(``--torch-device auto``), float32 matmuls on TF32 tensor cores in both (XLA's default there; PyTorch is told to allow
TF32 so that the fp32 rows compare alike). Step rows carry ``model_flops_per_step`` (matmul FLOPs of the encoders and
the scorer or head over the token grid each implementation executes, ``hnjax.models.flops``), hnjax rows also XLA's
count of the compiled step (``xla_flops_per_step``), and ``model_tflops_per_s`` and ``mfu`` (model FLOPs utilisation
against ``--peak-tflops`` or, on a known GPU, its data-sheet dense peak for the row's dtype); ``peak_device_mem_mb``
is the accelerator's peak allocation.

Output JSON: a list of rows ``{"case", "impl", "dtype", "device", "seq_per_s", "steps_per_s", "compile_s",
"peak_mem_mb", "loss_check", "model_flops_per_step", "mfu", ...}``, then one ``{"case", "speedup", ...}`` row per case
(hnjax float32 / pytorch; also against ``pytorch_same_tricks`` and for bfloat16 where measured), and last
``{"meta": {...}}`` (machine, devices, versions, sizes, duplication rate, load averages). A PNG bar chart of seq_per_s
per case is written next to the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import time

import numpy as np

CASES = ("retriever_som_step", "simcse_focal_step", "loss_only", "scorer_only")
IMPLS = (
    "hnjax",
    "hnjax_bf16",
    "pytorch",
    "pytorch_same_tricks",
    "pytorch_same_tricks_bf16",
    "hnjax_no_dedup",
    "hnjax_no_bucket",
)
STEP_ONLY_IMPLS = ("pytorch_same_tricks", "pytorch_same_tricks_bf16", "hnjax_no_dedup", "hnjax_no_bucket")
RETRIEVER_ONLY_IMPLS = ("hnjax_no_dedup", "hnjax_no_bucket")
CLS, SEP, PAD, FIRST_WORD = 101, 102, 0, 1000  # BERT uncased vocabulary layout
LR, WEIGHT_DECAY, CLIP = 1e-5, 0.01, 1.0
TEMPERATURE, MARGIN = 0.05, 0.3

QUICK = dict(
    ret_batch=2, ret_cands=8, ret_min_len=32, ret_max_len=64, sim_batch=16, sim_min_len=8, sim_max_len=32,
    loss_batch=64, rounds=2, round_seconds=1.0, batches=1, impls="hnjax,pytorch",
)  # fmt: skip
FULL = dict(
    ret_batch=2, ret_cands=64, ret_min_len=32, ret_max_len=128, sim_batch=64, sim_min_len=8, sim_max_len=32,
    loss_batch=256, rounds=3, round_seconds=5.0, batches=2, impls=",".join(IMPLS),
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (finishes in under 5 minutes on 2 cores)")
    parser.add_argument("--out", default="benchmark.json", help="output JSON file (the PNG chart goes next to it)")
    parser.add_argument("--checkpoint", default="all-MiniLM-L6-v2", help="checkpoint directory or known name")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument("--ret-batch", type=int, default=None, help="retriever: mentions per step B")
    parser.add_argument("--ret-cands", type=int, default=None, help="retriever: candidates per mention K (gold + K-1)")
    parser.add_argument("--ret-min-len", type=int, default=None, help="retriever: shortest drawn sequence length")
    parser.add_argument("--ret-max-len", type=int, default=None, help="retriever: longest drawn sequence length")
    parser.add_argument(
        "--neg-repeat",
        type=int,
        default=2,
        help="retriever: each hard negative is a candidate of this many mentions of the batch (groups of mentions "
        "sharing mined negatives, as namesake entities do); 1 = no duplicates",
    )
    parser.add_argument("--pad-length", type=int, default=128, help="retriever: reference padding length (max_len)")
    parser.add_argument("--sim-batch", type=int, default=None, help="SimCSE: sentences per step B")
    parser.add_argument("--sim-min-len", type=int, default=None, help="SimCSE: shortest drawn sentence length")
    parser.add_argument("--sim-max-len", type=int, default=None, help="SimCSE: longest drawn length (= max_seq_length)")
    parser.add_argument("--loss-batch", type=int, default=None, help="loss_only: rows B (nce uses K = --ret-cands)")
    parser.add_argument("--batches", type=int, default=None, help="distinct batches cycled through (varied lengths)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds, implementations interleaved")
    parser.add_argument("--round-seconds", type=float, default=None, help="target seconds per implementation and round")
    parser.add_argument("--threads", type=int, default=2, help="compute threads for both torch and XLA")
    parser.add_argument(
        "--torch-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the PyTorch side runs (auto: CUDA when PyTorch sees a GPU); JAX uses its default backend",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s of the device for the MFU column (default: the data-sheet figure of a known GPU, "
        "hnjax.models.flops.PEAK_TFLOPS; none on CPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated batches and the MLP head")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG chart")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("ret_batch", "ret_cands", "ret_min_len", "sim_batch", "sim_min_len", "loss_batch", "batches",
                 "rounds", "threads", "neg_repeat"):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(args, name)}")
    if args.ret_cands < 2:
        parser.error(f"--ret-cands: expected at least 2 (gold + a negative), got {args.ret_cands}")
    if not 3 <= args.ret_min_len <= args.ret_max_len <= args.pad_length:
        parser.error(
            f"--ret-min-len/--ret-max-len/--pad-length: expected 3 <= min <= max <= pad, got "
            f"{args.ret_min_len}, {args.ret_max_len}, {args.pad_length}"
        )
    if not 3 <= args.sim_min_len <= args.sim_max_len:
        parser.error(
            f"--sim-min-len/--sim-max-len: expected 3 <= min <= max, got {args.sim_min_len}, {args.sim_max_len}"
        )
    if (args.ret_batch * (args.ret_cands - 1)) % args.neg_repeat:
        parser.error(
            f"--neg-repeat: expected a divisor of B·(K-1) = {args.ret_batch * (args.ret_cands - 1)}, "
            f"got {args.neg_repeat}"
        )
    if args.ret_batch * (args.ret_cands - 1) // args.neg_repeat < args.ret_cands - 1:
        parser.error(f"--neg-repeat: too large, a mention needs {args.ret_cands - 1} distinct negatives")
    if args.round_seconds <= 0:
        parser.error(f"--round-seconds: expected > 0, got {args.round_seconds}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f"--peak-tflops: expected > 0, got {args.peak_tflops}")
    for flag, value, known in (("--cases", args.cases, CASES), ("--impls", args.impls, IMPLS)):
        unknown = set(value.split(",")) - set(known)
        if unknown:
            parser.error(f"{flag}: unknown {sorted(unknown)}; expected a subset of {known}")
    return args


# ----------------------------------------------------------------------------------------------------------- data


def _sequence(rng: np.random.Generator, length: int, vocab: int) -> np.ndarray:
    """[CLS] w_1 … w_{length-2} [SEP], random word pieces."""
    ids = rng.integers(FIRST_WORD, vocab, size=length).astype(np.int32)
    ids[0], ids[-1] = CLS, SEP
    return ids


def make_retriever_batches(args, vocab: int) -> list[dict]:
    """Mentions, distinct candidate entities and the [B, K] candidate table (gold at column 0) of each batch.

    Hard negatives repeat across mentions: the B·(K-1) negative slots are filled from a pool of
    B·(K-1)/neg_repeat entities, each used by ``neg_repeat`` mentions (never twice by one mention).
    """
    rng = np.random.default_rng(args.seed)
    b, k, r = args.ret_batch, args.ret_cands, args.neg_repeat
    lo, hi = args.ret_min_len, args.ret_max_len
    batches = []
    for _ in range(args.batches):
        n_pool = b * (k - 1) // r
        n_entities = b + n_pool  # golds first, then the negative pool
        entities = [_sequence(rng, int(rng.integers(lo, hi + 1)), vocab) for _ in range(n_entities)]
        slots = np.arange(b * (k - 1)) % n_pool  # consecutive K-1 slots of a row are distinct pool entries
        pool_order = rng.permutation(n_pool)
        negatives = b + pool_order[slots].reshape(b, k - 1)
        cand_index = np.concatenate([np.arange(b)[:, None], negatives], axis=1).astype(np.int32)  # [B, K]
        mentions = [_sequence(rng, int(rng.integers(lo, hi + 1)), vocab) for _ in range(b)]
        batches.append({"mentions": mentions, "entities": entities, "cand_index": cand_index})
    return batches


def make_simcse_batches(args, vocab: int) -> list[dict]:
    rng = np.random.default_rng(args.seed + 1)
    lo, hi = args.sim_min_len, args.sim_max_len
    return [
        {"sentences": [_sequence(rng, int(rng.integers(lo, hi + 1)), vocab) for _ in range(args.sim_batch)]}
        for _ in range(args.batches)
    ]


def pad(seqs: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [n, length] int32 and mask [n, length] bool."""
    ids = np.full((len(seqs), length), PAD, np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return ids, ids != PAD


def bucket_length(seqs: list[np.ndarray], max_length: int) -> int:
    from hnjax.data import tokenize

    return tokenize.choose_bucket(max(len(s) for s in seqs), tokenize.default_buckets(max_length))


def retriever_arrays(batch: dict, *, dedup: bool, bucket: bool, pad_length: int) -> dict:
    """The retriever batch as arrays: deduplicated (entity_ids [U, Le] + cand_index [B, K]) or per row (cand_ids
    [B, K, Le]); lengths padded to the smallest bucket that fits (``bucket``) or to ``pad_length``."""
    mentions, entities, cand_index = batch["mentions"], batch["entities"], batch["cand_index"]
    lm = bucket_length(mentions, pad_length) if bucket else pad_length
    out = dict(zip(("mention_ids", "mention_mask"), pad(mentions, lm)))
    if dedup:
        le = bucket_length(entities, pad_length) if bucket else pad_length
        out["entity_ids"], out["entity_mask"] = pad(entities, le)
        out["cand_index"] = cand_index
    else:
        rows = [entities[j] for j in cand_index.reshape(-1)]
        le = bucket_length(rows, pad_length) if bucket else pad_length
        ids, mask = pad(rows, le)
        out["cand_ids"] = ids.reshape(cand_index.shape + (le,))
        out["cand_token_mask"] = mask.reshape(cand_index.shape + (le,))
    return out


def simcse_arrays(batch: dict, *, bucket: bool, max_length: int) -> dict:
    sentences = batch["sentences"]
    length = bucket_length(sentences, max_length) if bucket else max(len(s) for s in sentences)
    ids, mask = pad(sentences, length)
    return {"input_ids": ids, "attention_mask": mask}


def make_head(args, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The SimCSE MLP head both implementations start from: kernel [D, D] ~ N(0, 0.02²), bias 0."""
    rng = np.random.default_rng(args.seed + 2)
    return (0.02 * rng.standard_normal((width, width))).astype(np.float32), np.zeros(width, np.float32)


def make_vectors(args, width: int) -> dict:
    """Fixed inputs of loss_only and scorer_only (token vectors of the retriever's first batch's shapes)."""
    rng = np.random.default_rng(args.seed + 3)
    b, k = args.loss_batch, args.ret_cands
    lm = le = args.ret_max_len
    lengths = lambda *shape: rng.integers(args.ret_min_len, args.ret_max_len + 1, size=shape)
    sb = args.ret_batch
    return {
        "scores": rng.standard_normal((b, k)).astype(np.float32),
        "z1": rng.standard_normal((b, width)).astype(np.float32),
        "z2": rng.standard_normal((b, width)).astype(np.float32),
        "q": (0.1 * rng.standard_normal((sb, lm, width))).astype(np.float32),
        "q_mask": np.arange(lm) < lengths(sb)[:, None],
        "d": (0.1 * rng.standard_normal((sb, k, le, width))).astype(np.float32),
        "d_mask": np.arange(le) < lengths(sb, k)[..., None],
    }


# ---------------------------------------------------------------------------------------------------- hnjax side


@dataclasses.dataclass
class Prepared:
    """An implementation ready to time: ``run(n)`` does n steps and waits for them; ``compile_s`` may be None."""

    run: object
    compile_s: float | None
    loss_check: float
    n_shapes: int
    model_flops: float | None = None  # matmul FLOPs of one step (mean over the batches), hnjax.models.flops
    xla_flops: float | None = None  # XLA's count of the compiled step (mean over the batches), hnjax only
    device: str = "cpu"  # device kind the step ran on
    peak_device_mem_mb: object = None  # callable -> accelerator peak memory (MB), or None on CPU


def _limit_cpus(threads: int) -> None:
    """Restricts this process to ``threads`` CPUs when fewer than available: XLA:CPU sizes its thread pool by the
    CPUs the process may use (there is no XLA flag for it), and torch gets the same limit for fairness."""
    available = sorted(os.sched_getaffinity(0))
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])


def _shape_key(tree) -> str:
    import jax

    return json.dumps(
        jax.tree.leaves(jax.tree.map(lambda x: (x.shape, str(x.dtype)), tree), is_leaf=lambda x: isinstance(x, tuple)),
        default=str,
    )


def _no_dropout(model):
    from hnjax.models import bert

    config = dataclasses.replace(model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return bert.BertModel(config, dtype=model.dtype)


def step_model_flops(case: str, config, arrays: dict) -> float:
    """Matmul FLOPs of one training step on ``arrays`` (the token grid as executed, padding included): encoders
    (``hnjax.models.flops.encoder_flops``) plus the SOM scorer (2·Lm·Le·D per pair) or the SimCSE head (2·D² per
    view), forward and backward (3×)."""
    from hnjax.models import flops

    d = config.hidden_size
    if case == "retriever_som_step":
        b, lm = arrays["mention_ids"].shape
        total = flops.encoder_flops(config, b, lm)
        if "entity_ids" in arrays:
            u, le = arrays["entity_ids"].shape
            k = arrays["cand_index"].shape[1]
        else:
            _, k, le = arrays["cand_ids"].shape
            u = b * k
        return total + flops.encoder_flops(config, u, le) + 3.0 * 2 * b * k * lm * le * d
    n, length = arrays["input_ids"].shape
    return flops.encoder_flops(config, 2 * n, length) + 3.0 * 2 * 2 * n * d * d


def _jax_device() -> tuple[str, object]:
    """Kind of the first JAX device and a reader of its peak memory in MB (None where the backend has no stats)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu", None

    def peak():
        stats = device.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None

    return device.device_kind, peak


def hnjax_step_case(case: str, impl: str, args, data) -> Prepared:
    """The library's compiled train step over the case's batches."""
    import jax
    import jax.numpy as jnp

    from hnjax import models, retriever, simcse
    from hnjax.train import state as state_lib
    from hnjax.train import step as step_lib

    dtype = jnp.bfloat16 if impl.endswith("bf16") else jnp.float32
    model, encoder_params = models.from_pretrained(args.checkpoint, dtype=dtype)
    if case == "retriever_som_step":
        config = retriever.RetrieverConfig(scorer="som")
        task = retriever.Retriever(model, config)
        params = task.init(encoder_params, jax.random.key(0))
        check_task = retriever.Retriever(_no_dropout(model), config)
        check_fn = lambda p, b: check_task.loss(p, b, jax.random.key(0))[0]
        layout = dict(dedup=impl != "hnjax_no_dedup", bucket=impl != "hnjax_no_bucket", pad_length=args.pad_length)
        arrays = [retriever_arrays(b, **layout) for b in data["batches"]]
        loss_fn = task.loss
    else:
        task = simcse.SimCSE(model, pooling="cls", loss="focal", temperature=TEMPERATURE, margin=MARGIN)
        params = task.init(encoder_params, jax.random.key(0))
        kernel, bias = data["head"]
        params["mlp"] = {"Dense_0": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
        check_task = simcse.SimCSE(_no_dropout(model), pooling="cls", loss="focal", temperature=TEMPERATURE,
                                   margin=MARGIN)  # fmt: skip
        check_fn = lambda p, b: check_task.loss_fn(p, b, jax.random.key(0))[0]
        arrays = [simcse_arrays(b, bucket=True, max_length=args.sim_max_len) for b in data["batches"]]
        loss_fn = task.loss_fn
    batches = [jax.tree.map(jnp.asarray, a) for a in arrays]
    loss_check = float(jax.jit(check_fn)(params, batches[0]))
    optimizer, _ = state_lib.make_optimizer(lr=LR, total_steps=10_000, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
    state = state_lib.create_train_state(params, optimizer, seed=0)
    step = jax.jit(step_lib.make_train_step(loss_fn, optimizer), donate_argnums=0)
    compiled, compile_s = {}, 0.0
    for b in batches:
        key = _shape_key(b)
        if key not in compiled:
            start = time.perf_counter()
            compiled[key] = step.lower(state, b).compile()
            compile_s += time.perf_counter() - start
    fns = [compiled[_shape_key(b)] for b in batches]
    model_flops = float(np.mean([step_model_flops(case, model.config, a) for a in arrays]))
    xla_flops = float(np.mean([_xla_flops(f) for f in fns]))
    holder = {"state": state, "i": 0}

    def run(n: int):
        s, metrics = holder["state"], None
        for _ in range(n):
            i = holder["i"] % len(batches)
            s, metrics = fns[i](s, batches[i])
            holder["i"] += 1
        jax.block_until_ready(metrics["loss"])
        holder["state"] = s

    device, peak = _jax_device()
    return Prepared(run, compile_s, loss_check, len(compiled), model_flops, xla_flops, device, peak)


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returns one dict per device
    return float(cost.get("flops", float("nan")))


def hnjax_micro_case(case: str, impl: str, args, data) -> Prepared:
    """loss_only / scorer_only: value and gradient of the library function under jit."""
    import jax
    import jax.numpy as jnp

    from hnjax import losses, scorers

    v = jax.tree.map(jnp.asarray, data["vectors"])
    cast = (lambda x: x.astype(jnp.bfloat16)) if impl.endswith("bf16") else (lambda x: x)
    if case == "loss_only":
        f = lambda s, z1, z2: losses.nce(cast(s)) + losses.focal_infonce(cast(z1), cast(z2), TEMPERATURE, MARGIN)
        inputs = (v["scores"], v["z1"], v["z2"])
        argnums = (0, 1, 2)
    else:
        f = lambda q, d, qm, dm: jnp.sum(scorers.sum_of_max(cast(q), cast(d), qm, dm))
        inputs = (v["q"], v["d"], v["q_mask"], v["d_mask"])
        argnums = (0, 1)
    loss_check = float(jax.jit(f)(*inputs))
    fn = jax.jit(jax.value_and_grad(f, argnums=argnums))
    start = time.perf_counter()
    compiled = fn.lower(*inputs).compile()
    compile_s = time.perf_counter() - start

    def run(n: int):
        out = None
        for _ in range(n):
            out = compiled(*inputs)
        jax.block_until_ready(out)

    device, peak = _jax_device()
    return Prepared(run, compile_s, loss_check, 1, None, _xla_flops(compiled), device, peak)


# -------------------------------------------------------------------------------------------------- PyTorch side


def _torch_optimizer(torch, module):
    """AdamW with hard-nce-el's grouping (no decay for biases and LayerNorm weights)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )


def _torch_modules(args):
    import copy

    import torch
    import transformers

    from hnjax import models

    path = str(models.resolve_checkpoint(args.checkpoint))
    mention = transformers.BertModel.from_pretrained(path, add_pooling_layer=False)
    return torch, mention, copy.deepcopy


def torch_som_scores(torch, q, q_mask, d, d_mask):
    """Σ_i max_j ⟨q_i, d_j⟩ over real tokens: q [B, Lm, D], d [B, K, Le, D] → [B, K] (hard-nce-el HardAttention)."""
    sim = torch.einsum("bid,bkjd->bkij", q, d)  # [B, K, Lm, Le]
    sim = sim.masked_fill(~d_mask[:, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # [B, K, Lm]
    return (best * q_mask[:, None, :]).sum(-1)


def torch_sp_logits(torch, z1, z2):
    """Focal-InfoNCE logits (focalNCE/models.py sp_logits): s_ii²/τ on the diagonal, s_ij(s_ij + m)/τ off it."""
    cos = torch.nn.functional.cosine_similarity(z1[:, None, :], z2[None, :, :], dim=-1)  # [N, N]
    eye = torch.eye(cos.shape[0], dtype=cos.dtype, device=cos.device)
    return (cos * eye * cos + (cos + MARGIN) * (1 - eye) * cos) / TEMPERATURE


def _torch_device(torch, args):
    """(device, its kind, a reader of its peak memory in MB or None): CUDA when asked for or, with "auto", present."""
    name = args.torch_device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--torch-device cuda: PyTorch sees no CUDA device")
    device = torch.device(name)
    if device.type != "cuda":
        return device, "cpu", None
    # float32 matmuls on TF32 tensor cores, as XLA does by default on these GPUs, so that fp32 rows compare alike
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return device, torch.cuda.get_device_name(device), lambda: torch.cuda.max_memory_allocated(device) / 2**20


def torch_step_case(case: str, impl: str, args, data) -> Prepared:
    """The reference step in eager PyTorch (``pytorch``), or the same code with hnjax's tricks."""
    torch, mention, deepcopy = _torch_modules(args)
    device, device_kind, peak = _torch_device(torch, args)
    tricks = impl.startswith("pytorch_same_tricks")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=impl.endswith("bf16"))
    t = lambda x: torch.from_numpy(np.asarray(x).astype(np.int64) if x.dtype.kind in "iu" else np.asarray(x)).to(device)
    if case == "retriever_som_step":
        entity = deepcopy(mention)
        module = torch.nn.ModuleDict({"mention": mention, "entity": entity})
        layout = dict(dedup=tricks, bucket=tricks, pad_length=args.pad_length)
        arrays = [retriever_arrays(b, **layout) for b in data["batches"]]
        batches = [{k: t(v) for k, v in a.items()} for a in arrays]

        def loss_of(b):
            q = module["mention"](input_ids=b["mention_ids"], attention_mask=b["mention_mask"]).last_hidden_state
            if "cand_index" in b:
                h = module["entity"](input_ids=b["entity_ids"], attention_mask=b["entity_mask"]).last_hidden_state
                d, dm = h[b["cand_index"]], b["entity_mask"][b["cand_index"]]  # [B, K, Le, D], [B, K, Le]
            else:
                bb, k, le = b["cand_ids"].shape
                ids, mask = b["cand_ids"].reshape(bb * k, le), b["cand_token_mask"].reshape(bb * k, le)
                d = module["entity"](input_ids=ids, attention_mask=mask).last_hidden_state.reshape(bb, k, le, -1)
                dm = b["cand_token_mask"]
            scores = torch_som_scores(torch, q.float(), b["mention_mask"].bool(), d.float(), dm.bool())
            gold = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
            return torch.nn.functional.cross_entropy(scores, gold)
    else:
        head = torch.nn.Linear(mention.config.hidden_size, mention.config.hidden_size)
        kernel, bias = data["head"]
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(kernel.T.copy()))
            head.bias.copy_(torch.from_numpy(bias))
        module = torch.nn.ModuleDict({"encoder": mention, "mlp": head})
        arrays = [simcse_arrays(b, bucket=tricks, max_length=args.sim_max_len) for b in data["batches"]]
        batches = [{k: t(v) for k, v in a.items()} for a in arrays]

        def loss_of(b):
            # cl_forward: (bs, 2, L) flattened to (2·bs, L), one encoder pass, [CLS] → MLP, views split.
            ids = b["input_ids"].repeat_interleave(2, dim=0)
            mask = b["attention_mask"].repeat_interleave(2, dim=0)
            h = module["encoder"](input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            z = torch.tanh(module["mlp"](h)).float().view(-1, 2, h.shape[-1])
            logits = torch_sp_logits(torch, z[:, 0], z[:, 1])
            return torch.nn.functional.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))

    module.to(device)
    module.eval()
    with torch.no_grad():
        loss_check = float(loss_of(batches[0]))
    module.train()
    optimizer = _torch_optimizer(torch, module)
    counter = {"i": 0}

    def run(n: int):
        for _ in range(n):
            b = batches[counter["i"] % len(batches)]
            counter["i"] += 1
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_of(b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), CLIP)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    from hnjax import models

    config = models.EncoderConfig.from_json(models.resolve_checkpoint(args.checkpoint))
    model_flops = float(np.mean([step_model_flops(case, config, a) for a in arrays]))
    n_shapes = len({tuple(v.shape) for b in batches for v in b.values()})
    return Prepared(run, None, loss_check, n_shapes, model_flops, None, device_kind, peak)


def torch_micro_case(case: str, impl: str, args, data) -> Prepared:
    import torch

    device, device_kind, peak = _torch_device(torch, args)
    v = {k: torch.from_numpy(x).to(device) for k, x in data["vectors"].items()}
    cast = (lambda x: x.bfloat16().float()) if impl.endswith("bf16") else (lambda x: x)
    if case == "loss_only":
        names = ("scores", "z1", "z2")

        def f(s, z1, z2):
            nce = torch.nn.functional.cross_entropy(cast(s), torch.zeros(s.shape[0], dtype=torch.long, device=device))
            logits = torch_sp_logits(torch, cast(z1), cast(z2))
            return nce + torch.nn.functional.cross_entropy(logits, torch.arange(logits.shape[0], device=device))
    else:
        names = ("q", "d")

        def f(q, d):
            return torch_som_scores(torch, cast(q), v["q_mask"], cast(d), v["d_mask"]).sum()

    inputs = [v[k].clone().requires_grad_(True) for k in names]
    with torch.no_grad():
        loss_check = float(f(*inputs))

    def run(n: int):
        for _ in range(n):
            for x in inputs:
                x.grad = None
            f(*inputs).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return Prepared(run, None, loss_check, 1, None, None, device_kind, peak)


# ------------------------------------------------------------------------------------------------------- workers


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def worker(conn, case: str, impl: str, args, data) -> None:
    """One implementation of one case in its own process: set up, then answer ("run", n) / ("stop",) commands."""
    try:
        start = time.perf_counter()
        _limit_cpus(args.threads)
        if impl.startswith("hnjax"):
            setup = hnjax_step_case if case.endswith("_step") else hnjax_micro_case
        else:
            import torch

            torch.set_num_threads(args.threads)
            setup = torch_step_case if case.endswith("_step") else torch_micro_case
        prepared = setup(case, impl, args, data)
        prepared.run(1)  # warm-up (first execution after compilation, allocator growth)
        t0 = time.perf_counter()
        prepared.run(1)
        step_s = time.perf_counter() - t0
        conn.send(
            {
                "compile_s": prepared.compile_s,
                "loss_check": prepared.loss_check,
                "n_shapes": prepared.n_shapes,
                "setup_s": time.perf_counter() - start,
                "probe_step_s": step_s,
                "model_flops_per_step": prepared.model_flops,
                "xla_flops_per_step": prepared.xla_flops,
                "device": prepared.device,
            }
        )
        while True:
            command = conn.recv()
            if command[0] == "stop":
                device_mb = prepared.peak_device_mem_mb() if prepared.peak_device_mem_mb else None
                conn.send({"peak_mem_mb": _rss_mb(), "peak_device_mem_mb": device_mb})
                return
            t0 = time.perf_counter()
            prepared.run(command[1])
            conn.send(time.perf_counter() - t0)
    except Exception as e:  # reported to the parent, which raises
        import traceback

        conn.send({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})


def _recv(conn, what: str):
    message = conn.recv()
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(f"{what} failed in its worker process:\n{message['error']}")
    return message


def sequences_per_step(case: str, args) -> int:
    return {
        "retriever_som_step": args.ret_batch * (1 + args.ret_cands),
        "simcse_focal_step": args.sim_batch,
        "loss_only": args.loss_batch,
        "scorer_only": args.ret_batch * args.ret_cands,
    }[case]


def run_case(case: str, impls: list[str], args, data, progress) -> list[dict]:
    """Sets each implementation up in turn, then times them round-robin; rows of this case."""
    from hnjax.models import flops

    context = multiprocessing.get_context("spawn")
    procs, info = {}, {}
    try:
        for impl in impls:
            parent, child = context.Pipe()
            proc = context.Process(target=worker, args=(child, case, impl, args, data), daemon=True)
            proc.start()
            procs[impl] = (proc, parent)
            info[impl] = _recv(parent, f"{case}/{impl} set-up")
            logging.info("%s/%s ready: %s", case, impl, json.dumps(info[impl]))
            progress.update(1)
        steps = {impl: max(1, round(args.round_seconds / max(info[impl]["probe_step_s"], 1e-6))) for impl in impls}
        seconds = {impl: [] for impl in impls}
        for r in range(args.rounds):
            for impl in impls:
                procs[impl][1].send(("run", steps[impl]))
                seconds[impl].append(_recv(procs[impl][1], f"{case}/{impl} round {r}"))
            progress.update(1)
            per_step = {i: round(seconds[i][-1] / steps[i], 4) for i in impls}
            logging.info("%s round %d: seconds per step %s", case, r, per_step)
        for impl in impls:
            procs[impl][1].send(("stop",))
            info[impl].update(_recv(procs[impl][1], f"{case}/{impl} stop"))
    finally:
        for proc, _ in procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    per_step = sequences_per_step(case, args)
    rows = []
    for impl in impls:
        steps_per_s = [steps[impl] / s for s in seconds[impl]]
        median = float(np.median(steps_per_s))
        dtype = "bf16" if impl.endswith("bf16") else "fp32"
        model_flops = info[impl]["model_flops_per_step"]
        peak = args.peak_tflops if args.peak_tflops is not None else flops.peak_tflops(info[impl]["device"], dtype)
        rows.append(
            {
                "case": case,
                "impl": impl,
                "dtype": dtype,
                "device": info[impl]["device"],
                "seq_per_s": median * per_step,
                "steps_per_s": median,
                "steps_per_s_rounds": steps_per_s,
                "steps_per_round": steps[impl],
                "compile_s": info[impl]["compile_s"],
                "compiled_shapes": info[impl]["n_shapes"] if impl.startswith("hnjax") else None,
                "setup_s": info[impl]["setup_s"],
                "peak_mem_mb": info[impl]["peak_mem_mb"],
                "peak_device_mem_mb": info[impl]["peak_device_mem_mb"],
                "loss_check": info[impl]["loss_check"],
                "model_flops_per_step": model_flops,
                "xla_flops_per_step": info[impl]["xla_flops_per_step"],
                "model_tflops_per_s": None if model_flops is None else model_flops * median / 1e12,
                "peak_tflops": peak,
                "mfu": None if model_flops is None else flops.mfu(model_flops, median, peak),
            }
        )
    return rows


def speedup_row(case: str, rows: list[dict]) -> dict:
    by = {r["impl"]: r for r in rows}
    out = {"case": case, "speedup": by["hnjax"]["seq_per_s"] / by["pytorch"]["seq_per_s"]}
    if "hnjax_bf16" in by:
        out["speedup_bf16"] = by["hnjax_bf16"]["seq_per_s"] / by["pytorch"]["seq_per_s"]
    if "pytorch_same_tricks" in by:
        out["speedup_vs_same_tricks"] = by["hnjax"]["seq_per_s"] / by["pytorch_same_tricks"]["seq_per_s"]
    if "pytorch_same_tricks_bf16" in by and "hnjax_bf16" in by:
        out["speedup_bf16_vs_same_tricks_bf16"] = (
            by["hnjax_bf16"]["seq_per_s"] / by["pytorch_same_tricks_bf16"]["seq_per_s"]
        )
    ref = by["pytorch"]["loss_check"]
    out["loss_check_rel_diff"] = abs(by["hnjax"]["loss_check"] - ref) / max(abs(ref), 1e-12)
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "impl" in r]
    cases = list(dict.fromkeys(r["case"] for r in measured))
    impls = list(dict.fromkeys(r["impl"] for r in measured))
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.8), squeeze=False)
    for ax, case in zip(axes[0], cases):
        by = {r["impl"]: r["seq_per_s"] for r in measured if r["case"] == case}
        names = [i for i in impls if i in by]
        ax.bar(range(len(names)), [by[i] for i in names], color=[f"C{impls.index(i)}" for i in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(case, fontsize=10)
        ax.set_ylabel("sequences / s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import tqdm

    from hnjax import models

    config = models.EncoderConfig.from_json(models.resolve_checkpoint(args.checkpoint))
    cases = args.cases.split(",")
    impls = args.impls.split(",")
    for required in ("hnjax", "pytorch"):
        if required not in impls:
            raise ValueError(f"--impls: expected {required!r} among {impls} (the speedup compares them)")
    retriever_batches = make_retriever_batches(args, config.vocab_size)
    n_cands = args.ret_batch * args.ret_cands
    distinct = [len(b["entities"]) for b in retriever_batches]
    data = {
        "retriever_som_step": {"batches": retriever_batches},
        "simcse_focal_step": {
            "batches": make_simcse_batches(args, config.vocab_size),
            "head": make_head(args, config.hidden_size),
        },
        "loss_only": {"vectors": make_vectors(args, config.hidden_size)},
        "scorer_only": {"vectors": make_vectors(args, config.hidden_size)},
    }
    plan = {
        case: [
            i
            for i in impls
            if (case.endswith("_step") or i not in STEP_ONLY_IMPLS)
            and (case == "retriever_som_step" or i not in RETRIEVER_ONLY_IMPLS)
        ]
        for case in cases
    }
    load_start = os.getloadavg()
    rows, speedups = [], []
    total = sum(len(v) + args.rounds for v in plan.values())
    with tqdm.tqdm(total=total, desc="set-ups and rounds") as progress:
        for case in cases:
            case_rows = run_case(case, plan[case], args, data[case], progress)
            rows += case_rows
            speedups.append(speedup_row(case, case_rows))
            logging.info("%s: %s", case, json.dumps(speedups[-1]))
    import jax
    import torch

    meta = {
        "command": "python experiments/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "checkpoint": args.checkpoint,
        "threads": args.threads,
        "retriever": {
            "batch": args.ret_batch,
            "candidates": args.ret_cands,
            "lengths": [args.ret_min_len, args.ret_max_len],
            "reference_pad_length": args.pad_length,
            "neg_repeat": args.neg_repeat,
            "distinct_entities_per_batch": distinct,
            "duplication_rate": 1.0 - float(np.mean(distinct)) / n_cands,
        },
        "simcse": {"batch": args.sim_batch, "lengths": [args.sim_min_len, args.sim_max_len]},
        "loss_batch": args.loss_batch,
        "batches": args.batches,
        "rounds": args.rounds,
        "round_seconds": args.round_seconds,
        "jax_version": jax.__version__,
        "jax_device": jax.devices()[0].device_kind,
        "torch_version": torch.__version__,
        "torch_device": args.torch_device,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    out = rows + speedups + [{"meta": meta}]
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    if not args.no_plot:
        plot(rows, os.path.splitext(args.out)[0] + ".png")
    for row in rows:
        logging.info(
            "%-18s %-26s %9.1f seq/s  compile %s s  peak %.0f MB  loss %.6f  model TFLOP/s %s  MFU %s",
            row["case"], row["impl"], row["seq_per_s"],
            "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}", row["peak_mem_mb"], row["loss_check"],
            "-" if row["model_tflops_per_s"] is None else f"{row['model_tflops_per_s']:.3g}",
            "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%",
        )  # fmt: skip
    for row in speedups:
        logging.info("%s", json.dumps(row))
    logging.info("wrote %s", args.out)
    return out


if __name__ == "__main__":
    main()
