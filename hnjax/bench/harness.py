"""Benchmark harness: one process per implementation, interleaved timing rounds, peak memory, machine description.

A *job* is one implementation of one case: a set-up function, importable by name, that builds everything (model,
data, compiled step) and returns a :class:`Prepared` whose ``run(n)`` does n steps and waits for them. Each job runs
in its own spawned process, so that its peak resident memory (``ru_maxrss``) is its own and environment settings
such as ``XLA_FLAGS`` or a compilation-cache directory apply from the start. Jobs are set up one after the other,
then ``rounds`` timing rounds run the jobs in turn for about ``round_seconds`` each, so that load changes of a shared
machine hit all of them alike; the reported rate is the median over rounds.

>>> from hnjax.bench import harness
>>> jobs = [harness.Job("a", setup_a, {"size": 8}), harness.Job("b", setup_b, {"size": 8})]  # doctest: +SKIP
>>> results = harness.run_interleaved(jobs, rounds=3, round_seconds=2.0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from hnjax import runtime

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Prepared:
    """An implementation ready to time.

    Attributes:
        run: ``run(n)`` does n steps and blocks until they are done.
        loss_check: a value computed on the first batch with dropout off, equal across implementations of a case.
        compile_s: seconds spent compiling (None for eager implementations).
        info: further fields of the result row (FLOPs, token counts, compiled shapes, …).
        device: kind of device the steps run on ("cpu" or the accelerator's name).
        peak_device_mem_mb: callable returning the accelerator's peak allocation in MB, or None.
    """

    run: Callable[[int], None]
    loss_check: float | None = None
    compile_s: float | None = None
    info: dict = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    peak_device_mem_mb: Callable[[], float | None] | None = None


@dataclasses.dataclass(frozen=True)
class Job:
    """One implementation to set up and time in its own process.

    Attributes:
        name: label of the implementation (the result row's ``impl``).
        setup: module-level function ``setup(**kwargs) -> Prepared`` (pickled by name into the process).
        kwargs: its arguments (picklable).
        env: environment variables set for the process before it starts (e.g. ``XLA_FLAGS``).
        threads: CPUs the process may use (None: all); XLA:CPU sizes its thread pool by the CPUs it may use (a
            PyTorch set-up sets its own thread count).
    """

    name: str
    setup: Callable[..., Prepared]
    kwargs: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    threads: int | None = None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux ``ru_maxrss`` is in kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def limit_cpus(threads: int | None) -> None:
    """Restricts this process to ``threads`` CPUs when fewer than available (XLA:CPU has no thread-count flag)."""
    available = sorted(os.sched_getaffinity(0))
    if threads is not None and threads < len(available):
        os.sched_setaffinity(0, available[:threads])


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Sets environment variables for the duration of the block (a spawned process inherits them)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(conn, job: Job, started: float) -> None:
    """Runs in the job's process: set up, report, then answer ("run", n) / ("stop",) commands."""
    try:
        limit_cpus(job.threads)
        t0 = time.perf_counter()
        prepared = job.setup(**job.kwargs)
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        prepared.run(1)  # first execution after compilation, allocator growth
        to_first_step = time.time() - started  # process start → end of the first step
        first_run_s = time.perf_counter() - t1
        t0 = time.perf_counter()
        prepared.run(1)
        conn.send(
            {
                "loss_check": prepared.loss_check,
                "compile_s": prepared.compile_s,
                "setup_s": setup_s,
                "time_to_first_step_s": to_first_step,
                "first_run_s": first_run_s,
                "probe_step_s": time.perf_counter() - t0,
                "device": prepared.device,
                **prepared.info,
            }
        )
        while True:
            command = conn.recv()
            if command[0] == "stop":
                device_mb = prepared.peak_device_mem_mb() if prepared.peak_device_mem_mb else None
                conn.send({"peak_mem_mb": peak_rss_mb(), "peak_device_mem_mb": device_mb})
                return
            t0 = time.perf_counter()
            prepared.run(command[1])
            conn.send(time.perf_counter() - t0)
    except Exception as e:  # reported to the parent, which raises
        conn.send({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})


def _recv(conn, what: str, proc) -> Any:
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"{what}: the worker process died (exit code {proc.exitcode})")
    message = conn.recv()
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(f"{what} failed in its worker process:\n{message['error']}")
    return message


def run_interleaved(
    jobs: list[Job],
    *,
    rounds: int,
    round_seconds: float,
    progress: Callable[[], None] | None = None,
    skip_failed: bool = False,
) -> list[dict]:
    """Sets each job up in its own process, one after the other, then times them round-robin.

    Args:
        jobs: the implementations (distinct names).
        rounds: timing rounds; each runs every job for about ``round_seconds`` (at least one step).
        round_seconds: target seconds per job and round (the step count is fixed from a probe step).
        progress: called after each set-up and each round.
        skip_failed: a job whose set-up fails (an exception, or a crash such as an illegal instruction from an
            unsupported XLA flag) is reported as ``{"impl", "error"}`` and left out of the rounds, instead of
            raising.

    Returns:
        One dict per job: ``impl``, ``steps_per_s`` (median over rounds), ``steps_per_s_rounds``,
        ``steps_per_round``, ``peak_mem_mb`` (the process's peak resident memory), ``peak_device_mem_mb``,
        ``loadavg_rounds`` (1-minute load average after each round) and the set-up report: ``loss_check``,
        ``compile_s``, ``setup_s``, ``time_to_first_step_s`` (process start to the end of the first step),
        ``device`` and the job's ``info`` fields.
    """
    if rounds < 1 or round_seconds <= 0:
        raise ValueError(f"rounds and round_seconds: expected ≥ 1 and > 0, got {rounds}, {round_seconds}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs: expected distinct names, got {names}")
    context = multiprocessing.get_context("spawn")
    procs, info, failed = {}, {}, {}
    try:
        for job in jobs:
            parent, child = context.Pipe()
            proc = context.Process(target=_worker, args=(child, job, time.time()), daemon=True)
            with environment(job.env):
                proc.start()
            try:
                info[job.name] = _recv(parent, f"{job.name} set-up", proc)
            except RuntimeError as e:
                if not skip_failed:
                    raise
                logger.warning("%s", e)
                failed[job.name] = str(e)
                proc.join(timeout=30)
                continue
            procs[job.name] = (proc, parent)
            logger.info("%s ready: %s", job.name, {k: v for k, v in info[job.name].items() if not isinstance(v, list)})
            if progress:
                progress()
        names = [n for n in names if n in info]
        steps = {n: max(1, round(round_seconds / max(info[n]["probe_step_s"], 1e-6))) for n in names}
        seconds = {n: [] for n in names}
        load = []
        for r in range(rounds):
            for n in names:
                proc, conn = procs[n]
                conn.send(("run", steps[n]))
                seconds[n].append(_recv(conn, f"{n} round {r}", proc))
            load.append(os.getloadavg()[0])
            logger.info("round %d: seconds per step %s", r, {n: round(seconds[n][-1] / steps[n], 4) for n in names})
            if progress:
                progress()
        for n in names:
            proc, conn = procs[n]
            conn.send(("stop",))
            info[n].update(_recv(conn, f"{n} stop", proc))
    finally:
        for proc, _ in procs.values():
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    out = []
    for job in jobs:
        n = job.name
        if n in failed:
            out.append({"impl": n, "error": failed[n]})
            continue
        rates = [steps[n] / s for s in seconds[n]]
        out.append(
            {
                "impl": n,
                "steps_per_s": float(np.median(rates)),
                "steps_per_s_rounds": rates,
                "steps_per_round": steps[n],
                "loadavg_rounds": load,
                **info[n],
            }
        )
    return out


def run_once(job: Job) -> dict:
    """Sets a job up in its own process, runs its first step and stops: the time to first step (e.g. with a warm
    compilation cache) and the set-up report, without timing rounds."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=_worker, args=(child, job, time.time()), daemon=True)
    with environment(job.env):
        proc.start()
    try:
        report = _recv(parent, f"{job.name} set-up", proc)
        parent.send(("stop",))
        report.update(_recv(parent, f"{job.name} stop", proc))
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    return {"impl": job.name, **report}


def _call(conn, fn, kwargs) -> None:
    try:
        conn.send({"result": fn(**kwargs), "peak_mem_mb": peak_rss_mb()})
    except Exception as e:  # reported to the parent, which raises
        conn.send({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})


def call_in_process(
    fn: Callable[..., Any], kwargs: dict, *, env: dict | None = None, timeout: float | None = None
) -> tuple[Any, float]:
    """Runs ``fn(**kwargs)`` in a fresh spawned process (its own memory high-water mark and environment).

    Args:
        fn: module-level function (pickled by name); its result must be picklable.
        kwargs: its arguments.
        env: environment variables for the process.
        timeout: seconds to wait before the process is ended and a ``TimeoutError`` raised.

    Returns:
        (result, the process's peak resident memory in MB).

    Raises:
        RuntimeError: the function raised (the message holds its traceback) or the process died.
        TimeoutError: it ran past ``timeout``.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=_call, args=(child, fn, kwargs), daemon=True)
    with environment(env or {}):
        proc.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not parent.poll(1.0):
            if not proc.is_alive():
                raise RuntimeError(f"{getattr(fn, '__name__', fn)}: the process died (exit code {proc.exitcode})")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{getattr(fn, '__name__', fn)}: no result within {timeout} s")
        message = parent.recv()
    finally:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
    if "error" in message:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its process:\n{message['error']}")
    return message["result"], message["peak_mem_mb"]


def compiled_memory(compiled) -> dict[str, int]:
    """XLA's memory analysis of a compiled program: argument, output, temporary and aliased bytes, and the peak
    estimate arguments + outputs + temporaries − aliased."""
    mem = compiled.memory_analysis()
    out = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
    }
    out["peak_estimate_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


class PeakMemory:
    """Peak resident memory above the level at entry (MB), sampled every 5 ms from ``/proc/self/statm``.

    >>> with PeakMemory() as mem:  # doctest: +SKIP
    ...     build_index()
    >>> mem.peak_mb  # doctest: +SKIP
    """

    def __enter__(self) -> PeakMemory:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# ---------------------------------------------------------------------------------------------------- the machine


def cpu_peak_gflops(info: dict | None = None, *, fma_units: int | None = None, ghz: float | None = None) -> dict:
    """The CPU's physical float32 limit: cores × FMA units per core × vector lanes × 2 FLOP × clock.

    Lanes: 16 float32 with AVX-512, 8 with AVX2/FMA. FMA units per core: 2 on the x86 server cores of the last
    decade (AMD Zen 2–4, Intel Skylake-SP and later Xeon Gold/Platinum); pass ``fma_units`` where it differs. Clock:
    the MHz that /proc/cpuinfo reports (a virtual machine's nominal clock; turbo may run higher) unless ``ghz``.

    Returns:
        ``{"gflops", "cores", "fma_units", "lanes", "ghz", "formula"}``; ``gflops`` is None when the clock is
        unknown.
    """
    info = runtime.cpu_info() if info is None else info
    ext = set(info.get("extensions") or ())
    lanes = 16 if "avx512f" in ext else 8 if {"avx2", "fma"} <= ext else 4
    units = 2 if fma_units is None else fma_units
    clock = ghz if ghz is not None else (info["mhz"] / 1000.0 if info.get("mhz") else None)
    cores = info.get("cpus", 1)
    gflops = None if clock is None else cores * units * lanes * 2 * clock
    formula = f"{cores} cores × {units} FMA units × {lanes} fp32 lanes × 2 FLOP × {clock} GHz"
    return {"gflops": gflops, "cores": cores, "fma_units": units, "lanes": lanes, "ghz": clock, "formula": formula}


def xla_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (``cost_analysis()["flops"]``); NaN where the backend gives none."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax returns one dict per device
    return float((cost or {}).get("flops", float("nan")))


def jax_device() -> tuple[str, Callable[[], float | None] | None]:
    """Kind of the first JAX device and a reader of its peak memory in MB (None on CPU)."""
    import jax  # noqa: PLC0415  (imported in the worker, after its environment is set)

    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu", None

    def peak() -> float | None:
        stats = device.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None

    return device.device_kind, peak
