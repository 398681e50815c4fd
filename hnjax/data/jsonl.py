"""JSON-lines files: one JSON object per line, read with errors that name the file and the line.

Every JSON-lines file of the project goes through :func:`records`: the Zeshel documents and mentions, the candidate
files the retriever writes, and the metric logs of a training run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator


def records(
    path: str | os.PathLike, *, error: type[Exception] = ValueError, partial_last_line: bool = False
) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines file, numbered from 1.

    Args:
      path: the file (UTF-8).
      error: exception class raised, with ``"{path}:{line}: ..."``, for a line that is not JSON or not a JSON object.
      partial_last_line: end quietly at an unterminated last line that is not valid JSON (what a killed writer leaves)
        instead of raising.

    Yields:
      ``(lineno, record)`` with ``record`` a dict.

    Example:
      >>> import tempfile
      >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
      ...     _ = f.write('{"a": 1}\\n\\n{"a": 2}\\n')
      >>> list(records(f.name))
      [(1, {'a': 1}), (3, {'a': 2})]
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if partial_last_line and not line.endswith("\n"):
                    return
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
