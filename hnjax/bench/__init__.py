"""Benchmark harness and cases: hnjax's training steps against the PyTorch reference, measured in one run.

- :mod:`hnjax.bench.harness`: one process per implementation, interleaved timing rounds, peak memory, the machine's
  description and physical FLOP/s limit.
- :mod:`hnjax.bench.inputs`: generated batches and their layouts (padded, bucketed, de-duplicated, packed).
- :mod:`hnjax.bench.steps`: hnjax's compiled steps; :mod:`hnjax.bench.torch_reference`: the PyTorch side (imported
  only by PyTorch workers).

``experiments/benchmark.py`` lists the cases and implementations and writes the table.
"""
