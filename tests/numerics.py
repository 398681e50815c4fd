"""One tolerance policy for every floating-point comparison in the test suite.

float32 results are not bit-reproducible across machines: the vector width (SSE, AVX2, AVX-512, GPU warps), the
thread count, XLA's fusion decisions, the order of reductions and, on GPUs, TF32 matmuls all change the last bits.
A tolerance tuned to one machine's kernels (``rtol=1e-6, atol=0``) fails on another; a loose one hides real defects.
So every comparison here allows, elementwise,

    |actual - desired| <= atol + rtol * |desired|,     atol = ulps * eps * scale,

where ``eps`` is the machine epsilon of the computation (float32 unless the result is a float64 array), ``scale``
is the largest magnitude involved (by default ``max|desired|``; pass the magnitude of the inputs or intermediates
when the result is a small difference of large numbers, e.g. a loss near 0 computed from logits of size 1/τ), and
``ulps`` (default 64) is how many units in the last place of that scale rounding may cost: a few dozen float32
additions or products in any order. The relative term (default 1e-5, the figure DESIGN.md holds losses, scores and
gradients to against a float64 reference) covers the entries near the largest.

Exact equality (``np.testing.assert_array_equal``) stays where equality is the property: bit-identical resume,
padding that must be skipped (not just added as zeros), gradients that must be exactly zero, integer ids.

Hypothesis: ``tests/conftest.py`` loads the ``ci`` profile (derandomized: the same examples on every machine and run)
unless ``HYPOTHESIS_PROFILE=explore`` (or ``--hypothesis-profile=explore``) selects the exploration profile, which
draws fresh random examples, ten times as many. Tests take their example count from :func:`examples`.
"""

from __future__ import annotations

import numpy as np
from hypothesis import settings

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23 ≈ 1.19e-7
RTOL = 1e-5
ULPS = 64
EXPLORE_FACTOR = 10  # max_examples of the explore profile / Hypothesis' default (100)


def _eps(x) -> float:
    """Machine epsilon of the computation that produced ``x``: float64 for float64 arrays, otherwise float32.

    bf16/fp16 results are float32 computations rounded once at the end: that rounding is relative to each entry, so
    tests of them pass an ``rtol`` of the format's precision (2^-8 for bf16) and keep the float32 absolute term.
    """
    if not hasattr(x, "dtype"):  # float(loss), lists read from JSON: the computation's dtype is gone; assume float32
        return EPS32
    if x.dtype == np.float64:  # jax.enable_x64; do not cast a float32 result to float64 before comparing
        return float(np.finfo(np.float64).eps)
    return EPS32


def tolerance(desired, *, atol=None, scale=None, ulps=ULPS, eps=None, actual=None) -> float:
    """The absolute tolerance of the policy: ``atol`` if given, else ``ulps * eps * scale`` (see the module doc)."""
    if atol is not None:
        return float(atol)
    desired = np.asarray(desired, np.float64)
    if scale is None:
        finite = np.abs(desired[np.isfinite(desired)])
        scale = float(finite.max()) if finite.size else 0.0
    if eps is None:
        eps = _eps(actual) if actual is not None else EPS32
    return float(ulps * eps * scale)


def assert_close(actual, desired, *, rtol=RTOL, atol=None, scale=None, ulps=ULPS, eps=None, err_msg=""):
    """Asserts ``|actual - desired| <= atol + rtol·|desired|`` elementwise, with atol scaled to the magnitudes involved.

    Args:
      actual: the result under test (any array-like, including jax arrays and bf16); shapes must broadcast.
      desired: the reference (ideally float64, computed independently of the code under test).
      rtol: relative term (default 1e-5).
      atol: an explicit absolute term; overrides the scaled default (use for a known error bound, e.g. bf16 inputs).
      scale: the largest magnitude involved in the computation (default ``max|desired|`` over finite entries).
      ulps: units in the last place of ``scale`` allowed for rounding (default 64).
      eps: machine epsilon (default: that of ``actual``'s dtype; float32 for Python scalars).
      err_msg: appended to the failure message.

    NaN and ±inf must occur at the same positions in both.
    """
    tol = tolerance(desired, atol=atol, scale=scale, ulps=ulps, eps=eps, actual=actual)
    msg = f"tolerance: atol={tol:.3g} rtol={rtol:.3g}" + (f"; {err_msg}" if err_msg else "")
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), np.asarray(desired, np.float64), rtol=rtol, atol=tol, err_msg=msg
    )


def assert_trees_close(actual, desired, **kwargs):
    """:func:`assert_close` leaf by leaf over two pytrees of the same structure (parameters, gradients).

    The absolute term scales with the largest magnitude in the whole of ``desired`` (unless ``scale`` is given): the
    rounding error of one gradient leaf comes from the whole backward pass, so a leaf whose exact value is zero (the
    gradient of an attention key bias, which softmax ignores) holds rounding noise of the other leaves' size, not of
    its own.
    """
    import jax  # imported here so that conftest can import this module before XLA_FLAGS are final

    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_d, tree_d = jax.tree.flatten(desired)
    assert tree_a == tree_d, f"tree structures differ: {tree_a} vs {tree_d}"
    if kwargs.get("scale") is None:
        finite = [np.abs(x)[np.isfinite(x)] for x in (np.asarray(d, np.float64) for d in leaves_d)]
        kwargs["scale"] = max((float(f.max()) for f in finite if f.size), default=0.0)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(desired)[0]]
    for path, a, d in zip(paths, leaves_a, leaves_d):
        assert np.shape(a) == np.shape(d), f"{path}: shape {np.shape(a)} vs {np.shape(d)}"
        assert_close(a, d, err_msg=f"leaf {path}", **kwargs)


def register_hypothesis_profiles() -> None:
    """``ci`` (derandomized, no example database: a red run replays anywhere) and ``explore`` (random, 10× examples)."""
    settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
    settings.register_profile("explore", max_examples=100 * EXPLORE_FACTOR, deadline=None, print_blob=True)


def assert_same_ranking(found, want, ref_scores, **kwargs):
    """Ranked ids [Q, k] equal position by position, except that near-ties may come in either order.

    ``found`` and ``want`` index the columns of ``ref_scores`` [Q, N] (float64 reference scores; -1 in ``found`` is
    padding). Where ``found`` and ``want`` differ, the reference scores of the two ids must be equal under
    :func:`assert_close` (scale: the row's largest score): the order of near-tied scores depends on the machine's
    float32 rounding. Ids within a row must be distinct, so a duplicated id cannot stand in for a tied one.
    """
    found, want, ref_scores = np.asarray(found), np.asarray(want), np.asarray(ref_scores, np.float64)
    assert found.shape == want.shape, (found.shape, want.shape)
    for i, (f, w) in enumerate(zip(found, want)):
        real = f[f >= 0]
        assert len(set(real.tolist())) == len(real), f"row {i}: duplicate ids {f}"
        moved = f != w
        if moved.any():
            row = {"scale": float(np.max(np.abs(ref_scores[i]))), **kwargs}
            assert_close(ref_scores[i, f[moved]], ref_scores[i, w[moved]], err_msg=f"row {i}: {f} vs {w}", **row)


def examples(n: int) -> int:
    """Hypothesis example count: ``n`` under the CI profile, scaled with the loaded profile's max_examples (×10)."""
    return max(1, n * settings.default.max_examples // 100)
