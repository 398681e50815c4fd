"""hnjax's side of the benchmark cases: the library's compiled training step (or loss / scorer) on a case's batches.

Set-up functions for :class:`hnjax.bench.harness.Job`; each builds its model and data in the worker process and
returns a :class:`hnjax.bench.harness.Prepared`.

- :func:`train_step`: ``retriever_som_step`` (hard-nce-el retriever update: mention encoder + separate entity
  encoder, SOM score, CE over [B, K] with the gold at column 0, clipping 1.0, AdamW) or ``simcse_focal_step``
  (two dropout views, [CLS] → Linear + tanh, ``focal_infonce`` with τ 0.05 and m 0.3, AdamW), the step built by
  :func:`hnjax.train.step.make_train_step` under one ``jax.jit`` with the state donated, on batches in a layout of
  :mod:`hnjax.bench.inputs` (packed by default).
- :func:`micro`: ``loss_only`` (value and gradient of ``nce`` + ``focal_infonce``) and ``scorer_only`` (the SOM
  score of B mentions × K candidates, token vectors given).
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np

from hnjax.bench import harness, inputs

LR, WEIGHT_DECAY, CLIP = 1e-5, 0.01, 1.0
TEMPERATURE, MARGIN = 0.05, 0.3
STEP_CASES = ("retriever_som_step", "simcse_focal_step")
MICRO_CASES = ("loss_only", "scorer_only")


def step_model_flops(case: str, config, arrays: dict, *, row_length: int | None = None) -> float:
    """Matmul FLOPs of one training step on ``arrays``, over the token grid as executed (padding included).

    Encoders (:func:`hnjax.models.flops.encoder_flops`: padded batches per pass, packed streams per grid row) plus
    the SOM scorer (2·Lm·Le·D per (mention, candidate) pair) or the SimCSE head (2·D² per view), forward and
    backward (3×).
    """
    from hnjax.models import flops  # noqa: PLC0415

    d = config.hidden_size
    if "slots" in arrays or "mention_slots" in arrays:  # packed streams
        total = 0.0
        for prefix in ("", "mention_", "entity_"):
            if prefix + "segments" in arrays:
                rows = arrays[prefix + "segments"].size // row_length
                total += flops.encoder_flops(config, rows, row_length)
        if case == "retriever_som_step":
            b, lm = arrays["mention_slots"].shape
            _, k, le = arrays["entity_slots"].shape
            return total + 3.0 * 2 * b * k * lm * le * d
        n = arrays["slots"].shape[0]
        return total + 3.0 * 2 * 2 * n * d * d
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


def layout_arrays(case: str, batches: list[dict], layout: str, *, pad_length: int, max_length: int,
                  row_length: int) -> list[dict]:  # fmt: skip
    """Each batch of a case in a layout (:mod:`hnjax.bench.inputs`)."""
    if case == "retriever_som_step":
        return [inputs.retriever_arrays(b, layout, pad_length=pad_length, row_length=row_length) for b in batches]
    return [inputs.simcse_arrays(b, layout, max_length=max_length, row_length=row_length) for b in batches]


def _shape_key(tree) -> str:
    import jax  # noqa: PLC0415

    shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), tree)
    return json.dumps(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)), default=str)


def _no_dropout(model):
    from hnjax.models import bert  # noqa: PLC0415

    config = dataclasses.replace(model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return bert.BertModel(config, dtype=model.dtype)


def _task(case, checkpoint, layout, dtype, batches, pad_length, max_length, row_length, head):
    """(model, initial params, loss_fn, dropout-free check_fn, host arrays of every batch) of a step case."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from hnjax import models, retriever, simcse  # noqa: PLC0415

    model, encoder_params = models.from_pretrained(checkpoint, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    if case == "retriever_som_step":
        config = retriever.RetrieverConfig(scorer="som", row_length=row_length)
        task = retriever.Retriever(model, config)
        params = task.init(encoder_params, jax.random.key(0))
        check_task = retriever.Retriever(_no_dropout(model), config)
        check_fn = lambda p, b: check_task.loss(p, b, jax.random.key(0))[0]  # noqa: E731
        loss_fn = task.loss
    elif case == "simcse_focal_step":
        settings = dict(pooling="cls", loss="focal", temperature=TEMPERATURE, margin=MARGIN, row_length=row_length)
        task = simcse.SimCSE(model, **settings)
        params = task.init(encoder_params, jax.random.key(0))
        kernel, bias = head
        params["mlp"] = {"Dense_0": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
        check_task = simcse.SimCSE(_no_dropout(model), **settings)
        check_fn = lambda p, b: check_task.loss_fn(p, b, jax.random.key(0))[0]  # noqa: E731
        loss_fn = task.loss_fn
    else:
        raise ValueError(f"case: expected one of {STEP_CASES}, got {case!r}")
    arrays = layout_arrays(case, batches, layout, pad_length=pad_length, max_length=max_length, row_length=row_length)
    return model, params, loss_fn, check_fn, arrays


def step_info(case: str, config, arrays: list[dict], row_length: int) -> dict:
    """Mean model FLOPs and token counts per step over a case's batches (:func:`step_model_flops`,
    :func:`hnjax.bench.inputs.token_counts`)."""
    views = 2 if case == "simcse_focal_step" else 1
    counts = [inputs.token_counts(a, row_length=row_length, views=views) for a in arrays]
    flops_per_step = [step_model_flops(case, config, a, row_length=row_length) for a in arrays]
    return {"model_flops_per_step": float(np.mean(flops_per_step)),
            **{k: float(np.mean([c[k] for c in counts])) for k in counts[0]}}  # fmt: skip


def loss_check(**kwargs) -> tuple[float, dict]:
    """The loss on the first batch with dropout off and the FLOP and token counts, without compiling the step
    (arguments as :func:`train_step`)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    kwargs.pop("compile_cache", None)
    model, params, _, check_fn, arrays = _task(**kwargs)
    value = float(jax.jit(check_fn)(params, jax.tree.map(jnp.asarray, arrays[0])))
    return value, step_info(kwargs["case"], model.config, arrays, kwargs["row_length"])


def train_step(
    *,
    case: str,
    checkpoint: str,
    layout: str,
    dtype: str,
    batches: list[dict],
    pad_length: int,
    max_length: int,
    row_length: int,
    head: tuple[np.ndarray, np.ndarray] | None = None,
    compile_cache: str | None = None,
) -> harness.Prepared:
    """The library's compiled train step over a case's batches (module docstring).

    Args:
        case: one of :data:`STEP_CASES`.
        checkpoint: encoder checkpoint (directory or known name).
        layout: batch layout (:data:`hnjax.bench.inputs.LAYOUTS`).
        dtype: "fp32" or "bf16" (matmul compute dtype; parameters and optimizer state stay float32).
        batches: the case's generated batches (:func:`hnjax.bench.inputs.retriever_batches` / ``simcse_batches``).
        pad_length: the retriever's longest sequence (and the padded layout's length).
        max_length: SimCSE's longest sentence.
        row_length: tokens per packed row.
        head: SimCSE's initial MLP head (kernel, bias).
        compile_cache: persistent compilation cache directory, or None.
    """
    from hnjax import runtime  # noqa: PLC0415

    if compile_cache is not None:
        runtime.enable_compile_cache(compile_cache)
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from hnjax.train import state as state_lib  # noqa: PLC0415
    from hnjax.train import step as step_lib  # noqa: PLC0415

    model, params, loss_fn, check_fn, arrays = _task(
        case, checkpoint, layout, dtype, batches, pad_length, max_length, row_length, head
    )
    device_batches = [jax.tree.map(jnp.asarray, a) for a in arrays]
    check = float(jax.jit(check_fn)(params, device_batches[0]))
    optimizer, _ = state_lib.make_optimizer(lr=LR, total_steps=10_000, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
    state = state_lib.create_train_state(params, optimizer, seed=0)
    step = jax.jit(step_lib.make_train_step(loss_fn, optimizer), donate_argnums=0)
    compiled, compile_s = {}, 0.0
    for b in device_batches:
        key = _shape_key(b)
        if key not in compiled:
            start = time.perf_counter()
            compiled[key] = step.lower(state, b).compile()
            compile_s += time.perf_counter() - start
    fns = [compiled[_shape_key(b)] for b in device_batches]
    info = {
        **step_info(case, model.config, arrays, row_length),
        "xla_flops_per_step": float(np.mean([harness.xla_flops(f) for f in fns])),
        "compiled_shapes": len(compiled),
    }
    holder = {"state": state, "i": 0}

    def run(n: int) -> None:
        s, metrics = holder["state"], None
        for _ in range(n):
            i = holder["i"] % len(device_batches)
            s, metrics = fns[i](s, device_batches[i])
            holder["i"] += 1
        jax.block_until_ready(metrics["loss"])
        holder["state"] = s

    device, peak = harness.jax_device()
    return harness.Prepared(run, check, compile_s, info, device, peak)


def micro(*, case: str, dtype: str, vectors: dict) -> harness.Prepared:
    """``loss_only`` / ``scorer_only``: value and gradient of the library function under jit."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from hnjax import losses, scorers  # noqa: PLC0415

    v = jax.tree.map(jnp.asarray, vectors)
    cast = (lambda x: x.astype(jnp.bfloat16)) if dtype == "bf16" else (lambda x: x)
    if case == "loss_only":

        def f(s, z1, z2):
            return losses.nce(cast(s)) + losses.focal_infonce(cast(z1), cast(z2), TEMPERATURE, MARGIN)

        args, argnums = (v["scores"], v["z1"], v["z2"]), (0, 1, 2)
    elif case == "scorer_only":

        def f(q, d, qm, dm):
            return jnp.sum(scorers.sum_of_max(cast(q), cast(d), qm, dm))

        args, argnums = (v["q"], v["d"], v["q_mask"], v["d_mask"]), (0, 1)
    else:
        raise ValueError(f"case: expected one of {MICRO_CASES}, got {case!r}")
    loss_check = float(jax.jit(f)(*args))
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(f, argnums=argnums)).lower(*args).compile()
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = compiled(*args)
        jax.block_until_ready(out)

    device, peak = harness.jax_device()
    info = {"xla_flops_per_step": harness.xla_flops(compiled), "compiled_shapes": 1}
    return harness.Prepared(run, loss_check, compile_s, info, device, peak)


