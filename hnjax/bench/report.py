"""Benchmark results: rows with derived columns, speed-up rows, the machine record, JSON + PNG + a markdown table."""

from __future__ import annotations

import json
import os
import platform
import sys

from hnjax import runtime
from hnjax.bench import harness
from hnjax.models import flops


def peak_tflops(device: str, dtype: str, *, override: float | None = None) -> tuple[float | None, str | None]:
    """The peak a row's MFU is measured against, and where it comes from.

    A GPU's dense data-sheet figure (:data:`hnjax.models.flops.PEAK_TFLOPS`), or on CPU the physical float32 limit
    (:func:`hnjax.bench.harness.cpu_peak_gflops`; bf16 has no faster path on a CPU without bf16 FMA units, so the
    same figure), or ``override``.
    """
    if override is not None:
        return override, "given"
    if device == "cpu":
        peak = harness.cpu_peak_gflops()
        return (None, None) if peak["gflops"] is None else (peak["gflops"] / 1000.0, peak["formula"])
    value = flops.peak_tflops(device, dtype)
    return value, None if value is None else f"{device} data sheet, dense {dtype}"


def rows(case: str, encoder: str, results: list[dict], *, seq_per_step: int, dtypes: dict[str, str],
         peak_override: float | None = None) -> list[dict]:  # fmt: skip
    """Result rows of one case: the harness's report plus ``case``, ``encoder``, ``dtype``, ``seq_per_s``,
    ``model_tflops_per_s``, ``peak_tflops`` and ``mfu`` (None where there is no FLOP count or no peak)."""
    out = []
    for r in results:
        dtype = dtypes[r["impl"]]
        model_flops = r.get("model_flops_per_step")
        peak, source = peak_tflops(r["device"], dtype, override=peak_override)
        tflops = None if model_flops is None else model_flops * r["steps_per_s"] / 1e12
        out.append(
            {
                "case": case,
                "encoder": encoder,
                **r,
                "dtype": dtype,
                "seq_per_s": r["steps_per_s"] * seq_per_step,
                "model_flops_per_step": model_flops,
                "model_tflops_per_s": tflops,
                "peak_tflops": peak,
                "peak_source": source,
                "mfu": None if tflops is None or peak is None else tflops / peak,
            }
        )
    return out


def speedups(result_rows: list[dict]) -> list[dict]:
    """One ``{"case", "encoder", "speedup", ...}`` row per case and encoder: hnjax / pytorch, and where measured
    bf16 / pytorch, hnjax / same-tricks PyTorch, hnjax / its padded path, and the loss check's relative difference."""
    out = []
    keys = dict.fromkeys((r["case"], r["encoder"]) for r in result_rows)
    for case, encoder in keys:
        by = {r["impl"]: r for r in result_rows if r["case"] == case and r["encoder"] == encoder}
        if "hnjax" not in by or "pytorch" not in by:
            continue
        rate = {name: r["seq_per_s"] for name, r in by.items()}
        row = {"case": case, "encoder": encoder, "speedup": rate["hnjax"] / rate["pytorch"]}
        for name, num, den in (("speedup_bf16", "hnjax_bf16", "pytorch"),
                               ("speedup_bf16_vs_pytorch_bf16", "hnjax_bf16", "pytorch_bf16"),
                               ("speedup_vs_same_tricks", "hnjax", "pytorch_same_tricks"),
                               ("speedup_bf16_vs_same_tricks_bf16", "hnjax_bf16", "pytorch_same_tricks_bf16"),
                               ("speedup_vs_padded", "hnjax", "hnjax_padded")):  # fmt: skip
            if num in by and den in by:
                row[name] = rate[num] / rate[den]
        ref = by["pytorch"]["loss_check"]
        row["loss_check_rel_diff"] = abs(by["hnjax"]["loss_check"] - ref) / max(abs(ref), 1e-12)
        out.append(row)
    return out


def machine() -> dict:
    """The machine and software the run measured: CPU, its physical limit, devices, versions, load average."""
    import jax  # noqa: PLC0415

    record = {
        "cpu": runtime.cpu_info(),
        "cpu_peak": harness.cpu_peak_gflops(),
        "jax_version": jax.__version__,
        "jax_device": jax.devices()[0].device_kind,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg": os.getloadavg(),
    }
    try:
        import torch  # noqa: PLC0415

        record["torch_version"] = torch.__version__
    except ImportError:
        record["torch_version"] = None
    return record


def write(out: list[dict], path: str, *, plot: bool = True) -> None:
    """Writes the JSON list and, with ``plot``, a PNG bar chart of seq_per_s per case next to it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    if plot:
        _plot([r for r in out if "impl" in r], os.path.splitext(path)[0] + ".png")


def _plot(measured: list[dict], path: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    panels = list(dict.fromkeys((r["case"], r["encoder"]) for r in measured))
    impls = list(dict.fromkeys(r["impl"] for r in measured))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (case, encoder) in zip(axes[0], panels):
        by = {r["impl"]: r["seq_per_s"] for r in measured if r["case"] == case and r["encoder"] == encoder}
        names = [i for i in impls if i in by]
        ax.bar(range(len(names)), [by[i] for i in names], color=[f"C{impls.index(i)}" for i in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{case}\n{encoder}", fontsize=9)
        ax.set_ylabel("sequences / s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result_rows: list[dict]) -> str:
    """A markdown table of the result rows (speed, speed-up inputs, tokens, FLOP/s against the peak, memory)."""

    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    lines = [
        "| case | encoder | impl | seq/s | steps/s | tokens real / computed | cands enc. / total | model TFLOP/s "
        "| of peak | compile s | first step s (cold / warm) | peak MB | loss check |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result_rows:
        tokens = f"{r['tokens_real']:.0f} / {r['tokens_computed']:.0f}" if r.get("tokens_computed") else "–"
        cands = f"{r['candidates_encoded']:.0f} / {r['candidates_total']:.0f}" if r.get("candidates_total") else "–"
        first = f"{fmt(r.get('time_to_first_step_s'), '.1f')} / {fmt(r.get('time_to_first_step_warm_s'), '.1f')}"
        lines.append(
            f"| {r['case']} | {r['encoder']} | {r['impl']} | {r['seq_per_s']:.4g} | {r['steps_per_s']:.3g} | "
            f"{tokens} | {cands} | {fmt(r['model_tflops_per_s'], '.3g')} | "
            f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')}% | {fmt(r.get('compile_s'), '.1f')} | "
            f"{first} | {r['peak_mem_mb']:.0f} | {r['loss_check']:.6g} |"
        )
    return "\n".join(lines)
