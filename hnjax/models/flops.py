"""Model FLOPs of a BERT-family encoder and model FLOPs utilisation (MFU).

MFU (Chowdhery et al., 2022, PaLM, Appendix B) is the FLOPs the model needs per second, divided by the peak FLOPs
of the hardware. The count here is the matrix-multiply work of the encoder over the token grid it is given (padding
included: it is executed), forward 2·m·n·k per product, training = 3 × forward (the backward pass costs twice the
forward). Embedding lookups, LayerNorm, softmax, activations and the optimizer are not counted, as in PaLM's
definition; XLA's own count of a compiled program (``cost_analysis()["flops"]``) includes them and is larger for
narrow models.

>>> from hnjax.models import EncoderConfig, flops
>>> cfg = EncoderConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
>>> round(flops.encoder_flops(cfg, batch=1, length=128, training=False) / 1e9, 3)  # GFLOP of one forward pass
2.869
"""

from __future__ import annotations

from hnjax.models import bert

# Dense peak TFLOP/s by (device kind substring, compute dtype) from the vendors' data sheets (NVIDIA H100 Tensor
# Core GPU datasheet, SXM5 / PCIe columns, "without sparsity"; NVIDIA H200 datasheet; NVIDIA A100 datasheet).
# "fp32" is the TF32 tensor-core peak: XLA runs float32 matrix multiplies on TF32 tensor cores on these GPUs unless
# the precision is raised (``jax.default_matmul_precision("highest")``).
PEAK_TFLOPS: dict[tuple[str, str], float] = {
    ("H200", "bf16"): 989.4,
    ("H200", "fp32"): 494.7,
    ("H100 PCIe", "bf16"): 756.0,
    ("H100 PCIe", "fp32"): 378.0,
    ("H100", "bf16"): 989.4,
    ("H100", "fp32"): 494.7,
    ("A100", "bf16"): 312.0,
    ("A100", "fp32"): 156.0,
}


def encoder_flops(config: bert.EncoderConfig, batch: int, length: int, *, training: bool = True) -> float:
    """Matrix-multiply FLOPs of the encoder over ``batch`` sequences of ``length`` tokens (3× forward if training).

    Per layer and sequence (D = hidden, F = intermediate, L = length): Q, K, V and output projections 4·2·L·D², the
    attention scores and their weighted sum 2·2·L²·D, the feed-forward 2·2·L·D·F.
    """
    if batch < 0 or length < 0:
        raise ValueError(f"batch and length: expected >= 0, got {batch}, {length}")
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_sequence = n * (8 * length * d * d + 4 * length * length * d + 4 * length * d * f)
    return float(batch * per_sequence * (3 if training else 1))


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of a known accelerator (``jax.devices()[0].device_kind``) for ``dtype`` "bf16"/"fp32".

    None when the device is not in :data:`PEAK_TFLOPS` (CPUs, unknown GPUs): pass the figure yourself then.
    """
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype: expected 'bf16' or 'fp32', got {dtype!r}")
    for (name, kind), value in PEAK_TFLOPS.items():  # more specific names come first
        if name in device_kind and kind == dtype:
            return value
    return None


def mfu(model_flops_per_step: float, steps_per_s: float, peak_tflops_value: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: ``model_flops_per_step · steps_per_s / peak``; None without a peak."""
    if peak_tflops_value is None:
        return None
    if peak_tflops_value <= 0:
        raise ValueError(f"peak TFLOP/s: expected a positive value, got {peak_tflops_value}")
    return model_flops_per_step * steps_per_s / (peak_tflops_value * 1e12)
