"""hnjax.runtime: which XLA:CPU flags a CPU gets, that a user's XLA_FLAGS win, and the compilation cache switch."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import pytest

from hnjax import runtime

AVX2 = {"extensions": ["avx", "avx2", "fma"]}
AVX512 = {"extensions": ["avx", "avx2", "avx512f", "fma"]}


def test_best_flags_by_cpu_class_and_jaxlib_version():
    assert runtime.cpu_flags(AVX512, jaxlib_version="0.10.2") == runtime.CPU_FLAG_SETS[runtime.BEST_CPU_FLAGS["avx512"]]
    assert runtime.cpu_flags(AVX2, jaxlib_version="0.10.2") == runtime.CPU_FLAG_SETS[runtime.BEST_CPU_FLAGS["avx2"]]
    assert runtime.cpu_flags({"extensions": []}, jaxlib_version="0.10.2") == ""  # no measured set: XLA's defaults
    assert runtime.cpu_flags(AVX512, jaxlib_version="0.99.0") == ""  # an XLA that may not know the flags
    for name in runtime.BEST_CPU_FLAGS.values():
        assert name in runtime.CPU_FLAG_SETS


def test_user_flags_are_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert runtime.apply_cpu_flags() is None
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv("HNJAX_XLA_FLAGS", "none")
    assert runtime.apply_cpu_flags() is None and "XLA_FLAGS" not in os.environ


def test_every_flag_set_is_known_to_this_jaxlib():
    """XLA aborts on unknown flags: each named set must at least parse with the installed jaxlib (this CPU may still
    be unable to run some, e.g. oneDNN without AVX-512, which bench_encoder reports as a crashed set-up)."""
    flags = " ".join(v for v in runtime.CPU_FLAG_SETS.values() if v)
    code = "import jax; print(jax.devices()[0].platform)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert "Unknown flag" not in proc.stderr, proc.stderr[-2000:]


def test_compile_cache_switch(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        assert runtime.enable_compile_cache("none") is None
        monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "from_env"))
        assert runtime.enable_compile_cache() == str(tmp_path / "from_env")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "from_env")
        assert (tmp_path / "from_env").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("argv", [[], ["--compile-cache", "none", "--no-xla-flags"]])
def test_script_arguments(argv):
    parser = argparse.ArgumentParser()
    runtime.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.compile_cache == (argv[1] if argv else None)
    assert args.no_xla_flags == bool(argv)
