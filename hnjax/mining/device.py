"""Device backends: exact (blocked matmul + ``lax.top_k``) and approximate (``lax.approx_max_k``) search in JAX.

The corpus lives on the JAX device(s) as blocks ``[N/Bn, Bn, D]``; one jit-compiled ``lax.scan`` computes one
``[Bq, Bn]`` score block at a time (float32 accumulation), keeps its top-k and merges it into a running top-k, so a
``[Q, N]`` matrix is never materialised. Compiled once per (query block, corpus block, k) shape; queries are padded
to whole query blocks. With a ``mesh`` the blocks are sharded over devices and merged by an all-gather of k
candidates per device.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from hnjax import scorers
from hnjax.data import batching
from hnjax.mining import index as index_lib


def _scan_top_k(queries, blocks, valid, offsets, *, k: int, approx: bool, recall_target: float):
    """Running top-k over corpus blocks (``lax.scan``): never more than one ``[Bq, Bn]`` score block at a time.

    Args:
      queries: ``[Bq, D]``.
      blocks: corpus ``[nb, Bn, D]``.
      valid: bool ``[nb, Bn]``, False on padding rows.
      offsets: int32 ``[nb]``, corpus position of each block's first row.

    Returns:
      scores float32 ``[Bq, k]`` (descending) and positions int32 ``[Bq, k]``.
    """
    _, block, _ = blocks.shape
    kb = min(k, block)
    bq = queries.shape[0]

    def step(carry, xs):
        best_s, best_i = carry  # [Bq, k]
        docs, ok, offset = xs
        s = jnp.einsum("qd,nd->qn", queries, docs, preferred_element_type=jnp.float32)  # [Bq, Bn]
        s = jnp.where(ok[None, :], s, -jnp.inf)
        if approx:
            bs, bi = jax.lax.approx_max_k(s, kb, recall_target=recall_target)
        else:
            bs, bi = jax.lax.top_k(s, kb)
        cat_s = jnp.concatenate([best_s, bs], axis=1)  # [Bq, k + kb]
        cat_i = jnp.concatenate([best_i, bi.astype(jnp.int32) + offset], axis=1)
        top_s, where = jax.lax.top_k(cat_s, k)
        return (top_s, jnp.take_along_axis(cat_i, where, axis=1)), None

    init = (jnp.full((bq, k), -jnp.inf, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
    (scores, pos), _ = jax.lax.scan(step, init, (blocks, valid, offsets))
    return scores, pos


@functools.partial(jax.jit, static_argnames=("k", "cosine", "approx", "recall_target", "mesh"))
def _blocked_top_k(
    queries, blocks, valid, offsets, *, k: int, cosine: bool, approx: bool, recall_target: float, mesh=None
):
    """Top-k of ``queries`` [Bq, D] over the corpus blocks, on one device or sharded over ``mesh``'s first axis.

    Sharded: each device scans its own blocks, the per-device top-k lists are all-gathered ([Bq, n_dev·k]) and
    merged by one more top-k, so only k candidates per query and device cross the interconnect.

    Returns:
      scores float32 ``[Bq, k]`` and positions int32 ``[Bq, k]`` (-1 where fewer than k valid rows exist).
    """
    if cosine:
        queries = scorers.l2_normalize(queries).astype(queries.dtype)
    scan = functools.partial(_scan_top_k, k=k, approx=approx, recall_target=recall_target)
    if mesh is None:
        scores, pos = scan(queries, blocks, valid, offsets)
    else:
        axis = mesh.axis_names[0]

        def local(q, b, v, o):
            s, p = scan(q, b, v, o)  # [Bq, k] of this device's shard
            s = jax.lax.all_gather(s, axis, axis=1, tiled=True)  # [Bq, n_dev * k]
            p = jax.lax.all_gather(p, axis, axis=1, tiled=True)
            top, where = jax.lax.top_k(s, k)
            return top, jnp.take_along_axis(p, where, axis=1)

        spec = jax.sharding.PartitionSpec
        scores, pos = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(spec(), spec(axis), spec(axis), spec(axis)),
            out_specs=(spec(), spec()),
            check_vma=False,  # outputs are identical on every device after the all-gather
        )(queries, blocks, valid, offsets)
    return scores, jnp.where(jnp.isneginf(scores), -1, pos)


class DeviceIndex(index_lib.Index):
    """Exact (``approx=False``) or ``lax.approx_max_k`` (``approx=True``) search on the default JAX device.

    The corpus is stored as ``[ceil(N/Bn), Bn, D]`` blocks; one jit-compiled ``lax.scan`` per query block of
    ``Bq`` queries keeps a running top-k, so peak device memory for scores is ``Bq · Bn`` floats.

    Args:
      metric: ``"ip"`` or ``"cosine"``.
      approx: use ``lax.approx_max_k`` per corpus block.
      recall_target: recall target of ``approx_max_k`` (only approximate on TPU; exact elsewhere).
      query_block: Bq, queries per compiled call (queries are padded up to a multiple).
      corpus_block: Bn, documents per scored block.
    """

    accepted_dtypes = index_lib.DEVICE_DTYPES

    def __init__(
        self,
        *,
        metric: str = "ip",
        approx: bool = False,
        recall_target: float = 0.95,
        query_block: int = 256,
        corpus_block: int = 16384,
        mesh: jax.sharding.Mesh | None = None,
    ):
        super().__init__(metric=metric)
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target: expected a value in (0, 1], got {recall_target}")
        if query_block < 1 or corpus_block < 1:
            raise ValueError(f"query_block, corpus_block: expected >= 1, got {query_block}, {corpus_block}")
        self.approx, self.recall_target = bool(approx), float(recall_target)
        self.query_block, self.corpus_block = int(query_block), int(corpus_block)
        self.backend = "approx" if approx else "exact"
        self.mesh = mesh
        self._blocks = self._valid = self._offsets = None

    def config(self) -> dict:
        cfg = super().config()
        if self.approx:
            cfg["recall_target"] = self.recall_target
        return cfg

    def _build(self, vectors) -> None:
        x = jnp.asarray(vectors)
        if self.metric == "cosine":
            index_lib.check_cosine_rows(x, name="vectors")
            x = scorers.l2_normalize(x).astype(x.dtype)
        self._set_blocks(x)

    def _set_blocks(self, x: jax.Array) -> None:
        n = x.shape[0]
        n_dev = 1 if self.mesh is None else self.mesh.shape[self.mesh.axis_names[0]]
        block = min(self.corpus_block, -(-n // n_dev))
        n_blocks = -(-math.ceil(n / block) // n_dev) * n_dev  # a whole number of blocks per device
        pad = n_blocks * block - n
        blocks = jnp.pad(x, ((0, pad), (0, 0))).reshape(n_blocks, block, x.shape[1])
        valid = (jnp.arange(n_blocks * block) < n).reshape(n_blocks, block)
        offsets = jnp.arange(n_blocks, dtype=jnp.int32) * block
        if self.mesh is not None:
            shard = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.mesh.axis_names[0]))
            blocks, valid, offsets = jax.device_put((blocks, valid, offsets), shard)
        self._blocks, self._valid, self._offsets = blocks, valid, offsets

    def _search(self, queries, k: int):
        q = jnp.asarray(queries)
        if self.metric == "cosine":
            index_lib.check_cosine_rows(q, name="queries")  # the compiled search normalises
        out_s, out_i = [], []
        for take, n_real in batching.padded_batches(q.shape[0], self.query_block):  # one compiled shape
            s, i = _blocked_top_k(
                q[take],
                self._blocks,
                self._valid,
                self._offsets,
                k=k,
                cosine=self.metric == "cosine",
                approx=self.approx,
                recall_target=self.recall_target,
                mesh=self.mesh,
            )
            out_s.append(np.asarray(s)[:n_real])
            out_i.append(np.asarray(i)[:n_real])
        return np.concatenate(out_s), np.concatenate(out_i)

    def _arrays(self) -> dict:
        n = self.size
        flat = np.asarray(self._blocks).reshape(-1, self.dim)[:n]
        return {"vectors": flat}

    def _from_arrays(self, arrays: dict) -> None:
        self._set_blocks(jnp.asarray(arrays["vectors"]))  # stored already normalised
