#!/usr/bin/env bash
# The GPU table in one command: hnjax and PyTorch training steps in fp32 and bf16, with model FLOP/s and MFU against
# the device's data-sheet peak, on MiniLM- and BERT-base-shaped encoders with random weights built from a config
# (no network and no model files needed). Needs jax with CUDA, flax, optax, orbax, torch and transformers; hnjax
# installed with `pip install --no-deps -e .` is enough (FAISS, tensorboardX and the bundled checkpoint are not used).
#
#   experiments/gpu_benchmark.sh [OUT.json] [extra benchmark.py flags]
#
# Writes OUT.json (default runs/benchmark_gpu.json), a PNG next to it, and logs a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/benchmark_gpu.json}"
shift || true
python - <<'PY'
import jax
devices = jax.devices()
print("jax", jax.__version__, "devices:", devices)
if devices[0].platform != "gpu":
    raise SystemExit("no GPU visible to JAX: install a CUDA build of jax (pip install -U 'jax[cuda12]')")
PY
exec python experiments/benchmark.py --gpu-table --out "$out" "$@"
