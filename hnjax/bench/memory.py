"""Memory of the in-batch losses: XLA's memory analysis and the process's peak memory, dense vs blockwise, and the
memory/time trade of GradCache (``experiments/bench_memory.py``)."""

from __future__ import annotations

import functools
import logging
import statistics
import time

from hnjax.bench import harness

logger = logging.getLogger(__name__)
GIB = 1024**3


def inbatch_loss(
    *,
    method: str,
    batch: int,
    dim: int,
    loss: str = "infonce",
    temperature: float = 0.05,
    block_size: int = 2048,
    row_block_size: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    limit_gib: float = 16.0,
) -> dict:
    """Value and gradient of an in-batch loss over random [B, D] views: compile, read XLA's memory analysis and, when
    its peak estimate is under ``limit_gib``, run once (meant for a fresh process, :func:`harness.call_in_process`).

    Args:
        method: "plain" (``hnjax.losses``, the B×B logits in memory) or "blockwise" (``hnjax.blockwise``).
        batch, dim: B and D.
        loss: "infonce" or "focal".
        temperature, block_size, row_block_size: loss settings (block sizes: blockwise only).
        dtype: dtype of the views.
        seed: seed of the views.
        limit_gib: largest peak estimate that is run.

    Returns:
        A JSON-able record: settings, ``compile_s``, the memory analysis (:func:`harness.compiled_memory`),
        ``rss_before_compile_bytes``, ``ran`` and, when run, ``run_s``, ``loss_value``, ``grad_finite``,
        ``peak_rss_bytes``.
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from hnjax import blockwise, losses  # noqa: PLC0415

    if method not in ("plain", "blockwise"):
        raise ValueError(f"method: expected 'plain' or 'blockwise', got {method!r}")
    k1, k2 = jax.random.split(jax.random.key(seed))
    z1 = jax.random.normal(k1, (batch, dim), jnp.float32)
    z2 = (z1 + jax.random.normal(k2, (batch, dim), jnp.float32)).astype(dtype)
    z1 = z1.astype(dtype)
    jax.block_until_ready((z1, z2))
    rss_before = harness.peak_rss_mb() * 2**20
    if method == "plain":
        fn = losses.infonce if loss == "infonce" else losses.focal_infonce
        loss_fn = functools.partial(fn, temperature=temperature)
    else:
        fn = blockwise.blockwise_infonce if loss == "infonce" else blockwise.blockwise_focal_infonce
        loss_fn = functools.partial(fn, temperature=temperature, block_size=block_size, row_block_size=row_block_size)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(z1, z2).compile()
    record = {
        "method": method, "batch": batch, "dim": dim, "loss_name": loss, "dtype": dtype,
        "block_size": block_size if method == "blockwise" else None,
        "row_block_size": (row_block_size or block_size) if method == "blockwise" else None,
        "compile_s": time.perf_counter() - t0, "rss_before_compile_bytes": int(rss_before),
        **harness.compiled_memory(compiled), "ran": False,
    }  # fmt: skip
    if record["peak_estimate_bytes"] > limit_gib * GIB:
        logger.info("%s B=%d would need %.2f GiB: not run", method, batch, record["peak_estimate_bytes"] / GIB)
        return record
    t0 = time.perf_counter()
    value, grads = compiled(z1, z2)
    jax.block_until_ready((value, grads))
    record.update(
        ran=True, run_s=time.perf_counter() - t0, loss_value=float(value),
        grad_finite=bool(jnp.all(jnp.isfinite(grads[0].astype(jnp.float32)))),
        peak_rss_bytes=int(harness.peak_rss_mb() * 2**20),
    )  # fmt: skip
    return record


def gradcache_overhead(
    *, batch: int, dim: int, width: int, chunks: list[int], temperature: float, block_size: int, repeats: int, seed: int
) -> list[dict]:
    """Plain value_and_grad vs ``hnjax.gradcache.grad_cache`` of a two-view MLP encoder (dropout 0.1) with the
    blockwise InfoNCE: XLA temporary memory and median step time per chunk size."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from hnjax import blockwise, gradcache  # noqa: PLC0415

    class Encoder(nn.Module):
        width: int
        out: int

        @nn.compact
        def __call__(self, x, *, train: bool):
            for _ in range(2):
                x = nn.Dropout(0.1, deterministic=not train)(nn.gelu(nn.Dense(self.width)(x)))
            return nn.Dense(self.out)(x)

    model = Encoder(width, dim)
    x = jax.random.normal(jax.random.key(seed), (batch, dim))
    params = model.init(jax.random.key(1), x[:1], train=False)
    key = jax.random.key(2)

    def encode(p, xs, k):  # two SimCSE views of the chunk, one dropout key each
        view = lambda kk: model.apply(p, xs, train=True, rngs={"dropout": kk})  # noqa: E731
        return view(jax.random.fold_in(k, 0)), view(jax.random.fold_in(k, 1))

    def loss_fn(e):
        return blockwise.blockwise_infonce(*e, temperature=temperature, block_size=block_size)

    def plain(p, xs, k):
        return jax.value_and_grad(lambda q: loss_fn(encode(q, xs, k)))(p)

    cases = [("plain", None, plain)]
    for c in chunks:
        cases.append(("grad_cache", c, functools.partial(
            lambda p, xs, k, c: gradcache.grad_cache(encode, loss_fn, p, xs, chunk_size=c, key=k), c=c)))  # fmt: skip
    records = []
    for name, chunk, fn in cases:
        compiled = jax.jit(fn).lower(params, x, key).compile()
        jax.block_until_ready(compiled(params, x, key))  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, x, key))
            times.append(time.perf_counter() - t0)
        records.append({"method": name, "chunk_size": chunk, "batch": batch, "dim": dim, "width": width,
                        "temp_bytes": harness.compiled_memory(compiled)["temp_bytes"],
                        "median_s": statistics.median(times), "times_s": times})  # fmt: skip
        logger.info("%s", records[-1])
    return records
