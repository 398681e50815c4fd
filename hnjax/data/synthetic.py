"""A deterministic generator of Zeshel-format entity-linking data where hard negatives matter.

Each world has groups of entities that share a surface name and differ in described attributes (occupation, home
city, a carried object). A mention names an entity and, in its context, one or two of its attributes, so the gold
entity is told apart from its namesakes only by the attributes: a retriever trained on random negatives learns to
match names, and only negatives from the same name group teach it the attributes.

Layout written (the real Zeshel layout, see :mod:`hnjax.data.zeshel`)::

    OUT/documents/<world>.json
    OUT/mentions/{train,heldout_train_seen,heldout_train_unseen,val,test}.json
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

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
      seed: the generator is a pure function of the config.
    """

    train_worlds: int = 2
    val_worlds: int = 1
    test_worlds: int = 1
    names_per_world: int = 25
    namesakes: int = 4
    mentions_per_entity: float = 1.0
    filler_sentences: int = 2
    seed: int = 0

    def __post_init__(self):
        for field in ("train_worlds", "val_worlds", "test_worlds", "names_per_world", "namesakes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}: expected at least 1, got {getattr(self, field)}")
        if self.namesakes > min(len(_OCCUPATIONS), len(_CITIES)):
            raise ValueError(
                f"namesakes: expected at most {min(len(_OCCUPATIONS), len(_CITIES))}, got {self.namesakes}"
            )
        if self.names_per_world > len(_NAMES):
            raise ValueError(f"names_per_world: expected at most {len(_NAMES)}, got {self.names_per_world}")
        if self.mentions_per_entity <= 0:
            raise ValueError(f"mentions_per_entity: expected a positive value, got {self.mentions_per_entity}")
        if self.filler_sentences < 0:
            raise ValueError(f"filler_sentences: expected >= 0, got {self.filler_sentences}")


def _world(rng: np.random.Generator, name: str, cfg: SyntheticZeshelConfig):
    """Documents and mentions of one world."""
    names = rng.choice(_NAMES, size=cfg.names_per_world, replace=False)
    entities = []
    for n in names:
        occs = rng.choice(_OCCUPATIONS, size=cfg.namesakes, replace=False)
        cities = rng.choice(_CITIES, size=cfg.namesakes, replace=False)
        for occ, city in zip(occs, cities):
            entities.append(
                {
                    "document_id": rng.bytes(8).hex().upper(),
                    "name": str(n),
                    "occupation": str(occ),
                    "city": str(city),
                    "object": str(rng.choice(_OBJECTS)),
                }
            )
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
    mentions = []
    for j, g in enumerate(golds):
        e = entities[g]
        host = int(rng.integers(len(entities) - 1))
        host += host >= g  # the context page is another entity's page
        words = pages[host][1]
        style = int(rng.integers(3))
        nm = e["name"].capitalize()
        if style == 0:
            sentence = f"later the {e['occupation']} {nm} arrived at the gate ."
        elif style == 1:
            sentence = f"a traveller named {nm} came from {e['city'].capitalize()} at night ."
        else:
            sentence = f"the {e['occupation']} {nm} of {e['city'].capitalize()} joined them ."
        toks = sentence.split()
        pos = toks.index(nm)
        start = len(words) + pos
        words.extend(toks)
        mentions.append(
            {
                "mention_id": f"{name}-{j:05d}",
                "context_document_id": entities[host]["document_id"],
                "corpus": name,
                "start_index": start,
                "end_index": start,
                "text": nm,
                "label_document_id": e["document_id"],
                "category": "MULTIPLE_CATEGORIES",
            }
        )
    docs = [
        {"document_id": e["document_id"], "title": title, "text": " ".join(words)}
        for e, (title, words) in zip(entities, pages)
    ]
    return docs, mentions


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
    plan = (
        [("train", f"train_world_{i}") for i in range(config.train_worlds)]
        + [("val", f"val_world_{i}") for i in range(config.val_worlds)]
        + [("test", f"test_world_{i}") for i in range(config.test_worlds)]
    )
    for split, world in plan:
        docs, mentions = _world(rng, world, config)
        with open(out / "documents" / f"{world}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
        splits[split].extend(mentions)
    for split, rows in splits.items():
        with open(out / "mentions" / f"{split}.json", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
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
