"""Tests of hnjax.mining: index backends against NumPy exact search, save/load integrity, and the Miner's recipes."""

import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_close, assert_same_ranking
from scipy import stats

from hnjax import mining
from hnjax.mining import device
from hnjax.mining import miner as miner_lib

N, D, Q = 2000, 32, 100


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait on a busy machine: one thread keeps these small tests fast and stable."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n, d, n_centres, noise, seed):
    """Unit vectors around random unit centres (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(N + Q, D, 40, 0.5, seed=0)
    return x[:N], x[N:]


def all_scores(q, x, metric="ip"):
    """[Q, N] float64 reference scores."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return q @ x.T


def numpy_top_k(q, x, k, metric="ip"):
    s = all_scores(q, x, metric)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def recall(found, ref):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, ref)])


# ---------------------------------------------------------------------------------------------------------------------
# Index backends
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["exact", "flat"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_exact_backends_match_numpy(backend, metric):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, D)).astype(np.float32)  # unnormalised: ip and cosine rank differently
    q = rng.standard_normal((Q, D)).astype(np.float32)
    ids = rng.permutation(10 * N)[:N]  # external ids
    params = {"corpus_block": 300, "query_block": 64} if backend == "exact" else {}
    index = mining.make_index(backend, metric=metric, **params).build(x, ids)
    scores, found = index.search(q, 20)
    ref_s, ref_pos = numpy_top_k(q, x, 20, metric)
    position = dict(zip(ids.tolist(), range(N)))
    assert_same_ranking(np.vectorize(position.get)(found), ref_pos, all_scores(q, x, metric))
    assert_close(scores, ref_s)
    assert scores.dtype == np.float32 and found.dtype == np.int64


def test_device_exact_sharded_over_devices_equals_numpy(metric="cosine"):
    assert jax.device_count() == 8
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1001, D)).astype(np.float32)  # not a multiple of 8 devices x block
    q = rng.standard_normal((40, D)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",))
    sharded = mining.DeviceIndex(metric=metric, corpus_block=50, query_block=16, mesh=mesh).build(x)
    assert len(sharded._blocks.sharding.device_set) == 8
    scores, ids = sharded.search(q, 70)  # k larger than a block
    ref_s, ref_pos = numpy_top_k(q, x, 70, metric)
    assert_same_ranking(ids, ref_pos, all_scores(q, x, metric))
    assert_close(scores, ref_s)
    single = mining.DeviceIndex(metric=metric, corpus_block=50, query_block=16).build(x)
    assert_same_ranking(single.search(q, 70)[1], ids, all_scores(q, x, metric))


def test_device_exact_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((500, D)), jnp.bfloat16)
    q = jnp.asarray(rng.standard_normal((10, D)), jnp.bfloat16)
    scores, found = mining.make_index("exact", corpus_block=128).build(x).search(q, 5)
    q32, x32 = np.asarray(q, np.float32), np.asarray(x, np.float32)
    ref_s, ref_pos = numpy_top_k(q32, x32, 5)
    assert_close(scores, ref_s)  # the bf16 values are exact in float32: only float32 accumulation differs
    assert_same_ranking(found, ref_pos, all_scores(q32, x32))


def test_device_exact_compiles_once_per_shape(data):
    x, q = data
    index = mining.make_index("exact", corpus_block=512, query_block=32).build(x)
    fn = device._blocked_top_k
    fn.clear_cache()
    for n_queries in (1, 7, 32, 33, 100):  # all padded to whole blocks of 32 queries
        index.search(q[:n_queries], 16)
    assert fn._cache_size() == 1
    index.search(q, 8)  # a new k is a new shape
    assert fn._cache_size() == 2


def test_approximate_backends_meet_stated_recall(data):
    """Stated recall@10 on clustered 2,000 x 32 data (seed 0): >= 0.95 for each backend's documented setting."""
    x, q = data
    _, ref = numpy_top_k(q, x, 10)
    settings = {
        "approx": dict(recall_target=0.95),
        "hnsw": dict(M=32, ef_search=128),
        "ivf": dict(nlist=32, nprobe=8),
        "ivfpq": dict(nlist=32, nprobe=8, pq_m=8, rerank=8),
    }
    for backend, params in settings.items():
        _, found = mining.make_index(backend, **params).build(x).search(q, 10)
        assert recall(found, ref) >= 0.95, backend