def encoder_batch(config, batch_size: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] w_1 … w_{L−2} [SEP] with random word pieces, every sequence ``length`` real tokens (RoBERTa: 0 … 2)."""
    if length > config.max_length:
        raise ValueError(f"length: expected at most {config.max_length} for this encoder, got {length}")
    rng = np.random.default_rng(seed)
    bos, eos, low = (0, 2, 4) if config.model_type == "roberta" else (inputs.CLS, inputs.SEP, inputs.FIRST_WORD)
    ids = rng.integers(low, config.vocab_size, size=(batch_size, length)).astype(np.int32)
    ids[:, 0], ids[:, -1] = bos, eos
    return ids, np.ones_like(ids, dtype=bool)


def encoder_pass(
    *, checkpoint: str, dtype: str, batch_size: int, length: int, seed: int = 0, backward: bool = False
) -> harness.Prepared:
    """The encoder alone on one batch (:func:`encoder_batch`): a jitted forward pass, or forward and backward
    (the gradient of Σ hidden states with respect to every parameter). ``info["output"]``: the forward output."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from hnjax import models  # noqa: PLC0415
    from hnjax.models import flops  # noqa: PLC0415

    model, params = models.from_pretrained(checkpoint, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    ids, mask = (jnp.asarray(x) for x in encoder_batch(model.config, batch_size, length, seed))
    forward = lambda p: model.apply({"params": p}, ids, mask)  # noqa: E731
    fn = jax.grad(lambda p: jnp.sum(forward(p))) if backward else forward
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params).compile()
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = compiled(params)
        jax.block_until_ready(out)

    info = {
        "model_flops_per_step": flops.encoder_flops(model.config, batch_size, length, training=backward),
        "xla_flops_per_step": harness.xla_flops(compiled),
        "output_sample": np.asarray(jax.jit(forward)(params))[0, :2, :4].tolist(),
    }
    device, peak = harness.jax_device()
    return harness.Prepared(run, None, compile_s, info, device, peak)
