"""Zero-shot entity linking data (Zeshel; Logeswaran et al., 2019) in its original layout.

Layout read here (the one the official release and hard-nce-el's ``load_zeshel_data`` use)::

    ROOT/documents/<world>.json   JSON lines: document_id, title, text           (one entity page per line)
    ROOT/mentions/<split>.json    JSON lines: mention_id, context_document_id, corpus, start_index, end_index,
                                  text, label_document_id, category

``start_index`` and ``end_index`` are 0-based, inclusive offsets into ``text.split()`` of the context document, and
``" ".join(tokens[start:end + 1]) == text``. The entity universe of a mention is its own world (``corpus``).

Every malformed record raises :class:`ZeshelFormatError` naming file, line and field. A mention whose label or context
document is missing is an error by default; with ``on_missing="skip"`` it is left out, counted in
:attr:`Zeshel.skipped` and logged, never dropped silently.

Model inputs follow Zhang & Stratos (2021), hard-nce-el ``MentionSet.get_mention_window`` and
``transform_entities``: a mention is ``[CLS] left [unused0] mention [unused1] right [SEP]`` with the context split
about half/half around the mention (spilling over when one side is short); an entity is
``[CLS] title [unused2] text [SEP]``, truncated to the maximum length.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from hnjax.data import jsonl

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout_train_seen", "heldout_train_unseen", "val", "test")
MENTION_START, MENTION_END, ENTITY_SEP = "[unused0]", "[unused1]", "[unused2]"

_DOC_FIELDS = {"document_id": str, "title": str, "text": str}
_MENTION_FIELDS = {
    "mention_id": str,
    "context_document_id": str,
    "corpus": str,
    "start_index": int,
    "end_index": int,
    "text": str,
    "label_document_id": str,
    "category": str,
}


class ZeshelFormatError(ValueError):
    """A Zeshel file that does not follow the format; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class Document:
    document_id: str
    title: str
    text: str
    world: str