def test_ivf_search_params_trade_recall(data):
    x, q = data
    _, ref = numpy_top_k(q, x, 10)
    index = mining.make_index("ivf", nlist=32, nprobe=1).build(x)
    low = recall(index.search(q, 10)[1], ref)
    index.set_search_params(nprobe=32)  # every list: exhaustive
    assert_same_ranking(index.search(q, 10)[1], ref, all_scores(q, x))
    assert low < 1.0


@pytest.mark.parametrize("backend", ["exact", "flat", "hnsw"])
def test_k_larger_than_corpus_is_padded(backend):
    x = np.eye(3, 4, dtype=np.float32)
    scores, ids = mining.make_index(backend).build(x, np.array([7, 8, 9])).search(x[:2], 5)
    # query 0 scores [1, 0, 0] against ids [7, 8, 9], query 1 [0, 1, 0]: the two zeros may come in either order
    assert ids[0, 0] == 7 and sorted(ids[0, 1:3]) == [8, 9]
    assert ids[1, 0] == 8 and sorted(ids[1, 1:3]) == [7, 9]
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    np.testing.assert_array_equal(scores[:, :3], [[1, 0, 0], [1, 0, 0]])  # one-hot vectors: exact in float32


@pytest.mark.parametrize("backend", ["exact", "flat"])
def test_bad_inputs_raise_clear_errors(backend):
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="empty"):
        mining.make_index(backend).build(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="duplicates"):
        mining.make_index(backend).build(x, np.r_[np.arange(49), 3])
    with pytest.raises(ValueError, match="NaN"):
        mining.make_index(backend).build(np.where(np.arange(8) == 3, np.nan, x).astype(np.float32))
    with pytest.raises(ValueError, match="dtype"):
        mining.make_index(backend).build(x.astype(np.int32))
    with pytest.raises(ValueError, match="non-zero"):
        mining.make_index(backend, metric="cosine").build(np.vstack([x, np.zeros((1, 8), np.float32)]))
    with pytest.raises(RuntimeError, match="before build"):
        mining.make_index(backend).search(x, 3)
    index = mining.make_index(backend).build(x)
    with pytest.raises(ValueError, match="width D = 8"):
        index.search(np.ones((2, 9), np.float32), 3)
    with pytest.raises(ValueError, match="dtype"):
        index.search(x.astype(np.float64), 3)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        index.search(x, 0)
    with pytest.raises(ValueError, match="metric"):
        mining.make_index(backend, metric="l2")


def test_faiss_rejects_non_float32():
    with pytest.raises(ValueError, match="float32"):
        mining.make_index("flat").build(np.ones((4, 8), np.float16))


