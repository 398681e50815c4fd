"""SentEval semantic textual similarity (STS) data: STS12–16, STS Benchmark and SICK-R, with validation.

Layout (the folder names of SentEval's `data/downstream`, found anywhere under the directory given):

    STS/STS12-en-test/ … STS/STS16-en-test/   STS.input.<subset>.txt + STS.gs.<subset>.txt per subset
    STS/STSBenchmark/                          sts-dev.csv, sts-test.csv
    SICK/                                      SICK_test_annotated.txt

Formats (as SentEval's `senteval/sts.py` and `sick.py` read them):
  * `STS.input.<subset>.txt`: one pair per line, `sentence1<TAB>sentence2` (extra trailing columns are ignored).
    `STS.gs.<subset>.txt`: the gold score (0–5) of the same line; pairs whose gold line is empty have no human score
    and are skipped, and counted (`STSPairs.skipped_empty_gold`).
  * `sts-{train,dev,test}.csv`: tab-separated, no header, no quoting; columns genre, file, year, id, score (0–5),
    sentence1, sentence2. Some lines carry extra trailing columns (sources); the first seven are the data.
  * `SICK_*.txt`: tab-separated with a header line naming the columns; sentence_A, sentence_B and relatedness_score
    (1–5) are read by name.

Lines are split on "\\n" (and "\\r\\n"), never on the other Unicode line breaks `str.splitlines` knows, so a
sentence holding such a character is not cut in two. Sentences are whitespace-normalised (`" ".join(s.split())`),
as SentEval's split-and-join does. Every error names the file, the 1-based line and the field.

References:
  Agirre et al., SemEval STS tasks 2012–2016; Cer et al., "SemEval-2017 Task 1" (STS Benchmark), 2017;
  Marelli et al., "A SICK cure for the evaluation of compositional distributional semantic models", LREC 2014;
  Conneau & Kiela, "SentEval", LREC 2018.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Subsets per year, in SentEval's order (`senteval/sts.py`, STS12Eval … STS16Eval).
YEAR_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
YEAR_FOLDERS: dict[str, str] = {name: f"{name}-en-test" for name in YEAR_SUBSETS}
STSB_FILES: dict[str, str] = {"STSBenchmark-dev": "sts-dev.csv", "STSBenchmark-test": "sts-test.csv"}
SICK_FILES: dict[str, str] = {"SICK-R": "SICK_test_annotated.txt"}
SET_NAMES: tuple[str, ...] = (*YEAR_SUBSETS, *STSB_FILES, *SICK_FILES)

STS_SCORE_RANGE = (0.0, 5.0)
SICK_SCORE_RANGE = (1.0, 5.0)
STSB_COLUMNS = ("genre", "file", "year", "id", "score", "sentence1", "sentence2")
SICK_COLUMNS = ("sentence_A", "sentence_B", "relatedness_score")
_YEAR_FOLDER_RE = re.compile(r"^(STS1[2-6])-en-test$")


@dataclasses.dataclass(frozen=True)
class STSPairs:
    """Sentence pairs with gold similarity scores, from one file (or one input/gold file pair).

    Attributes:
      sentences1: P first sentences, whitespace-normalised.
      sentences2: P second sentences.
      scores: gold scores, float64 [P].
      source: the file the pairs were read from.
      skipped_empty_gold: lines without a gold score that were skipped (STS12–16 only).
      extra_columns: lines whose trailing extra columns were ignored.
    """

    sentences1: tuple[str, ...]
    sentences2: tuple[str, ...]
    scores: np.ndarray
    source: str
    skipped_empty_gold: int = 0
    extra_columns: int = 0

    def __post_init__(self):
        n = len(self.sentences1)
        if len(self.sentences2) != n or self.scores.shape != (n,):
            raise ValueError(
                f"{self.source}: sentences1, sentences2 and scores must all have P = {n} entries, got "
                f"{len(self.sentences2)} and shape {self.scores.shape}"
            )

    def __len__(self) -> int:
        return len(self.sentences1)


@dataclasses.dataclass(frozen=True)
class STSSet:
    """One evaluation set: the subsets of an STS year, or a single split of STS-B / SICK-R (one subset).

    Attributes:
      name: the set name, one of `SET_NAMES` for the standard sets.
      subsets: subset name → pairs, in SentEval's order.
    """

    name: str
    subsets: Mapping[str, STSPairs]

    @property
    def pairs(self) -> int:
        """Number of scored pairs over all subsets."""
        return sum(len(p) for p in self.subsets.values())


def _normalize(sentence: str) -> str:
    return " ".join(sentence.split())


def _read_lines(path: pathlib.Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM dropped), split on newlines only; a final newline adds no empty line."""
    try:
        with open(path, encoding="utf-8-sig", newline=None) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text:
        return []
    # "a\n" is one line and "\n" one empty line, as str.splitlines counts them.
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def _parse_score(raw: str, path: pathlib.Path, line: int, field: str, valid: tuple[float, float]) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{path}:{line}: {field}: expected a number in [{valid[0]:g}, {valid[1]:g}], got {raw!r}"
        ) from None
    if not (valid[0] <= value <= valid[1]):  # also rejects nan
        raise ValueError(f"{path}:{line}: {field}: expected a number in [{valid[0]:g}, {valid[1]:g}], got {raw!r}")
    return value


