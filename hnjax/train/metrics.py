"""Run metrics on the host: JSONL log (truncated to the checkpoint on resume), TensorBoard scalars, time split."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator

from hnjax.data import jsonl

logger = logging.getLogger(__name__)

TIME_PHASES = ("step", "data", "mining", "eval", "checkpoint")


def read_jsonl(path: str) -> list[dict]:
    """All records of a JSONL log; none when the file does not exist yet, and an incomplete last line (left by a
    killed process) is ignored."""
    if not os.path.exists(path):
        return []
    return [record for _, record in jsonl.records(path, partial_last_line=True)]


def truncate_jsonl(path: str, max_step: int) -> int:
    """Keep only records with ``step <= max_step`` (resume: drop what the killed run logged after its checkpoint).

    Returns:
      Number of records kept.
    """
    records = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return len(records)


def run_summary(out_dir: str, time_split: dict[str, float]) -> dict:
    """The training part of an experiment's ``results.json``.

    ``train_loss_first_last`` is read from ``OUT/metrics.jsonl``, so it covers the whole run across resumes (a
    :class:`~hnjax.train.loop.FitResult` only holds the records of its own invocation); ``None`` when no step was
    logged.
    """
    losses = [r["loss"] for r in read_jsonl(os.path.join(str(out_dir), "metrics.jsonl")) if "loss" in r]
    return {"train_loss_first_last": [losses[0], losses[-1]] if losses else None, "time_split_s": dict(time_split)}


def write_results(out_dir: str, results: dict) -> str:
    """Write ``OUT/results.json`` atomically (a killed run never leaves half a file); returns its path."""
    path = os.path.join(str(out_dir), "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    return path


def read_results(out_dir: str | os.PathLike, *, required: tuple[str, ...] = ()) -> dict:
    """The ``OUT/results.json`` of a finished run, with the fields a caller relies on checked.

    Args:
      out_dir: the run's output folder.
      required: top-level fields that must be present.

    Raises:
      FileNotFoundError: the folder has no ``results.json`` (not a finished run).
      ValueError: a required field is missing (file and field named).
    """
    path = os.path.join(str(out_dir), "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (is {out_dir} a finished run?)")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    for name in required:
        if name not in results:
            raise ValueError(f"{path}: field {name!r} is missing")
    return results


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsWriter:
    """Append records ``{"step": ..., ...}`` to a JSONL file and, optionally, TensorBoard.

    Each line is flushed at once, so a killed run loses at most the line being written.

    Args:
      path: JSONL file (created; appended to).
      tensorboard_dir: directory for tensorboardX event files, or ``None``.
      purge_step: on resume, TensorBoard events from this step on are discarded.
    """

    def __init__(self, path: str, *, tensorboard_dir: str | None = None, purge_step: int | None = None):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._file = open(path, "a")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard_dir is not None:
            import tensorboardX

            self._tb = tensorboardX.SummaryWriter(tensorboard_dir, purge_step=purge_step)

    def write(self, step: int, values: dict, *, prefix: str = "", jsonl: bool = True) -> None:
        """Log ``values`` at ``step`` (TensorBoard tags get ``prefix``; ``jsonl=False`` writes TensorBoard only)."""
        if jsonl:
            record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(prefix + k, v, int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class TimeSplit:
    """Wall time spent per phase of a run (compiled step, data, mining, eval, checkpoint).

    Example:
      >>> t = TimeSplit()
      >>> with t.phase("data"):
      ...     pass
      >>> sorted(t.seconds)[:2]
      ['checkpoint', 'data']
    """

    def __init__(self):
        self.seconds = dict.fromkeys(TIME_PHASES, 0.0)
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start

    def summary(self) -> dict[str, float]:
        """Seconds per phase, ``other`` (host bookkeeping, logging) and ``total``."""
        total = self.total
        out = dict(self.seconds)
        out["other"] = max(total - sum(self.seconds.values()), 0.0)
        out["total"] = total
        return out

    def format(self) -> str:
        return format_time_split(self.summary())


def format_time_split(split: dict[str, float]) -> str:
    """``"time split over 12.3s: step 8.1s (66%), data ..."`` from :meth:`TimeSplit.summary` output."""
    total = max(split["total"], 1e-9)
    parts = [f"{k} {v:.2f}s ({100 * v / total:.0f}%)" for k, v in split.items() if k != "total"]
    return f"time split over {split['total']:.2f}s: " + ", ".join(parts)