@pytest.mark.parametrize("backend", ["exact", "flat", "ivf"])
def test_save_load_roundtrip_and_corruption(tmp_path, data, backend):
    x, q = data
    params = {"nlist": 16, "nprobe": 4} if backend == "ivf" else {}
    index = mining.make_index(backend, metric="cosine", **params).build(x, np.arange(N) + 5)
    path = str(tmp_path / "index.zip")
    index.save(path, fingerprint="step=10")
    restored = mining.make_index(backend, metric="cosine", **params).load(path, fingerprint="step=10")
    for a, b in zip(index.search(q, 10), restored.search(q, 10)):
        np.testing.assert_array_equal(a, b)
    # mismatched: other metric, other backend parameters, other fingerprint
    with pytest.raises(ValueError, match="does not match"):
        mining.make_index(backend, metric="ip", **params).load(path)
    with pytest.raises(ValueError, match="does not match"):
        mining.make_index("hnsw" if backend != "hnsw" else "flat", metric="cosine").load(path)
    with pytest.raises(ValueError, match="fingerprint"):
        mining.make_index(backend, metric="cosine", **params).load(path, fingerprint="step=20")
    # corrupted: one flipped byte in the stored vectors (rewritten with a valid zip structure), or a truncated file
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n.endswith(".bin") and n != "ids.bin")
    blob = bytearray(members[name])
    blob[len(blob) // 2] ^= 0xFF
    members[name] = bytes(blob)
    bad = str(tmp_path / "bad.zip")
    with zipfile.ZipFile(bad, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(ValueError, match="corrupted"):
        mining.make_index(backend, metric="cosine", **params).load(bad)
    with open(path, "rb") as f:
        head = f.read(1000)
    with open(bad, "wb") as f:
        f.write(head)
    with pytest.raises(ValueError, match="corrupted"):
        mining.make_index(backend, metric="cosine", **params).load(bad)


def numpy_som(q, qm, d, dm):
    """s[b, n] = sum over real query tokens i of max over real doc tokens j of <q_bi, d_nj> (float64)."""
    sim = np.einsum("bid,njd->bnij", q.astype(np.float64), d.astype(np.float64))
    sim = np.where(dm[None, :, None, :], sim, -np.inf).max(-1)
    return np.where(qm[:, None, :], sim, 0.0).sum(-1)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_multivector_exhaustive_shortlist_is_exact_som(pooling):
    rng = np.random.default_rng(3)
    d = rng.standard_normal((120, 6, 8)).astype(np.float32)
    dm = rng.random((120, 6)) < 0.7
    dm[:, 0] = True
    q = rng.standard_normal((9, 4, 8)).astype(np.float32)
    qm = rng.random((9, 4)) < 0.7
    qm[:, 0] = True
    index = mining.MultiVectorIndex(mining.make_index("flat"), shortlist=120, pooling=pooling)
    scores, ids = index.build((d, dm), np.arange(120) + 1000).search((q, qm), 10)
    ref = numpy_som(q, qm, d, dm)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    assert_same_ranking(ids - 1000, order, ref)
    assert_close(scores, np.take_along_axis(ref, order, axis=1))
    # a short shortlist still returns SOM scores of real documents, sorted
    short = mining.MultiVectorIndex(mining.make_index("flat"), shortlist=30, pooling=pooling).build((d, dm))
    s2, i2 = short.search((q, qm), 10)
    assert_close(s2, np.take_along_axis(ref, i2, axis=1))
    assert (np.diff(s2, axis=1) <= 0).all()
    with pytest.raises(ValueError, match="no real token"):
        index.build((d, np.zeros_like(dm)))


# ---------------------------------------------------------------------------------------------------------------------
# Miner
# ---------------------------------------------------------------------------------------------------------------------


@jax.jit
def linear_encoder(params, batch):
    return jnp.dot(batch, params["w"], preferred_element_type=jnp.float32)


def make_gold(n_queries, n_docs, seed, max_gold=3):
    rng = np.random.default_rng(seed)
    return [set(rng.choice(n_docs, rng.integers(1, max_gold + 1), replace=False).tolist()) for _ in range(n_queries)]


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(4)
    docs = clustered(600, 16, 10, 0.6, seed=5)
    queries = clustered(80, 16, 10, 0.6, seed=6)
    gold = make_gold(80, 600, seed=7)
    params = {"w": jnp.asarray(np.eye(16) + 0.1 * rng.standard_normal((16, 16)), jnp.float32)}
    return docs, queries, gold, params


def reference_scores(task):
    docs, queries, _, params = task
    w = np.asarray(params["w"], np.float64)
    return (queries @ w) @ (docs @ w).T  # [Q, N]


@pytest.mark.parametrize("recipe", ["hard", "random", "mixed", "model"])
def test_gold_never_in_negatives_and_no_duplicates(task, recipe):
    docs, queries, gold, params = task
    miner = mining.Miner(linear_encoder, docs, queries, gold, index="flat", recipe=recipe, num_negatives=12, seed=0,
                         batch_size=64, progress=False)  # fmt: skip
    miner.refresh(params, step=0)
    ids, log_q = miner.candidates(np.arange(80))
    assert ids.shape == (80, 12) and miner.table.shape == (80, 12)
    for row, g in zip(ids, gold):
        assert not set(row.tolist()) & g
        assert len(set(row.tolist())) == 12
        assert ((row >= 0) & (row < 600)).all()
    assert (log_q is not None) == (recipe == "model")


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_mixed_counts_and_hard_part_is_top_of_allowed(task, share):
    docs, queries, gold, params = task
    k = 8
    miner = mining.Miner(linear_encoder, docs, queries, gold, index="exact", num_negatives=k, seed=1, progress=False,
                         recipe=mining.Recipe("mixed", hard_share=share))  # fmt: skip
    miner.refresh(params, step=3)
    n_hard = int(np.floor(k * share + 0.5))
    s = reference_scores(task)
    for i, g in enumerate(gold):
        allowed = np.array([j for j in np.argsort(-s[i], kind="stable") if j not in g])
        assert_same_ranking(miner.table[i : i + 1, :n_hard], allowed[None, :n_hard], s[i : i + 1])
        rest = miner.table[i, n_hard:]
        assert len(rest) == k - n_hard and not set(rest.tolist()) & (g | set(allowed[:n_hard].tolist()))


def test_mixed_random_part_is_redrawn_every_refresh(task):
    docs, queries, gold, params = task
    miner = mining.Miner(linear_encoder, docs, queries, gold, index="flat", num_negatives=8, seed=0, progress=False)
    miner.refresh(params, step=0)
    first = miner.table.copy()
    miner.refresh(params, step=100)
    np.testing.assert_array_equal(first[:, :4], miner.table[:, :4])  # same parameters: same hard part
    assert (first[:, 4:] != miner.table[:, 4:]).mean() > 0.9


def test_model_recipe_follows_stated_q():
    """Every query has the same vector, so each row is an independent draw; column 0 of a Gumbel top-k sample is
    distributed as q = softmax(s / T) over the allowed shortlist (gold and out-of-shortlist documents get 0)."""
    rng = np.random.default_rng(8)
    docs = rng.standard_normal((30, 4)).astype(np.float32)
    n_q, temperature = 4000, 0.7
    queries = np.repeat(rng.standard_normal((1, 4)).astype(np.float32), n_q, axis=0)
    gold = [{2, 5}] * n_q
    miner = mining.Miner(lambda p, b: b, docs, queries, gold, index="flat", num_negatives=3, shortlist=10,
                         recipe=mining.Recipe("model", temperature=temperature), seed=0, progress=False)  # fmt: skip
    miner.refresh(None, step=0)
    ids, log_q = miner.candidates(np.arange(n_q))
    s = docs.astype(np.float64) @ queries[0].astype(np.float64)
    shortlist = np.argsort(-s, kind="stable")[:12]  # S = 10 + max |gold|
    allowed = np.array([j for j in shortlist if j not in (2, 5)])
    q = np.exp(s[allowed] / temperature - np.max(s[allowed] / temperature))
    q /= q.sum()
    assert set(ids.ravel().tolist()) <= set(allowed.tolist())
    lookup = dict(zip(allowed.tolist(), np.log(q)))
    assert_close(log_q, np.vectorize(lookup.get)(ids))
    counts = np.array([(ids[:, 0] == j).sum() for j in allowed])
    assert stats.chisquare(counts, q * n_q).pvalue > 1e-3


def test_random_recipe_is_uniform_over_non_gold():
    n_docs, n_q = 20, 3000
    docs = np.eye(n_docs, 4, dtype=np.float32) + 1
    gold = [{0, 7}] * n_q
    miner = mining.Miner(lambda p, b: b, docs, np.ones((n_q, 4), np.float32), gold, index="flat", recipe="random",
                         num_negatives=4, seed=0, progress=False)  # fmt: skip
    miner.refresh(None, step=0)
    counts = np.bincount(miner.table.ravel(), minlength=n_docs)
    assert counts[0] == counts[7] == 0
    allowed = np.delete(counts, [0, 7])
    assert stats.chisquare(allowed).pvalue > 1e-3


def test_uniform_excluding_maps_past_excluded_ids():
    rng = np.random.default_rng(0)
    out = miner_lib.uniform_excluding(rng, 10, np.array([9, 0, 3, 3]), 7)
    assert sorted(out.tolist()) == [1, 2, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="only 7"):
        miner_lib.uniform_excluding(rng, 10, np.array([0, 3, 9]), 8)


def test_false_negative_guard(task):
    """Golds at ranks 0 and 3: the guard must drop ranks 1-2 (they beat the weaker gold) and near-ties within m."""
    docs, queries, _, params = task
    s = reference_scores(task)
    ranked = np.argsort(-s, axis=1, kind="stable")
    gold = [{int(r[0]), int(r[3])} for r in ranked]
    margin = 0.02
    miner = mining.Miner(linear_encoder, docs, queries, gold, index="flat", num_negatives=6, seed=0, progress=False,
                         recipe=mining.Recipe("hard", false_negative_margin=margin))  # fmt: skip
    miner.refresh(params, step=0)
    for i, g in enumerate(gold):
        gold_min = min(s[i, j] for j in g)
        allowed = [j for j in ranked[i] if j not in g and s[i, j] <= gold_min - margin]
        assert ranked[i][1] not in miner.table[i] and ranked[i][2] not in miner.table[i]
        assert_same_ranking(miner.table[i : i + 1], np.array(allowed[:6])[None], s[i : i + 1])
    unguarded = mining.Miner(linear_encoder, docs, queries, gold, index="flat", num_negatives=6, recipe="hard",
                             progress=False)  # fmt: skip
    unguarded.refresh(params, step=0)
    assert_same_ranking(unguarded.table[:, :2], ranked[:, 1:3], s)


def test_multi_vector_miner_matches_som_reference():
    rng = np.random.default_rng(9)
    d = rng.standard_normal((60, 3, 4)).astype(np.float32)
    q = rng.standard_normal((10, 2, 4)).astype(np.float32)
    gold = make_gold(10, 60, seed=10, max_gold=2)
    index = mining.MultiVectorIndex(mining.make_index("flat"), shortlist=60)
    encode = lambda p, b: (b, np.ones(b.shape[:2], bool))
    miner = mining.Miner(encode, d, q, gold, index=index, recipe="hard", num_negatives=5, seed=0, progress=False)
    miner.refresh(None, step=0)
    ref = numpy_som(q, np.ones((10, 2), bool), d, np.ones((60, 3), bool))
    for i, g in enumerate(gold):
        allowed = [j for j in np.argsort(-ref[i], kind="stable") if j not in g]
        assert_same_ranking(miner.table[i : i + 1], np.array(allowed[:5])[None], ref[i : i + 1])


def test_async_refresh_equals_sync_and_swaps_atomically(task):
    docs, queries, gold, params = task
    make = lambda fn, asynchronous: mining.Miner(fn, docs, queries, gold, index="flat", recipe="mixed",
                                                 num_negatives=8, refresh_every=10, seed=3, progress=False,
                                                 asynchronous=asynchronous)  # fmt: skip
    params2 = {"w": params["w"] @ params["w"]}
    sync = make(linear_encoder, False)
    assert sync.maybe_refresh(params, step=0, epoch=0)
    assert not sync.maybe_refresh(params, step=5, epoch=0)
    assert sync.maybe_refresh(params2, step=10, epoch=0)

    gate = threading.Event()
    blocking = lambda p, b: (gate.wait(30), linear_encoder(p, b))[1]
    gate.set()
    asy = make(blocking, True)
    assert asy.maybe_refresh(params, step=0, epoch=0)  # first refresh is synchronous
    old = asy.table.copy()
    gate.clear()
    live = {"w": jnp.array(params2["w"], copy=True)}
    assert asy.maybe_refresh(live, step=10, epoch=0)
    live["w"].delete()  # the training loop may donate its buffers: the miner must have copied them
    assert not asy.maybe_refresh(params, step=20, epoch=0)  # one refresh in flight at a time
    np.testing.assert_array_equal(asy.candidates(np.arange(80))[0], old)  # training continues on the old table
    gate.set()
    asy.wait()
    np.testing.assert_array_equal(asy.table, sync.table)
    assert asy.last_refresh_step == 10 and not np.array_equal(asy.table, old)


def test_async_errors_surface():
    def broken(p, b):
        if p == "bad":
            raise RuntimeError("encoder exploded")
        return b

    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    miner = mining.Miner(broken, x, x[:5], [{i} for i in range(5)], index="flat", recipe="hard", num_negatives=3,
                         refresh_every=1, asynchronous=True, progress=False)  # fmt: skip
    miner.maybe_refresh("ok", step=0, epoch=0)
    miner.maybe_refresh("bad", step=1, epoch=0)
    with pytest.raises(RuntimeError, match="asynchronous refresh failed"):
        miner.wait()


def test_epoch_schedule_and_state_dict_resume(task):
    docs, queries, gold, params = task
    make = lambda: mining.Miner(linear_encoder, docs, queries, gold, index="flat", recipe="model", num_negatives=6,
                                seed=11, progress=False)  # fmt: skip
    a = make()
    with pytest.raises(RuntimeError, match="refresh"):
        a.candidates([0])
    assert a.maybe_refresh(params, step=0, epoch=0)
    assert not a.maybe_refresh(params, step=7, epoch=0)
    assert a.maybe_refresh(params, step=8, epoch=1)
    state = a.state_dict()
    for v in state.values():
        assert isinstance(v, (int, np.ndarray))
    b = make()
    b.load_state_dict(state)
    for x, y in zip(a.candidates(np.arange(5)), b.candidates(np.arange(5))):
        np.testing.assert_array_equal(x, y)
    assert not b.maybe_refresh(params, step=9, epoch=1)  # schedule resumes where it stopped
    a.maybe_refresh(params, step=16, epoch=2)
    b.maybe_refresh(params, step=16, epoch=2)
    np.testing.assert_array_equal(a.table, b.table)
    other = mining.Miner(linear_encoder, docs, queries[:10], gold[:10], index="flat", num_negatives=6)
    with pytest.raises(ValueError, match="table shape"):
        other.load_state_dict(state)


def test_miner_validates_inputs(task):
    docs, queries, gold, _ = task
    with pytest.raises(ValueError, match="gold id 600"):
        mining.Miner(linear_encoder, docs, queries, [{600}] * 80, index="flat", num_negatives=4)
    with pytest.raises(ValueError, match="one gold set per query"):
        mining.Miner(linear_encoder, docs, queries, gold[:5], index="flat", num_negatives=4)
    with pytest.raises(ValueError, match="non-gold documents"):
        mining.Miner(linear_encoder, docs[:10], queries, [{0, 1}] * 80, index="flat", num_negatives=9)
    with pytest.raises(ValueError, match="recipe.kind"):
        mining.Recipe("hardest")
    with pytest.raises(ValueError, match="metric"):
        mining.Miner(linear_encoder, docs, queries, gold, index="flat", num_negatives=4, metric="l2")
    single = mining.Miner(
        lambda p, b: b, docs, docs[:50], list(range(50)), index="flat", recipe="hard", num_negatives=4, progress=False
    )  # fmt: skip  (one int gold per query)
    single.refresh(None, step=0)
    assert not (single.table == np.arange(50)[:, None]).any()


def test_encode_pads_last_batch_to_one_shape():
    calls = []

    def fn(p, batch):
        calls.append(batch["x"].shape)
        return batch["x"] * 2

    out = mining.encode(fn, None, {"x": np.arange(10, dtype=np.float32)[:, None]}, batch_size=4, progress=False)
    assert calls == [(4, 1)] * 3
    np.testing.assert_array_equal(out[:, 0], 2 * np.arange(10))


def test_auto_backend_is_exact_search_on_cpu(task):
    assert jax.default_backend() == "cpu" and mining.default_backend(10**6) == "flat"
    docs, queries, gold, params = task
    auto = mining.Miner(linear_encoder, docs, queries, gold, recipe="hard", num_negatives=5, progress=False)
    auto.refresh(params, step=0)
    s = reference_scores(task)
    for i, g in enumerate(gold):
        allowed = [j for j in np.argsort(-s[i], kind="stable") if j not in g]
        assert_same_ranking(auto.table[i : i + 1], np.array(allowed[:5])[None], s[i : i + 1])
