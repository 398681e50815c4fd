"""Test configuration: eight host devices for multi-device tests, float64 available for references, Hypothesis profiles.

XLA reads its flags when the backend starts, so they are set here, before any test imports jax. The user's own
XLA_FLAGS (e.g. ``--xla_cpu_max_isa=SSE4_2`` of ``make test-isa``) are kept; only the device count is set to 8, which
the multi-device tests need.
"""

import os

_DEVICES = "--xla_force_host_platform_device_count"
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=", 1)[0] != _DEVICES]
os.environ["XLA_FLAGS"] = " ".join([*_flags, f"{_DEVICES}=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Scripts called in-process must not turn on the persistent compilation cache (in the user's home) for the session.
os.environ.setdefault("HNJAX_COMPILE_CACHE", "none")

import hypothesis  # noqa: E402
import numerics  # noqa: E402

numerics.register_hypothesis_profiles()
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
