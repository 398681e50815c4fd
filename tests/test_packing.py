"""Packed sequences: the host packing (hnjax.data.packing) and the packed encoder path (hnjax.models.packed), which
must give the padded path's hidden states, pooled vectors, losses and parameter gradients (dropout off)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest

from hnjax import retriever, simcse
from hnjax.data import packing
from hnjax.models import bert, packed, poolers
from hnjax.train import step as step_lib

BERT = bert.EncoderConfig(
    vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=24, hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip
ROBERTA = dataclasses.replace(BERT, model_type="roberta", pad_token_id=1, type_vocab_size=1, max_position_embeddings=26)
ONE_LAYER = dataclasses.replace(BERT, num_hidden_layers=1)  # the task tests: cheaper to compile, same code paths


def _params(config, seed=0):
    """Random parameters with perturbed LayerNorms and biases, so that no term is trivially zero or one."""
    params = bert.init_params(config, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else x for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def _sequences(rng, n, lo, hi, vocab=64, pad=0):
    out = []
    for _ in range(n):
        ids = rng.integers(2, vocab, size=int(rng.integers(lo, hi + 1)))
        out.append(np.where(ids == pad, pad + 1, ids).astype(np.int32))
    return out


def _pad(seqs, length, pad_id=0, types=None):
    ids = np.full((len(seqs), length), pad_id, np.int32)
    tt = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        if types is not None:
            tt[i, : len(s)] = types[i]
    return ids, ids != pad_id, tt


def _close(got, ref, what, magnitude=None):
    """The suite's tolerance policy (tests/numerics.py): 64 float32 ulps of the largest magnitude involved (default
    max|ref|) plus 1e-5 relative."""
    numerics.assert_close(got, ref, scale=magnitude, err_msg=what)


def _grads_close(ga, gb):
    """Every gradient leaf, with the largest gradient entry of the whole tree as the magnitude: some leaves are zero
    up to rounding (the attention key bias, which the softmax cancels), so their own scale is no yardstick."""
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(ga), jax.tree_util.tree_leaves(gb)
    magnitude = max(float(np.max(np.abs(b))) for b in flat_b)
    for (path, a), b in zip(flat_a, flat_b, strict=True):
        _close(a, b, jax.tree_util.keystr(path), magnitude=magnitude)


# ------------------------------------------------------------------------------------------------------ host side


def test_first_fit_decreasing_fills_rows_without_overlap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, size=200)
    row, offset, used = packing.first_fit_decreasing(lengths, 64)
    assert row.max() + 1 == used
    occupied = np.zeros((used, 64), int)
    for r, o, n in zip(row, offset, lengths):
        occupied[r, o : o + n] += 1
    assert occupied.max() == 1 and occupied.sum() == lengths.sum()  # every token placed once, within its row
    # first-fit decreasing uses at most 11/9 OPT + 6/9 rows (Dósa 2007); OPT ≥ ⌈Σ/capacity⌉
    assert used <= 11 / 9 * np.ceil(lengths.sum() / 64) + 6 / 9


def test_first_fit_decreasing_rejects_items_longer_than_a_row():
    with pytest.raises(ValueError, match="lengths"):
        packing.first_fit_decreasing([3, 9], 8)


def test_bucket_rows_bounds_waste_and_programs():
    values = [packing.bucket_rows(n) for n in range(1, 2049)]
    assert all(v >= n for n, v in zip(range(1, 2049), values))
    assert all(v == n for n, v in zip(range(1, 33), values))
    assert max((v - n) / n for n, v in zip(range(1, 2049), values)) < 1 / 16
    assert len(set(values)) <= 32 + 16 * 6  # 32 + 16·log2(2048/32)
    assert all(a <= b for a, b in zip(values, values[1:]))  # monotone
    with pytest.raises(ValueError, match="needed"):
        packing.bucket_rows(0)


@pytest.mark.parametrize(("devices", "accum"), [(1, 1), (1, 3), (2, 1), (2, 2)])
def test_group_rows_is_what_each_device_and_micro_batch_sees(devices, accum):
    rows = 12
    batch = np.arange(rows)
    shards = batch.reshape(devices, rows // devices)  # contiguous device blocks (DataParallel)
    seen = [np.asarray(m) for shard in shards for m in step_lib.split_micro_batches(jnp.asarray(shard), accum)]
    groups = packing.group_rows(rows, devices=devices, grad_accum=accum)
    assert [g.tolist() for g in groups] == [s.tolist() for s in seen]


def _grid(p: packing.Packed, group, name):
    """The token grid of one group, rebuilt as the device does (hnjax.models.packed.grid)."""
    flat = getattr(p, name)[group].reshape(-1)
    rows = flat.size // p.row_length
    return flat[: rows * p.row_length]


def test_pack_places_every_token_of_every_sequence():
    rng = np.random.default_rng(1)
    b, k, row_length, length = 6, 3, 16, 12
    seqs = [_sequences(rng, k, 1, length) for _ in range(b)]
    types = [[rng.integers(0, 2, size=len(s)) for s in ex] for ex in seqs]
    groups = packing.group_rows(b, devices=2)
    p = packing.pack(seqs, row_length=row_length, length=length, types=types, groups=groups)
    assert p.slots.shape == p.mask.shape == (b, k, length)
    assert p.tokens.shape[0] == b and p.rows == packing.bucket_rows(p.rows)
    for group in groups:
        tokens, segs, pos, tt = (_grid(p, group, n) for n in ("tokens", "segments", "positions", "types"))
        seg_of_seq = {}
        for i in group:
            for j in range(k):
                n = len(seqs[i][j])
                slots = p.slots[i, j, :n]
                assert p.mask[i, j, :n].all() and not p.mask[i, j, n:].any()
                np.testing.assert_array_equal(tokens[slots], seqs[i][j])
                np.testing.assert_array_equal(tt[slots], types[i][j])
                np.testing.assert_array_equal(pos[slots], np.arange(n))  # positions restart per sequence
                np.testing.assert_array_equal(np.diff(slots), 1)  # contiguous
                assert len(set(slots // row_length)) == 1  # never crosses a row boundary
                assert len(set(segs[slots])) == 1 and segs[slots[0]] > 0
                seg_of_seq[(i, j)] = (slots[0] // row_length, segs[slots[0]])
        assert len(set(seg_of_seq.values())) == len(seg_of_seq)  # sequences of one row differ in segment id
        assert np.count_nonzero(segs) == sum(len(s) for i in group for s in seqs[i])  # nothing else is stored
    assert p.real_tokens == sum(len(s) for ex in seqs for s in ex) and p.stored == b * k == p.sequences
    np.testing.assert_array_equal(p.tokens[p.segments == 0], 0)


def test_pack_stores_equal_keys_once_per_group():
    rng = np.random.default_rng(2)
    pool = _sequences(rng, 5, 2, 8)
    cand = np.array([[0, 1, 2], [1, 3, 0], [4, 1, 2], [3, 4, 0]])
    p = packing.pack([[pool[c] for c in row] for row in cand], row_length=16, length=8, keys=cand.tolist())
    assert p.stored == 5 and p.sequences == 12
    assert p.real_tokens == sum(len(s) for s in pool)
    first = {}
    for (i, j), c in np.ndenumerate(cand):
        first.setdefault(c, p.slots[i, j])
        np.testing.assert_array_equal(p.slots[i, j], first[c])
    two = packing.pack([[pool[c] for c in row] for row in cand], row_length=16, length=8, keys=cand.tolist(),
                       groups=packing.group_rows(4, devices=2))  # fmt: skip
    assert two.stored == 4 + 5  # rows {0, 1} hold entities {0, 1, 2, 3}; rows {2, 3} hold {0, 1, 2, 3, 4}
    counted = packing.counts(two.segments, row_length=16, groups=packing.group_rows(4, devices=2))
    assert counted == {"real_tokens": two.real_tokens, "grid_tokens": two.grid_tokens, "stored": two.stored}


def test_pack_rejects_bad_input():
    ok = [[np.array([5, 6, 7])]]
    with pytest.raises(ValueError, match=r"sequences\[0\]\[0\]: expected 1 to 4 tokens"):
        packing.pack([[np.arange(2, 8)]], row_length=8, length=4)
    with pytest.raises(ValueError, match="expected 1 to"):
        packing.pack([[np.array([], np.int32)]], row_length=8, length=4)
    with pytest.raises(ValueError, match=r"sequences\[1\]: expected 1 sequences"):
        packing.pack(ok + [[np.array([5]), np.array([6])]], row_length=8, length=4)
    with pytest.raises(ValueError, match="rows: a group needs 3 rows"):
        packing.pack(ok + [[np.array([5, 6, 7, 8])]] + ok, row_length=4, length=4, rows=1)
    with pytest.raises(ValueError, match="groups"):
        packing.pack(ok + ok, row_length=8, length=4, groups=[np.array([0, 0])])
    with pytest.raises(ValueError, match=r"types\[0\]\[0\]"):
        packing.pack(ok, row_length=8, length=4, types=[[np.array([0, 1])]])
    with pytest.raises(ValueError, match="rows: expected a multiple"):
        packing.group_rows(6, devices=4)


# ---------------------------------------------------------------------------------------------------- device side


def _packed_and_padded(config, seqs, types, row_length, length):
    model = bert.BertModel(config)
    params = _params(config)
    p = packing.pack([[s] for s in seqs], row_length=row_length, length=length, types=[[t] for t in types],
                     pad_id=config.pad_token_id, squeeze=True)  # fmt: skip
    ids, mask, tt = _pad(seqs, length, config.pad_token_id, types)
    return model, params, p, (ids, mask, tt)


@pytest.mark.parametrize(("config", "row_length"), [(BERT, 24), (BERT, 40), (ROBERTA, 24)])
def test_packed_hidden_states_and_pools_equal_padded(config, row_length):
    rng = np.random.default_rng(3)
    seqs = _sequences(rng, 7, 1, 20, pad=config.pad_token_id)
    types = [rng.integers(0, config.type_vocab_size, size=len(s)) for s in seqs]
    model, params, p, (ids, mask, tt) = _packed_and_padded(config, seqs, types, row_length, 20)
    assert p.grid_tokens < ids.size  # the packed grid is smaller than the padded batch

    @jax.jit
    def both(params, stream, ids, mask, tt):
        flat = packed.encode(model, params, stream, row_length=row_length)
        padded = model.apply({"params": params}, ids, mask, tt)
        return packed.gather(flat, stream["slots"], stream["mask"]), packed.first(flat, stream["slots"]), padded

    got, cls, ref = both(params, p.as_batch(), ids, mask, tt)
    _close(np.asarray(got)[mask], np.asarray(ref)[mask], "real-token hidden states")
    np.testing.assert_array_equal(np.asarray(got)[~mask], 0.0)
    _close(cls, poolers.cls(ref, mask), "[CLS] vectors")
    _close(poolers.mean(got, mask), poolers.mean(ref, mask), "mean-pooled vectors")


def test_packed_gradients_equal_padded():
    rng = np.random.default_rng(4)
    seqs = _sequences(rng, 6, 2, 18)
    types = [rng.integers(0, 2, size=len(s)) for s in seqs]
    model, params, p, (ids, mask, tt) = _packed_and_padded(BERT, seqs, types, 32, 18)
    weights = jnp.asarray(rng.standard_normal((6, 18, BERT.hidden_size)), jnp.float32)

    def packed_loss(params):
        flat = packed.encode(model, params, stream, row_length=32)
        hidden = packed.gather(flat, stream["slots"], stream["mask"])
        return jnp.sum(jnp.where(mask[..., None], hidden * weights, 0.0) ** 2)

    def padded_loss(params):
        hidden = model.apply({"params": params}, ids, mask, tt)
        return jnp.sum(jnp.where(mask[..., None], hidden * weights, 0.0) ** 2)

    stream = jax.tree.map(jnp.asarray, p.as_batch())
    lp, gp = jax.jit(jax.value_and_grad(packed_loss))(params)
    lr, gr = jax.jit(jax.value_and_grad(padded_loss))(params)
    _close(lp, lr, "loss")
    _grads_close(gp, gr)


def test_packed_attention_is_confined_to_each_sequence():
    """Changing one sequence of a row leaves the hidden states of the other sequences of that row unchanged."""
    rng = np.random.default_rng(5)
    seqs = _sequences(rng, 4, 3, 6)
    model, params = bert.BertModel(BERT), _params(BERT)
    p = packing.pack([[s] for s in seqs], row_length=24, length=6, squeeze=True)
    assert p.rows == 1  # all four in one row
    other = [s.copy() for s in seqs]
    other[2][:] = (other[2] + 7) % 60 + 2
    q = packing.pack([[s] for s in other], row_length=24, length=6, squeeze=True)
    np.testing.assert_array_equal(p.slots, q.slots)
    run = jax.jit(lambda s: packed.gather(packed.encode(model, params, s, row_length=24), s["slots"], s["mask"]))
    a, b = np.asarray(run(p.as_batch())), np.asarray(run(q.as_batch()))
    np.testing.assert_array_equal(a[[0, 1, 3]], b[[0, 1, 3]])
    assert np.abs(a[2] - b[2]).max() > 1e-3


def test_packed_rows_may_exceed_the_position_table():
    """Positions restart per sequence, so rows longer than max_position_embeddings are fine."""
    rng = np.random.default_rng(6)
    seqs = _sequences(rng, 5, 10, 20)
    model, params, p, (ids, mask, tt) = _packed_and_padded(BERT, seqs, [np.zeros(len(s)) for s in seqs], 48, 20)
    got = jax.jit(lambda s: packed.gather(packed.encode(model, params, s, row_length=48), s["slots"], s["mask"]))(
        p.as_batch()
    )
    ref = model.apply({"params": params}, ids, mask, tt)
    _close(np.asarray(got)[mask], np.asarray(ref)[mask], "hidden states")


def test_bert_model_checks_packed_arguments():
    model, params = bert.BertModel(BERT), _params(BERT)
    ids = jnp.ones((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="segment_ids and position_ids"):
        model.apply({"params": params}, ids, ids > 0, segment_ids=ids)
    with pytest.raises(ValueError, match="position_ids: expected shape"):
        model.apply({"params": params}, ids, ids > 0, segment_ids=ids, position_ids=ids[:, :3])


# ------------------------------------------------------------------------------------------------- task losses


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_simcse_packed_loss_and_gradients_equal_padded(pooling):
    rng = np.random.default_rng(7)
    sentences = _sequences(rng, 6, 2, 16)
    task = simcse.SimCSE(bert.BertModel(ONE_LAYER), pooling=pooling, loss="focal", row_length=32)
    params = task.init(_params(ONE_LAYER), jax.random.key(1))
    ids, mask, _ = _pad(sentences, 16)
    padded = {"input_ids": ids, "attention_mask": mask, "valid": np.array([1, 1, 1, 1, 1, 0], bool)}
    batch = simcse.pack_batch(sentences[:5], row_length=32, length=16, rows=6)  # row 5: filler, not valid
    padded["input_ids"][5], padded["attention_mask"][5] = ids[0], mask[0]
    np.testing.assert_array_equal(batch["valid"], padded["valid"])
    grad = jax.jit(jax.value_and_grad(lambda p, b: task.loss_fn(p, b, jax.random.key(2))[0]))
    (lp, gp), (lr, gr) = grad(params, batch), grad(params, padded)
    _close(lp, lr, "loss")
    _grads_close(gp, gr)


@pytest.mark.parametrize("scorer", retriever.SCORERS)
def test_retriever_packed_loss_and_gradients_equal_padded(scorer):
    rng = np.random.default_rng(8)
    mentions, pool = _sequences(rng, 4, 2, 12), _sequences(rng, 7, 3, 14)
    cand = np.array([[0, 4, 5], [1, 4, 6], [2, 5, 6], [3, 4, 0]])
    config = retriever.RetrieverConfig(scorer=scorer, num_entity_vectors=3, num_codes=2, row_length=32)
    task = retriever.Retriever(bert.BertModel(ONE_LAYER), config)
    params = task.init(_params(ONE_LAYER), jax.random.key(1))
    batch = retriever.pack_batch(
        mentions, [[pool[c] for c in row] for row in cand], candidate_keys=cand.tolist(), row_length=32,
        mention_length=12, entity_length=14,
    )  # fmt: skip
    m_ids, m_mask, _ = _pad(mentions, 12)
    e_ids, e_mask, _ = _pad(pool, 14)
    padded = {"mention_ids": m_ids, "mention_mask": m_mask, "cand_ids": e_ids[cand], "cand_token_mask": e_mask[cand]}
    grad = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, b, jax.random.key(2))[0]))
    (lp, gp), (lr, gr) = grad(params, batch), grad(params, padded)
    _close(lp, lr, "loss")
    _grads_close(gp, gr)
    counted = packing.counts(batch["entity_segments"], row_length=32)
    assert counted["stored"] == 7 and counted["real_tokens"] == sum(len(s) for s in pool)


def test_retriever_packed_batch_through_accumulating_train_step():
    """Groups follow the step's micro-batch split: grad_accum = 2 over a packed batch gives the padded step's update."""
    import optax

    from hnjax.train import state as state_lib

    rng = np.random.default_rng(9)
    mentions, pool = _sequences(rng, 3, 2, 10), _sequences(rng, 6, 2, 10)
    cand = np.array([[0, 3, 4], [1, 3, 5], [2, 4, 5]])
    task = retriever.Retriever(bert.BertModel(ONE_LAYER), retriever.RetrieverConfig(scorer="som", row_length=16))
    params = task.init(_params(ONE_LAYER), jax.random.key(1))
    packed_batch = retriever.pack_batch(
        mentions, [[pool[c] for c in row] for row in cand], candidate_keys=cand.tolist(), row_length=16,
        mention_length=10, entity_length=10, rows=4, grad_accum=2,
    )  # fmt: skip
    m_ids, m_mask, _ = _pad(mentions + [mentions[0]], 10)
    e_ids, e_mask, _ = _pad(pool, 10)
    full = np.concatenate([cand, cand[:1]])
    padded = {"mention_ids": m_ids, "mention_mask": m_mask, "cand_ids": e_ids[full], "cand_token_mask": e_mask[full],
              "valid": np.array([1, 1, 1, 0], bool)}  # fmt: skip
    optimizer = optax.sgd(0.1)
    step = jax.jit(step_lib.make_train_step(task.loss, optimizer, grad_accum=2))
    state = state_lib.create_train_state(params, optimizer, seed=0)
    (sa, ma), (sb, mb) = step(state, packed_batch), step(state, padded)
    _close(ma["loss"], mb["loss"], "loss")
    _close(ma["grad_norm"], mb["grad_norm"], "gradient norm")
    _grads_close(sa.params, sb.params)


def test_fixed_groups_fit_one_static_shape():
    rng = np.random.default_rng(10)
    lengths = rng.integers(1, 17, size=300)
    groups = packing.fixed_groups(lengths, row_length=32, rows=5, max_sequences=12)
    np.testing.assert_array_equal(np.concatenate(groups), np.arange(300))  # every sequence once, in order
    for g in groups:
        assert 1 <= len(g) <= 12
        assert packing.first_fit_decreasing(lengths[g], 32)[2] <= 5  # what pack() will need
    assert np.mean([lengths[g].sum() for g in groups[:-1]]) > 0.7 * min(12 * lengths.mean(), 5 * 32)


def test_unpad_returns_real_tokens_and_rejects_gaps():
    ids = np.array([[5, 6, 0], [7, 0, 0]])
    seqs, types = packing.unpad(ids, ids > 0, np.ones_like(ids))
    assert [s.tolist() for s in seqs] == [[5, 6], [7]] and [t.tolist() for t in types] == [[1, 1], [1]]
    with pytest.raises(ValueError, match="row 0 has padding before real tokens"):
        packing.unpad(ids, np.array([[True, False, True], [True, False, False]]))