@dataclasses.dataclass(frozen=True)
class Mention:
    mention_id: str
    context_document_id: str
    world: str
    start_index: int
    end_index: int
    text: str
    label_document_id: str
    category: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A mention left out by ``on_missing="skip"``: where it was and why."""

    file: str
    line: int
    mention_id: str
    reason: str


@dataclasses.dataclass
class Zeshel:
    """A loaded Zeshel folder.

    Attributes:
      documents: world name -> {document_id: Document}, in file order.
      mentions: split name -> list of Mention (only the splits whose file exists).
      skipped: mentions left out with ``on_missing="skip"``.
    """

    documents: dict[str, dict[str, Document]]
    mentions: dict[str, list[Mention]]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    def worlds(self, split: str) -> list[str]:
        """Worlds that the mentions of ``split`` belong to, in order of first appearance."""
        return list(dict.fromkeys(m.world for m in self.mentions.get(split, [])))

    def entities(self, worlds: Sequence[str]) -> list[Document]:
        """All documents of the given worlds, concatenated in world order."""
        return [doc for w in worlds for doc in self.documents[w].values()]

    def document(self, world: str, document_id: str) -> Document:
        return self.documents[world][document_id]


def json_lines(path: str | pathlib.Path, error: type[Exception] = ZeshelFormatError) -> Iterator[tuple[int, dict]]:
    """:func:`hnjax.data.jsonl.records` raising ``error`` (default :class:`ZeshelFormatError`), for Zeshel files."""
    return jsonl.records(path, error=error)


def _check_fields(record: dict, fields: dict[str, type], path: pathlib.Path, lineno: int) -> None:
    for name, kind in fields.items():
        if name not in record:
            raise ZeshelFormatError(f"{path}:{lineno}: field {name!r} is missing")
        value = record[name]
        if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            record[name] = value = int(value)  # the official files store offsets as numbers; accept "12" too
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ZeshelFormatError(
                f"{path}:{lineno}: field {name!r} must be {kind.__name__}, got {type(value).__name__} {value!r:.60}"
            )


def load_documents(path: str | pathlib.Path) -> dict[str, Document]:
    """Reads one ``documents/<world>.json`` file; the world is the file's stem.

    Raises:
      ZeshelFormatError: bad JSON, a missing or mistyped field, or a duplicate ``document_id`` (file and line).
    """
    path = pathlib.Path(path)
    world = path.stem
    docs: dict[str, Document] = {}
    for lineno, rec in json_lines(path):
        _check_fields(rec, _DOC_FIELDS, path, lineno)
        if rec["document_id"] in docs:
            raise ZeshelFormatError(f"{path}:{lineno}: field 'document_id': duplicate id {rec['document_id']!r}")
        docs[rec["document_id"]] = Document(rec["document_id"], rec["title"], rec["text"], world)
    if not docs:
        raise ZeshelFormatError(f"{path}: no documents")
    return docs


def load_mentions(
    path: str | pathlib.Path,
    documents: dict[str, dict[str, Document]],
    *,
    on_missing: str = "error",
    skipped: list[Skipped] | None = None,
) -> list[Mention]:
    """Reads one ``mentions/<split>.json`` file and checks every mention against its world's documents.

    Args:
      path: the JSON-lines file.
      documents: world -> {document_id: Document}, as returned by :func:`load_documents` per world.
      on_missing: ``"error"`` (default) raises when the world, the context document or the label document is
        missing; ``"skip"`` leaves such a mention out and appends a :class:`Skipped` record to ``skipped``.
      skipped: list collecting skipped mentions (required with ``on_missing="skip"``).

    Raises:
      ZeshelFormatError: malformed records; offsets outside the context document; mention text that differs from
        the context tokens it points at; duplicate mention ids; missing documents with ``on_missing="error"``.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if on_missing == "skip" and skipped is None:
        raise ValueError("on_missing='skip' needs a `skipped` list to report what was left out")
    path = pathlib.Path(path)
    mentions: list[Mention] = []
    seen: set[str] = set()
    for lineno, rec in json_lines(path):
        _check_fields(rec, _MENTION_FIELDS, path, lineno)
        if rec["mention_id"] in seen:
            raise ZeshelFormatError(f"{path}:{lineno}: field 'mention_id': duplicate id {rec['mention_id']!r}")
        seen.add(rec["mention_id"])
        world = rec["corpus"]
        problem = None
        if world not in documents:
            problem = ("corpus", f"world {world!r} has no documents/{world}.json")
        elif rec["context_document_id"] not in documents[world]:
            problem = ("context_document_id", f"{rec['context_document_id']!r} is not a document of world {world!r}")
        elif rec["label_document_id"] not in documents[world]:
            problem = ("label_document_id", f"{rec['label_document_id']!r} is not a document of world {world!r}")
        if problem is not None:
            field, why = problem
            if on_missing == "error":
                raise ZeshelFormatError(f"{path}:{lineno}: field {field!r}: {why}")
            skipped.append(Skipped(str(path), lineno, rec["mention_id"], f"{field}: {why}"))
            continue
        tokens = documents[world][rec["context_document_id"]].text.split()
        start, end = rec["start_index"], rec["end_index"]
        if not 0 <= start <= end < len(tokens):
            raise ZeshelFormatError(
                f"{path}:{lineno}: fields 'start_index'/'end_index': [{start}, {end}] outside the "
                f"{len(tokens)} tokens of context document {rec['context_document_id']!r}"
            )
        if " ".join(tokens[start : end + 1]) != " ".join(rec["text"].split()):
            raise ZeshelFormatError(
                f"{path}:{lineno}: field 'text': {rec['text']!r} differs from the context tokens "
                f"{' '.join(tokens[start : end + 1])!r} at [{start}, {end}]"
            )
        mentions.append(
            Mention(
                rec["mention_id"],
                rec["context_document_id"],
                world,
                start,
                end,
                rec["text"],
                rec["label_document_id"],
                rec["category"],
            )
        )
    return mentions


def load_zeshel(root: str | pathlib.Path, *, splits: Sequence[str] = SPLITS, on_missing: str = "error") -> Zeshel:
    """Loads a Zeshel folder: every ``documents/*.json`` and the given splits' ``mentions/<split>.json``.

    Missing split files are allowed (not every folder has the heldout splits) but at least one must exist.
    """
    root = pathlib.Path(root)
    doc_dir, mention_dir = root / "documents", root / "mentions"
    for d in (doc_dir, mention_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: missing; a Zeshel folder holds documents/ and mentions/")
    doc_files = sorted(doc_dir.glob("*.json"))
    if not doc_files:
        raise FileNotFoundError(f"{doc_dir}: no <world>.json files")
    documents = {f.stem: load_documents(f) for f in doc_files}
    data = Zeshel(documents=documents, mentions={})
    for split in splits:
        f = mention_dir / f"{split}.json"
        if f.exists():
            data.mentions[split] = load_mentions(f, documents, on_missing=on_missing, skipped=data.skipped)
    if not data.mentions:
        raise FileNotFoundError(f"{mention_dir}: none of {', '.join(s + '.json' for s in splits)}")
    if data.skipped:
        log.warning(
            "Zeshel %s: %d mentions left out (missing documents), first: %s", root, len(data.skipped), data.skipped[0]
        )
    return data


# ----------------------------------------------------------------------------------------------------------------
# Model inputs


def _special_id(tokenizer, token: str) -> int:
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} token (BERT vocabularies have [unused0..])")
    return idx


def _wordpieces(tokenizer, word_lists: list[list[str]]) -> list[list[int]]:
    """Wordpiece ids of pre-split word lists, in one batched call of the fast tokenizer."""
    nonempty = [i for i, w in enumerate(word_lists) if w]
    out: list[list[int]] = [[] for _ in word_lists]
    if nonempty:
        enc = tokenizer([word_lists[i] for i in nonempty], is_split_into_words=True, add_special_tokens=False)
        for i, ids in zip(nonempty, enc["input_ids"]):
            out[i] = list(ids)
    return out


