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


class CandidateFileError(ValueError):
    """A candidate file that does not match the data; the message names file, line and field."""


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


def read_candidates(
    path: str | pathlib.Path, data: Zeshel, split: str, k: int | None = None
) -> tuple[list[list[str]], list[list[float]] | None]:
    """The candidate lists of every mention of ``split``, in the split's mention order, and their first-stage scores.

    A candidate file (written by ``experiments/zeshel_retriever.py``) holds one JSON line per mention:
    ``{"mention_id", "world" (optional), "candidates": [document_id, ...], "scores": [float, ...] (optional)}``,
    candidates best first.

    Args:
      path: the ``<split>.jsonl`` file.
      data: the loaded Zeshel folder the lists refer to.
      split: the split whose mentions the file must cover.
      k: keep the first ``k`` candidates of each list (``None``: all).

    Returns:
      ``(ids, scores)``: one list of document ids per mention; the matching scores, or ``None`` when no line of the
      file has them.

    Raises:
      CandidateFileError: missing file, bad JSON, a missing or mistyped field, a duplicate or unknown mention id, a
        world that differs from the mention's, a candidate that is not a document of the mention's world, scores on
        some lines only or of another length than the candidates, or a mention of the split without a line (file,
        line and field named).
    """
    path = pathlib.Path(path)
    mentions = data.mentions.get(split, [])
    by_id = {m.mention_id: m for m in mentions}
    if not path.is_file():
        raise CandidateFileError(f"{path}: missing; split {split!r} has {len(mentions)} mentions to rerank")
    found: dict[str, list[str]] = {}
    scored: dict[str, list[float]] = {}
    for lineno, rec in json_lines(path, CandidateFileError):
        where = f"{path}:{lineno}"
        mid, cands = rec.get("mention_id"), rec.get("candidates")
        if not isinstance(mid, str):
            raise CandidateFileError(f"{where}: field 'mention_id' must be a string, got {mid!r:.60}")
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            raise CandidateFileError(f"{where}: field 'candidates' must be a list of document ids")
        if mid not in by_id:
            raise CandidateFileError(f"{where}: field 'mention_id': {mid!r} is not a mention of split {split!r}")
        if mid in found:
            raise CandidateFileError(f"{where}: field 'mention_id': duplicate line for {mid!r}")
        world = by_id[mid].world
        if "world" in rec and rec["world"] != world:
            raise CandidateFileError(f"{where}: field 'world': {rec['world']!r}, but mention {mid!r} is in {world!r}")
        docs = data.documents[world]
        for c in cands:
            if c not in docs:
                raise CandidateFileError(f"{where}: field 'candidates': {c!r} is not a document of world {world!r}")
        if len(set(cands)) != len(cands):
            raise CandidateFileError(f"{where}: field 'candidates': duplicate document ids")
        if "scores" in rec:
            sc = rec["scores"]
            if not isinstance(sc, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in sc):
                raise CandidateFileError(f"{where}: field 'scores' must be a list of numbers")
            if len(sc) != len(cands):
                raise CandidateFileError(f"{where}: field 'scores': {len(sc)} scores for {len(cands)} candidates")
            if len(scored) != len(found):
                raise CandidateFileError(f"{where}: field 'scores': present here but missing on earlier lines")
            scored[mid] = [float(x) for x in sc]
        elif scored:
            raise CandidateFileError(f"{where}: field 'scores' is missing (earlier lines have it)")
        found[mid] = cands
    missing = [m.mention_id for m in mentions if m.mention_id not in found]
    if missing:
        raise CandidateFileError(
            f"{path}: {len(missing)} mentions of split {split!r} have no candidate line, first {missing[0]!r}"
        )
    ids = [found[m.mention_id][:k] for m in mentions]
    return ids, ([scored[m.mention_id][:k] for m in mentions] if scored else None)


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
        n_left, n_right = _split_context(len(lt), len(rt), budget - len(mt))
        out.append([cls] + lt[len(lt) - n_left :] + mt + rt[:n_right] + [sep])
    return out


def _split_context(n_left: int, n_right: int, rest: int) -> tuple[int, int]:
    """Context tokens kept left and right of a mention when ``rest`` fit: half each, a short side's unused share
    going to the other side."""
    left = min(n_left, rest // 2)
    right = min(n_right, rest - left)
    return min(n_left, rest - right), right


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
    mention_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Cross-encoder inputs ``[CLS] mention-window [SEP] entity-prefix [SEP]`` and their token types.

    A mention row longer than its share is cut to a window about the marked mention (``[unused0] .. [unused1]``),
    context split half/half around it as in :func:`mention_input_ids`, so the words next to the mention (those that
    tell namesakes apart) stay in every pair; a row without the markers keeps its middle.

    Args:
      mention_ids: output rows of :func:`mention_input_ids` (with [CLS]/[SEP], markers inside), one per pair.
      entity_ids: output rows of :func:`entity_input_ids`, one per pair.
      max_length: pair length.
      mention_length: word pieces of the mention window (markers included, [CLS]/[SEP] not); default
        ``(max_length - 3) // 2`` (hard-nce-el ``FullDataset``); the entity gets the rest.

    Returns:
      (ids rows, token-type rows): one row per pair, each at most ``max_length`` long.
    """
    if len(mention_ids) != len(entity_ids):
        raise ValueError(f"{len(mention_ids)} mentions but {len(entity_ids)} entities")
    budget_m = (max_length - 3) // 2 if mention_length is None else mention_length
    if not 1 <= budget_m <= max_length - 4:
        raise ValueError(f"mention_length must be in [1, {max_length - 4}] for max_length={max_length}, got {budget_m}")
    start, end = _special_id(tokenizer, MENTION_START), _special_id(tokenizer, MENTION_END)
    rows_ids, rows_types = [], []
    for m, e in zip(mention_ids, entity_ids):
        m_body, e_body = list(m[1:-1]), list(e[1:-1])
        if len(m_body) > budget_m:
            if start in m_body and end in m_body:
                first, last = m_body.index(start), m_body.index(end)
                span = min(last + 1 - first, budget_m)
                n_left, _ = _split_context(first, len(m_body) - first - span, budget_m - span)
                m_body = m_body[first - n_left : first - n_left + budget_m]
            else:
                cut = (len(m_body) - budget_m) // 2
                m_body = m_body[cut : cut + budget_m]
        e_body = e_body[: max_length - 3 - len(m_body)]
        ids = [tokenizer.cls_token_id] + m_body + [tokenizer.sep_token_id] + e_body + [tokenizer.sep_token_id]
        rows_ids.append(ids)
        rows_types.append([0] * (len(m_body) + 2) + [1] * (len(e_body) + 1))
    return rows_ids, rows_types
