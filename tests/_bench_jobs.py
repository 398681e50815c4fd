"""Set-up functions for the benchmark harness tests: light to import, since each runs in a spawned process."""

from __future__ import annotations

import os
import time

from hnjax.bench import harness


def sleeper(seconds: float, value: float, fail: bool = False) -> harness.Prepared:
    """An "implementation" whose step sleeps ``seconds``; reports ``HNJAX_TEST_ENV`` to show the process's env."""
    if fail:
        raise RuntimeError("set-up failed on purpose")

    def run(n: int) -> None:
        time.sleep(seconds * n)

    return harness.Prepared(run, loss_check=value, info={"env": os.environ.get("HNJAX_TEST_ENV")})