def _warn_empty_sentences(path: pathlib.Path, lines: list[int]) -> None:
    if lines:
        logger.warning(
            "%s: %d empty sentences (first on line %d); they are kept and encoded", path, len(lines), lines[0]
        )


def load_sts_subset(input_path: str | os.PathLike, gold_path: str | os.PathLike) -> STSPairs:
    """Reads one STS12–16 subset: `STS.input.<subset>.txt` and its `STS.gs.<subset>.txt`.

    Args:
      input_path: pairs file, one `sentence1<TAB>sentence2` per line.
      gold_path: gold file with the same number of lines, one score in [0, 5] or an empty line per pair.

    Returns:
      The pairs whose gold line is not empty; `skipped_empty_gold` counts the others.

    Raises:
      ValueError: line counts differ, a line has fewer than two columns, or a gold score is not a number in [0, 5]
        (file and line named).
    """
    input_path, gold_path = pathlib.Path(input_path), pathlib.Path(gold_path)
    inputs = _read_lines(input_path)
    golds = _read_lines(gold_path)
    if len(inputs) != len(golds):
        raise ValueError(
            f"{gold_path}: has {len(golds)} lines but {input_path} has {len(inputs)}; the gold file must hold one "
            "line (a score, or nothing) per pair"
        )
    s1, s2, scores, empty_sentences = [], [], [], []
    skipped = extra = 0
    for i, (pair_line, gold_line) in enumerate(zip(inputs, golds), start=1):
        fields = pair_line.split("\t")
        if len(fields) < 2:
            raise ValueError(
                f"{input_path}:{i}: expected 2 tab-separated sentences (sentence1, sentence2), got {len(fields)} field"
            )
        extra += len(fields) > 2
        if not gold_line.strip():
            skipped += 1
            continue
        scores.append(_parse_score(gold_line.strip(), gold_path, i, "gold score", STS_SCORE_RANGE))
        a, b = _normalize(fields[0]), _normalize(fields[1])
        if not a or not b:
            empty_sentences.append(i)
        s1.append(a)
        s2.append(b)
    if not scores:
        raise ValueError(f"{gold_path}: no pair has a gold score ({len(golds)} lines, all empty)")
    if skipped:
        logger.info("%s: skipped %d of %d pairs with an empty gold line", gold_path, skipped, len(golds))
    if extra:
        logger.info("%s: ignored extra columns after sentence2 on %d lines", input_path, extra)
    _warn_empty_sentences(input_path, empty_sentences)
    return STSPairs(tuple(s1), tuple(s2), np.asarray(scores, np.float64), str(input_path), skipped, extra)


