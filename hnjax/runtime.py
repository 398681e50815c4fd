"""Process set-up for experiment scripts: XLA:CPU flags measured for this CPU, and the persistent compilation cache.

Call :func:`configure` at the start of a script, before JAX runs anything (flags are read when the backend starts):

>>> from hnjax import runtime
>>> runtime.configure(compile_cache="~/.cache/hnjax/jax")  # doctest: +SKIP

**Flags.** :data:`CPU_FLAG_SETS` names the XLA:CPU flag sets we measured against each other
(``experiments/bench_encoder.py --xla-flag-sets``, docs/benchmark.md). :func:`cpu_flags` picks the best measured set
for the CPU at hand; :func:`configure` applies it unless the user has set ``XLA_FLAGS`` (then theirs are kept,
untouched), or ``HNJAX_XLA_FLAGS=none``. XLA aborts on a
flag its build does not know, so sets are only applied for jaxlib versions they were measured with
(:data:`FLAGS_MEASURED_WITH`).

**Compilation cache.** JAX's persistent cache stores compiled programs on disk, so a second run of a script reaches its
first step without recompiling (tens of seconds per batch shape on a small CPU). On by default in the scripts, at
``$HNJAX_COMPILE_CACHE`` or ``~/.cache/hnjax/jax``; ``--compile-cache none`` turns it off.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform

logger = logging.getLogger(__name__)

# Flag sets of XLA:CPU that were measured against each other (experiments/bench_encoder.py --xla-flag-sets);
# "default" is XLA's own.
CPU_FLAG_SETS: dict[str, str] = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "xnn_dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "xnn_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
}

# The best measured set by CPU class ("avx512" when the CPU has avx512f, else "avx2"); see docs/benchmark.md for the
# measurements behind each entry.
BEST_CPU_FLAGS: dict[str, str] = {"avx512": "onednn", "avx2": "default"}

# jaxlib versions (major.minor prefixes) whose XLA knows every flag of CPU_FLAG_SETS.
FLAGS_MEASURED_WITH = ("0.10.",)

CACHE_ENV = "HNJAX_COMPILE_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "hnjax", "jax")


def cpu_info() -> dict:
    """The CPU as Linux describes it: model name, family/model, vector extensions, reported clock, usable CPUs."""
    out: dict = {"cpus": len(os.sched_getaffinity(0)), "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return out
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, value)
    flags = set(fields.get("flags", "").split())
    out.update(
        model_name=fields.get("model name"),
        family=int(fields["cpu family"]) if fields.get("cpu family", "").isdigit() else None,
        model=int(fields["model"]) if fields.get("model", "").isdigit() else None,
        vendor=fields.get("vendor_id"),
        mhz=float(fields["cpu MHz"]) if "cpu MHz" in fields else None,
        extensions=sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")),
    )
    return out


def cpu_class(info: dict | None = None) -> str | None:
    """ "avx512", "avx2" or None (other CPUs: no measured flag set)."""
    ext = set((cpu_info() if info is None else info).get("extensions") or ())
    if "avx512f" in ext:
        return "avx512"
    if "avx2" in ext:
        return "avx2"
    return None


def cpu_flags(info: dict | None = None, *, jaxlib_version: str | None = None) -> str:
    """The best measured XLA:CPU flags for this CPU and jaxlib ("" when none was measured or none helps)."""
    if jaxlib_version is None:
        try:
            import jaxlib  # noqa: PLC0415

            jaxlib_version = jaxlib.__version__
        except ImportError:
            return ""
    if not jaxlib_version.startswith(FLAGS_MEASURED_WITH):
        return ""
    kind = cpu_class(info)
    return CPU_FLAG_SETS[BEST_CPU_FLAGS[kind]] if kind in BEST_CPU_FLAGS else ""


def apply_cpu_flags() -> str | None:
    """Sets ``XLA_FLAGS`` to :func:`cpu_flags` unless the user set ``XLA_FLAGS`` or ``HNJAX_XLA_FLAGS=none``.

    Returns:
        The flags set, or None when the environment was left alone.
    """
    if "XLA_FLAGS" in os.environ:
        logger.info("XLA_FLAGS set by the user, kept: %r", os.environ["XLA_FLAGS"])
        return None
    if os.environ.get("HNJAX_XLA_FLAGS", "").lower() == "none":
        return None
    flags = cpu_flags()
    if flags:
        os.environ["XLA_FLAGS"] = flags
        logger.info("XLA_FLAGS=%r (best measured for this CPU; set XLA_FLAGS to override)", flags)
    return flags or None


def enable_compile_cache(directory: str | os.PathLike | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` (default ``$HNJAX_COMPILE_CACHE`` or
    ``~/.cache/hnjax/jax``; "none" turns it off) and caches every program, however quick to compile.

    Returns:
        The cache directory, or None when off.
    """
    import jax  # noqa: PLC0415

    if directory is None:
        directory = os.environ.get(CACHE_ENV, DEFAULT_CACHE)
    directory = os.fspath(directory)
    if directory.lower() == "none":
        return None
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def configure(*, compile_cache: str | os.PathLike | None = None, xla_flags: bool = True) -> dict:
    """Applies the measured XLA:CPU flags (:func:`apply_cpu_flags`) and turns on the compilation cache.

    Call before JAX runs anything. Returns ``{"xla_flags", "compile_cache"}`` for the run's records.
    """
    flags = apply_cpu_flags() if xla_flags else None
    cache = enable_compile_cache(compile_cache)
    return {"xla_flags": os.environ.get("XLA_FLAGS", "") if flags is None else flags, "compile_cache": cache}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compile-cache DIR|none`` and ``--no-xla-flags`` for experiment scripts (see :func:`from_args`)."""
    parser.add_argument(
        "--compile-cache",
        default=None,
        help=f"persistent compilation cache directory, or 'none' (default ${CACHE_ENV} or {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--no-xla-flags",
        action="store_true",
        help="do not apply the best measured XLA:CPU flags (a user-set XLA_FLAGS is always kept)",
    )


def from_args(args: argparse.Namespace) -> dict:
    """:func:`configure` from the flags of :func:`add_arguments`."""
    return configure(compile_cache=args.compile_cache, xla_flags=not args.no_xla_flags)
