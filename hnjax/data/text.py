"""Plain-text corpora: one sentence per line, read with random access and bounded memory.

:class:`LineCorpus` scans the file once and keeps only the byte offset of every non-blank line (8 bytes a line: about
8 MB for SimCSE's one million Wikipedia sentences); sentences are read from disk when a batch asks for them, so the
corpus is never held in memory. Blank lines are skipped and counted; lines longer than ``max_chars`` characters are
cut to that length and counted (the tokenizer truncates them to the model's length anyway; cutting first bounds the
work). Neither is silent: both counts are attributes and are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class LineCorpus:
    """Random access to the non-blank lines of a UTF-8 text file.

    Attributes:
      path: the file.
      blank_lines: lines skipped because they hold only white space.
      overlong_lines: lines longer than ``max_chars`` (cut to ``max_chars`` when read).
      max_chars: longest sentence returned, in characters.

    Example:
      >>> import tempfile
      >>> f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False); _ = f.write("a b\\n\\nc d e\\n"); f.close()
      >>> corpus = LineCorpus(f.name)
      >>> len(corpus), corpus.blank_lines, corpus[[1, 0]]
      (2, 1, ['c d e', 'a b'])
    """

    def __init__(self, path: str | os.PathLike, *, max_chars: int = 10_000):
        if max_chars < 1:
            raise ValueError(f"max_chars: expected >= 1, got {max_chars}")
        self.path = os.fspath(path)
        self.max_chars = max_chars
        offsets, blank, overlong = [], 0, 0
        with open(self.path, "rb") as f:
            pos = 0
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{self.path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
                if text.strip():
                    offsets.append(pos)
                    overlong += len(text.rstrip("\r\n")) > max_chars
                else:
                    blank += 1
                pos += len(raw)
        if not offsets:
            raise ValueError(f"{self.path}: no non-blank lines")
        self._offsets = np.asarray(offsets, np.int64)
        self.blank_lines, self.overlong_lines = blank, overlong
        if blank or overlong:
            logger.warning(
                "%s: %d sentences; %d blank lines skipped; %d lines over %d characters cut",
                self.path, len(offsets), blank, overlong, max_chars,
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, indices: int | Sequence[int] | np.ndarray) -> str | list[str]:
        """One sentence (int index) or a list of sentences (sequence of indices), in the order asked."""
        single = np.ndim(indices) == 0
        idx = np.atleast_1d(np.asarray(indices, np.int64))
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a corpus of {len(self)} sentences")
        out = []
        with open(self.path, "rb") as f:
            for i in idx:
                f.seek(int(self._offsets[i]))
                out.append(f.readline().decode("utf-8").strip()[: self.max_chars])
        return out[0] if single else out

    def stats(self) -> dict[str, int]:
        """Counts for reports: sentences, blank lines skipped, over-long lines cut."""
        return {"sentences": len(self), "blank_lines": self.blank_lines, "overlong_lines": self.overlong_lines}