def load_sts_year(
    directory: str | os.PathLike, name: str | None = None, *, subsets: Sequence[str] | None = None
) -> STSSet:
    """Reads an STS12–16 folder (e.g. `STS/STS12-en-test`) subset by subset.

    Args:
      directory: the year folder.
      name: "STS12" … "STS16"; inferred from a folder named `STS1x-en-test` when None.
      subsets: subset names to read; default SentEval's list for the year (`YEAR_SUBSETS`), so that the "all"
        score is comparable with published numbers. Other `STS.input.*.txt` files in the folder are logged and
        left out.

    Returns:
      `STSSet` with one `STSPairs` per subset.

    Raises:
      FileNotFoundError: a subset's input or gold file is missing.
      ValueError: the year cannot be inferred, or a file is malformed.
    """
    directory = pathlib.Path(directory)
    if name is None:
        match = _YEAR_FOLDER_RE.match(directory.name)
        if match is None:
            raise ValueError(
                f"name: cannot infer the STS year from folder {str(directory)!r}; expected a folder named one of "
                f"{sorted(YEAR_FOLDERS.values())} or name= one of {list(YEAR_SUBSETS)}"
            )
        name = match.group(1)
    if subsets is None:
        if name not in YEAR_SUBSETS:
            raise ValueError(f"name: expected one of {list(YEAR_SUBSETS)} (or pass subsets=), got {name!r}")
        subsets = YEAR_SUBSETS[name]
    if not subsets:
        raise ValueError(f"subsets: expected at least one subset for {name}, got none")
    present = sorted(p.name[len("STS.input.") : -len(".txt")] for p in directory.glob("STS.input.*.txt"))
    ignored = [s for s in present if s not in subsets]
    if ignored:
        logger.warning("%s: subsets %s are not part of %s in SentEval and are left out", directory, ignored, name)
    pairs = {}
    for subset in subsets:
        input_path = directory / f"STS.input.{subset}.txt"
        gold_path = directory / f"STS.gs.{subset}.txt"
        for p in (input_path, gold_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: {name} needs the subsets {list(subsets)}")
        pairs[subset] = load_sts_subset(input_path, gold_path)
    return STSSet(name, pairs)


def load_stsb(path: str | os.PathLike, name: str | None = None) -> STSSet:
    """Reads an STS Benchmark split `sts-{train,dev,test}.csv`.

    Tab-separated without header or quoting (sentences may contain quote characters); the first seven columns are
    genre, file, year, id, score (0–5), sentence1, sentence2, and any further columns are ignored.

    Args:
      path: the csv file.
      name: set name; default "STSBenchmark-<split>" from the file name.

    Returns:
      `STSSet` with a single subset named like the set.

    Raises:
      ValueError: a line has fewer than seven columns or a score that is not a number in [0, 5].
    """
    path = pathlib.Path(path)
    if name is None:
        match = re.match(r"^sts-(\w+)\.csv$", path.name)
        name = f"STSBenchmark-{match.group(1)}" if match else path.stem
    s1, s2, scores, empty_sentences = [], [], [], []
    extra = 0
    for i, line in enumerate(_read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < len(STSB_COLUMNS):
            raise ValueError(
                f"{path}:{i}: expected {len(STSB_COLUMNS)} tab-separated columns ({', '.join(STSB_COLUMNS)}), got "
                f"{len(fields)}"
            )
        extra += len(fields) > len(STSB_COLUMNS) and any(f.strip() for f in fields[len(STSB_COLUMNS) :])
        scores.append(_parse_score(fields[4].strip(), path, i, "score (column 5)", STS_SCORE_RANGE))
        a, b = _normalize(fields[5]), _normalize(fields[6])
        if not a or not b:
            empty_sentences.append(i)
        s1.append(a)
        s2.append(b)
    if not scores:
        raise ValueError(f"{path}: no pairs (the file is empty)")
    if extra:
        logger.info("%s: ignored extra columns after sentence2 on %d lines", path, extra)
    _warn_empty_sentences(path, empty_sentences)
    pairs = STSPairs(tuple(s1), tuple(s2), np.asarray(scores, np.float64), str(path), 0, extra)
    return STSSet(name, {name: pairs})


def load_sick(path: str | os.PathLike, name: str = "SICK-R") -> STSSet:
    """Reads a SICK file (`SICK_test_annotated.txt`, `SICK_train.txt`, `SICK_trial.txt`) for relatedness.

    Args:
      path: tab-separated file whose header names the columns sentence_A, sentence_B and relatedness_score (1–5).
      name: set name.

    Returns:
      `STSSet` with a single subset named like the set.

    Raises:
      ValueError: the header lacks a needed column, a line is short, or a score is not a number in [1, 5].
    """
    path = pathlib.Path(path)
    lines = _read_lines(path)
    if not lines:
        raise ValueError(f"{path}: empty file; expected a header line naming {', '.join(SICK_COLUMNS)}")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in SICK_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}:1: header: expected columns {list(SICK_COLUMNS)}, missing {missing}; got {header}")
    col = {c: header.index(c) for c in SICK_COLUMNS}
    need = max(col.values()) + 1
    s1, s2, scores, empty_sentences = [], [], [], []
    for i, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) < need:
            raise ValueError(
                f"{path}:{i}: expected at least {need} tab-separated columns as in the header, got {len(fields)}"
            )
        scores.append(
            _parse_score(fields[col["relatedness_score"]].strip(), path, i, "relatedness_score", SICK_SCORE_RANGE)
        )
        a, b = _normalize(fields[col["sentence_A"]]), _normalize(fields[col["sentence_B"]])
        if not a or not b:
            empty_sentences.append(i)
        s1.append(a)
        s2.append(b)
    if not scores:
        raise ValueError(f"{path}: no pairs after the header")
    _warn_empty_sentences(path, empty_sentences)
    pairs = STSPairs(tuple(s1), tuple(s2), np.asarray(scores, np.float64), str(path))
    return STSSet(name, {name: pairs})


