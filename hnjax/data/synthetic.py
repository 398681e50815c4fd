"""A deterministic generator of Zeshel-format entity-linking data where hard negatives matter.

Each world has groups of entities that share a surface name and differ in described attributes (occupation, home
city, a carried object). A mention names an entity and, in its context, one or two of its attributes, so the gold
entity is told apart from its namesakes only by the attributes: a retriever trained on random negatives learns to
match names, and only negatives from the same name group teach it the attributes.

Harder settings (:class:`SyntheticZeshelConfig`): with ``attribute_values = n`` every namesake's occupation, city
and carried object are drawn from n values per name, so namesakes share single attributes; with ``mention_clues = c``
a mention states 1 to c of its entity's three attributes. Then some namesakes match everything a mention says, and no
model can tell them from the gold.

Layout written (the real Zeshel layout, see :mod:`hnjax.data.zeshel`, plus what the generator knows)::

    OUT/documents/<world>.json
    OUT/mentions/{train,heldout_train_seen,heldout_train_unseen,val,test}.json
    OUT/clues/<split>.jsonl     {"mention_id", "stated": {attribute: value}, "matching": [document_id, ...]}

``matching`` lists the entities that agree with everything the mention's sentence states (its name and stated
attributes), the gold among them, less the entity whose page the mention sits in (never the gold, so a reader could
rule it out). No reranker can do better than guess among the matching candidates it is given: the best expected
accuracy over a candidate list is :func:`hnjax.reranker.ceiling` of these sets (:func:`read_matching`). The bound
treats each mention on its own: mentions are spread evenly over the entities (each entity about
``mentions_per_entity`` times), which a model reading several mentions at once could in principle exploit.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from hnjax.data import zeshel

_NAMES = (
    "aldric bryn cassia dorian elowen fenris galen halvard isolde jorah kaelen liora marek nerys orin perrin quill "
    "rowan selene thane ulric vesna wren xander yara zorin anselm brielle corwin delphine emeric faye gideon hester "
    "ivo junia kestrel lucan maren niall odessa piers rhiannon soren tamsin"
).split()
_OCCUPATIONS = (
    "blacksmith sailor healer merchant scholar hunter farmer soldier priest bard miner weaver baker archer "
    "painter carpenter fisher tailor guard courier"
).split()
_CITIES = (
    "ashford brightwater coldharbor dunmore eastmarch fairhaven greystone highgate ironwood kingsbridge "
    "lakeshire millbrook northwatch oakhurst pinecrest redcliff stonebridge thornbury westvale windmere"
).split()
_OBJECTS = (
    "lantern compass dagger flute shield map ring hammer bow cloak book key staff helmet drum chalice rope "
    "banner mirror axe"
).split()
_FILLER = (
    "the old road winds past the hills and the river where travellers rest before the long winter . "
    "many stories are told in the taverns about the deeds of the past and the people who lived there . "
    "the market opens at dawn and closes when the bells ring at the end of the day . "
    "records of the council mention a great storm that destroyed the harbour walls ."
).split(" . ")
_FILLER = [s.strip(" .") for s in _FILLER]


@dataclasses.dataclass(frozen=True)
class SyntheticZeshelConfig:
    """Size and shape of the generated dataset.

    Attributes:
      train_worlds / val_worlds / test_worlds: number of worlds per split (each world's mentions go to one split).
      names_per_world: distinct surface names per world.
      namesakes: entities sharing each name (the hard negatives of one another), at most the number of
        occupations and cities (20).
      mentions_per_entity: mentions generated per entity (on average; each in another entity's page).
      filler_sentences: background sentences per entity page (makes pages longer than a mention window).
      attribute_values: 0 (default): the namesakes of a name have distinct occupations and distinct cities, and
        a mention's clues always single out its entity. n >= 2: each namesake's occupation, city and object are
        drawn from n values per name (distinct triples), so namesakes share single attributes.
      mention_clues: 0 (default): a mention states its entity's occupation, city, or both. 1..3: a mention states
        between 1 and this many of occupation, city and object, drawn uniformly.
      seed: the generator is a pure function of the config.
    """

    train_worlds: int = 2
    val_worlds: int = 1
    test_worlds: int = 1
    names_per_world: int = 25
    namesakes: int = 4
    mentions_per_entity: float = 1.0
    filler_sentences: int = 2
    attribute_values: int = 0
    mention_clues: int = 0
    seed: int = 0

    def __post_init__(self):
        for field in ("train_worlds", "val_worlds", "test_worlds", "names_per_world", "namesakes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: expected at least 1, got {getattr(self, field)}")
        if self.attribute_values == 0 and self.namesakes > min(len(_OCCUPATIONS), len(_CITIES)):
            raise ValueError(
                f"namesakes: expected at most {min(len(_OCCUPATIONS), len(_CITIES))}, got {self.namesakes}"
            )
        most = min(len(_OCCUPATIONS), len(_CITIES), len(_OBJECTS))
        if self.attribute_values != 0 and not 2 <= self.attribute_values <= most:
            raise ValueError(f"attribute_values: expected 0 or a value in [2, {most}], got {self.attribute_values}")
        if self.attribute_values and self.namesakes > self.attribute_values**3:
            raise ValueError(
                f"namesakes: expected at most attribute_values**3 = {self.attribute_values**3} (distinct attribute "
                f"triples), got {self.namesakes}"
            )
        if not 0 <= self.mention_clues <= len(_ATTRIBUTES):
            raise ValueError(f"mention_clues: expected a value in [0, {len(_ATTRIBUTES)}], got {self.mention_clues}")
        if self.names_per_world > len(_NAMES):
            raise ValueError(f"names_per_world: expected at most {len(_NAMES)}, got {self.names_per_world}")
        if self.mentions_per_entity <= 0:
            raise ValueError(f"mentions_per_entity: expected a positive value, got {self.mentions_per_entity}")
        if self.filler_sentences < 0:
            raise ValueError(f"filler_sentences: expected >= 0, got {self.filler_sentences}")


_ATTRIBUTES = ("occupation", "city", "object")
_ENDINGS = ("arrived at the gate", "joined them", "came at night")


def _namesakes(rng: np.random.Generator, name: str, cfg: SyntheticZeshelConfig) -> list[dict]:
    """The entities sharing one name."""
    if cfg.attribute_values == 0:  # the original draw order: the default config writes the same bytes as before
        occs = rng.choice(_OCCUPATIONS, size=cfg.namesakes, replace=False)
        cities = rng.choice(_CITIES, size=cfg.namesakes, replace=False)
        return [
            {"document_id": rng.bytes(8).hex().upper(), "name": name, "occupation": str(occ), "city": str(city),
             "object": str(rng.choice(_OBJECTS))}
            for occ, city in zip(occs, cities)
        ]  # fmt: skip
    pools = [rng.choice(values, size=cfg.attribute_values, replace=False) for values in (_OCCUPATIONS, _CITIES,
                                                                                          _OBJECTS)]  # fmt: skip
    triples: list[tuple[str, ...]] = []
    while len(triples) < cfg.namesakes:
        triple = tuple(str(pool[rng.integers(len(pool))]) for pool in pools)
        if triple not in triples:
            triples.append(triple)
    return [{"document_id": rng.bytes(8).hex().upper(), "name": name, **dict(zip(_ATTRIBUTES, t))} for t in triples]


def _sentence(rng: np.random.Generator, e: dict, cfg: SyntheticZeshelConfig) -> tuple[str, dict]:
    """The sentence naming entity ``e`` and the attributes it states."""
    nm, city = e["name"].capitalize(), e["city"].capitalize()
    if cfg.mention_clues == 0:
        style = int(rng.integers(3))
        if style == 0:
            return f"later the {e['occupation']} {nm} arrived at the gate .", {"occupation": e["occupation"]}
        if style == 1:
            return f"a traveller named {nm} came from {city} at night .", {"city": e["city"]}
        return f"the {e['occupation']} {nm} of {city} joined them .", {"occupation": e["occupation"], "city": e["city"]}
    n = int(rng.integers(1, cfg.mention_clues + 1))
    chosen = set(rng.choice(_ATTRIBUTES, size=n, replace=False).tolist())
    stated = {a: e[a] for a in _ATTRIBUTES if a in chosen}
    words = [f"the {stated['occupation']}" if "occupation" in stated else "a traveller named", nm]
    if "city" in stated:
        words.append(f"from {city}")
    if "object" in stated:
        words.append(f"carrying the {stated['object']}")
    return " ".join(words + [str(rng.choice(_ENDINGS)), "."]), stated


def _world(rng: np.random.Generator, name: str, cfg: SyntheticZeshelConfig):
    """Documents, mentions and clue records of one world."""
    names = rng.choice(_NAMES, size=cfg.names_per_world, replace=False)
    entities = [e for n in names for e in _namesakes(rng, str(n), cfg)]
    pages = []
    for e in entities:
        title = f"{e['name'].capitalize()} ( {e['occupation']} )"
        body = (
            f"{title} {e['name'].capitalize()} is a {e['occupation']} from {e['city'].capitalize()} who always "
            f"carries the {e['object']} ."
        )
        filler = " . ".join(rng.choice(_FILLER, size=cfg.filler_sentences)) + " ." if cfg.filler_sentences else ""
        pages.append([title, (body + " " + filler).split()])
    n_mentions = max(1, int(round(cfg.mentions_per_entity * len(entities))))
    golds = rng.permutation(np.resize(np.arange(len(entities)), n_mentions))
    mentions, clues = [], []
    for j, g in enumerate(golds):
        e = entities[g]
        host = int(rng.integers(len(entities) - 1))
        host += host >= g  # the context page is another entity's page
        words = pages[host][1]
        sentence, stated = _sentence(rng, e, cfg)
        nm = e["name"].capitalize()
        toks = sentence.split()
        pos = toks.index(nm)
        start = len(words) + pos
        words.extend(toks)
        mention_id = f"{name}-{j:05d}"
        mentions.append(
            {
                "mention_id": mention_id,
                "context_document_id": entities[host]["document_id"],
                "corpus": name,
                "start_index": start,
                "end_index": start,
                "text": nm,
                "label_document_id": e["document_id"],
                "category": "MULTIPLE_CATEGORIES",
            }
        )
        matching = [
            o["document_id"] for i, o in enumerate(entities)
            if i != host and o["name"] == e["name"] and all(o[a] == v for a, v in stated.items())
        ]  # fmt: skip
        clues.append({"mention_id": mention_id, "stated": stated, "matching": matching})
    docs = [
        {"document_id": e["document_id"], "title": title, "text": " ".join(words)}
        for e, (title, words) in zip(entities, pages)
    ]
    return docs, mentions, clues


def write_synthetic_zeshel(out: str | pathlib.Path, config: SyntheticZeshelConfig | None = None) -> pathlib.Path:
    """Writes a generated dataset in the Zeshel layout under ``out`` and returns ``out``.

    The same config always writes the same bytes.

    Example:
      >>> import tempfile
      >>> root = write_synthetic_zeshel(tempfile.mkdtemp(), SyntheticZeshelConfig(names_per_world=3))
      >>> sorted(p.name for p in (root / "mentions").iterdir())[:2]
      ['heldout_train_seen.json', 'heldout_train_unseen.json']
    """
    config = config or SyntheticZeshelConfig()
    out = pathlib.Path(out)
    (out / "documents").mkdir(parents=True, exist_ok=True)
    (out / "mentions").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    splits: dict[str, list[dict]] = {s: [] for s in ("train", "heldout_train_seen", "heldout_train_unseen")}
    splits.update(val=[], test=[])
    clues: dict[str, list[dict]] = {split: [] for split in splits}
    plan = (
        [("train", f"train_world_{i}") for i in range(config.train_worlds)]
        + [("val", f"val_world_{i}") for i in range(config.val_worlds)]
        + [("test", f"test_world_{i}") for i in range(config.test_worlds)]
    )
    for split, world in plan:
        docs, mentions, world_clues = _world(rng, world, config)
        with open(out / "documents" / f"{world}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
        splits[split].extend(mentions)
        clues[split].extend(world_clues)
    (out / "clues").mkdir(exist_ok=True)
    for split, rows in splits.items():
        with open(out / "mentions" / f"{split}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        with open(out / "clues" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in clues[split])
    return out


def read_matching(root: str | pathlib.Path, split: str) -> dict[str, list[str]] | None:
    """mention_id -> the documents its clues cannot tell from its gold (gold included), from ``ROOT/clues/<split>
    .jsonl``; ``None`` when the folder has no such file (data not made by this generator).

    Raises:
      ValueError: a line that is not a JSON object with a string ``mention_id`` and a list ``matching`` (file and
        line named), or a duplicate mention id.
    """
    path = pathlib.Path(root) / "clues" / f"{split}.jsonl"
    if not path.is_file():
        return None
    out: dict[str, list[str]] = {}
    for lineno, rec in zeshel.json_lines(path, ValueError):
        mid, same = rec.get("mention_id"), rec.get("matching")
        if not isinstance(mid, str) or not isinstance(same, list) or not all(isinstance(d, str) for d in same):
            raise ValueError(f"{path}:{lineno}: expected fields 'mention_id' (string) and 'matching' (list of ids)")
        if mid in out:
            raise ValueError(f"{path}:{lineno}: field 'mention_id': duplicate line for {mid!r}")
        out[mid] = same
    return out


if __name__ == "__main__":  # python -m hnjax.data.synthetic OUT [--names-per-world N] ...: parse, then generate
    import argparse

    parser = argparse.ArgumentParser(description="Write a generated Zeshel-format dataset (see hnjax.data.synthetic).")
    parser.add_argument("out", help="output folder (documents/, mentions/)")
    for field in dataclasses.fields(SyntheticZeshelConfig):
        default = getattr(SyntheticZeshelConfig(), field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(default), default=default, help=f"default {default}"
        )
    options = vars(parser.parse_args())
    write_synthetic_zeshel(options.pop("out"), SyntheticZeshelConfig(**options))