def mention_input_ids(
    tokenizer, data: Zeshel, mentions: Sequence[Mention], *, max_length: int = 128
) -> list[list[int]]:
    """Token ids ``[CLS] left [unused0] mention [unused1] right [SEP]`` for each mention, at most ``max_length``.

    The window keeps the whole mention when it fits (else its first wordpieces) and splits the rest of the budget
    between left and right context, giving one side's unused share to the other (hard-nce-el ``get_mention_window``).
    """
    if max_length < 5:
        raise ValueError(f"max_length must be at least 5 for a mention window, got {max_length}")
    budget = max_length - 2  # [CLS], [SEP]
    left_words, mention_words, right_words = [], [], []
    for m in mentions:
        tokens = data.document(m.world, m.context_document_id).text.split()
        left_words.append(tokens[max(0, m.start_index - budget) : m.start_index])
        mention_words.append(tokens[m.start_index : m.end_index + 1])
        right_words.append(tokens[m.end_index + 1 : m.end_index + 1 + budget])
    left, middle, right = (_wordpieces(tokenizer, w) for w in (left_words, mention_words, right_words))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    start, end = _special_id(tokenizer, MENTION_START), _special_id(tokenizer, MENTION_END)
    out = []
    for lt, mt, rt in zip(left, middle, right):
        mt = [start] + mt[: budget - 2] + [end]
        rest = budget - len(mt)
        n_left = min(len(lt), rest // 2)
        n_right = min(len(rt), rest - n_left)
        n_left = min(len(lt), rest - n_right)  # spill unused right budget back to the left
        out.append([cls] + lt[len(lt) - n_left :] + mt + rt[:n_right] + [sep])
    return out


def entity_input_ids(tokenizer, documents: Sequence[Document], *, max_length: int = 128) -> list[list[int]]:
    """Token ids ``[CLS] title [unused2] text [SEP]`` for each document, truncated to ``max_length``."""
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")
    budget = max_length - 3
    titles = _wordpieces(tokenizer, [d.title.split() for d in documents])
    texts = _wordpieces(tokenizer, [d.text.split()[:budget] for d in documents])
    cls, sep, mid = tokenizer.cls_token_id, tokenizer.sep_token_id, _special_id(tokenizer, ENTITY_SEP)
    out = []
    for t, x in zip(titles, texts):
        t = t[:budget]
        out.append([cls] + t + [mid] + x[: budget - len(t)] + [sep])
    return out


def pad_ids(ids: Sequence[Sequence[int]], *, length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pads token id lists to ``[n, length]``; returns (input_ids int32, attention_mask bool).

    Raises:
      ValueError: a sequence longer than ``length`` (callers truncate first, so this is a bug, not data).
    """
    out = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), bool)
    for i, row in enumerate(ids):
        if len(row) > length:
            raise ValueError(f"sequence {i} has {len(row)} tokens, more than length={length}")
        out[i, : len(row)] = row
        mask[i, : len(row)] = True
    return out, mask


def pair_input_ids(
    tokenizer,
    mention_ids: Sequence[Sequence[int]],
    entity_ids: Sequence[Sequence[int]],
    *,
    max_length: int = 256,
) -> tuple[list[int], list[int]]:
    """Cross-encoder inputs ``[CLS] mention-window [SEP] entity-prefix [SEP]`` and their token types.

    Args:
      mention_ids: output rows of :func:`mention_input_ids` (with [CLS]/[SEP], markers inside), one per pair.
      entity_ids: output rows of :func:`entity_input_ids`, one per pair.
      max_length: pair length; the mention window gets at most ``(max_length - 3) // 2`` word pieces and the
        entity the rest (hard-nce-el ``FullDataset``).

    Returns:
      (ids rows, token-type rows): one row per pair, each at most ``max_length`` long.
    """
    if len(mention_ids) != len(entity_ids):
        raise ValueError(f"{len(mention_ids)} mentions but {len(entity_ids)} entities")
    budget_m = (max_length - 3) // 2
    rows_ids, rows_types = [], []
    for m, e in zip(mention_ids, entity_ids):
        m_body, e_body = list(m[1:-1]), list(e[1:-1])
        if len(m_body) > budget_m:  # keep the marked mention: trim evenly around the markers' centre
            cut = len(m_body) - budget_m
            left = cut // 2
            m_body = m_body[left : left + budget_m]
        e_body = e_body[: max_length - 3 - len(m_body)]
        ids = [tokenizer.cls_token_id] + m_body + [tokenizer.sep_token_id] + e_body + [tokenizer.sep_token_id]
        rows_ids.append(ids)
        rows_types.append([0] * (len(m_body) + 2) + [1] * (len(e_body) + 1))
    return rows_ids, rows_types