def _walk(root: pathlib.Path) -> Iterable[tuple[pathlib.Path, list[str], list[str]]]:
    """os.walk in sorted order, following symbolic links to folders but never into a loop."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        yield pathlib.Path(dirpath), dirnames, sorted(filenames)


def find_sts_sets(root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Finds the standard STS sets anywhere under `root` (`root` itself included) by their SentEval names.

    STS12–16: folders `STS12-en-test` … `STS16-en-test`; STS-B: files `sts-dev.csv`, `sts-test.csv`; SICK-R: file
    `SICK_test_annotated.txt`.

    Args:
      root: a directory, e.g. SentEval's `data/downstream`, its `STS` folder, or a folder holding only some sets.

    Returns:
      set name → folder (STS12–16) or file, in the order of `SET_NAMES`; sets not found are absent.

    Raises:
      FileNotFoundError: `root` is not a directory.
      ValueError: a set is found in two places (both named).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    folder_to_set = {folder: name for name, folder in YEAR_FOLDERS.items()}
    file_to_set = {file: name for name, file in {**STSB_FILES, **SICK_FILES}.items()}
    found: dict[str, pathlib.Path] = {}

    def add(name: str, path: pathlib.Path) -> None:
        if name in found:
            raise ValueError(f"{name} found twice, at {found[name]} and {path}; point --data at one of them")
        found[name] = path

    for dirpath, _, filenames in _walk(root):
        if dirpath.name in folder_to_set:
            add(folder_to_set[dirpath.name], dirpath)
        for filename in filenames:
            if filename in file_to_set:
                add(file_to_set[filename], dirpath / filename)
    return {name: found[name] for name in SET_NAMES if name in found}


def load_sts_sets(root: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, STSSet]:
    """Loads every standard STS set found under `root` (see `find_sts_sets`).

    Args:
      root: directory to search.
      names: sets required (each must be found); default all that are present.

    Returns:
      set name → `STSSet`, in the order of `SET_NAMES`.

    Raises:
      FileNotFoundError: no set found, or a required one is missing.
      ValueError: a file is malformed (file, line and field named), or a set is found twice.
    """
    found = find_sts_sets(root)
    if names is not None:
        unknown = [n for n in names if n not in SET_NAMES]
        if unknown:
            raise ValueError(f"names: expected names from {list(SET_NAMES)}, got {unknown}")
        missing = [n for n in names if n not in found]
        if missing:
            raise FileNotFoundError(f"{root}: sets {missing} not found (found: {list(found)})")
        found = {n: found[n] for n in SET_NAMES if n in names}
    if not found:
        raise FileNotFoundError(
            f"{root}: no STS set found; expected folders {list(YEAR_FOLDERS.values())} or files "
            f"{list(STSB_FILES.values()) + list(SICK_FILES.values())} under it (SentEval's data/downstream layout)"
        )
    sets = {}
    for name, path in found.items():
        if name in YEAR_SUBSETS:
            sets[name] = load_sts_year(path, name)
        elif name in STSB_FILES:
            sets[name] = load_stsb(path, name)
        else:
            sets[name] = load_sick(path, name)
        logger.info("%s: %d pairs from %s", name, sets[name].pairs, path)
    return sets
