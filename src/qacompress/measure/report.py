"""What pruning did to a model: `compression_report.json` and a PNG of heads and neurons kept per layer.

The figures users ask for: heads and FFN neurons kept in every layer, the share of the encoder's linear
weights removed, and the size of the OpenVINO IR before and after (both with the run's quantization,
so the difference is what pruning bought).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from qacompress.compression.config import CompressionConfig
from qacompress.compression.export import export_openvino
from qacompress.compression.quantization import quantize_model
from qacompress.core import atomic
from qacompress.ir.convert import example_inputs
from qacompress.model.surgery import kept_sizes, linear_weight_count, source_layers

REPORT_JSON = "compression_report.json"
REPORT_PNG = "compression_report.png"


def ir_size(model: nn.Module, tokenizer) -> tuple[int, int]:
    """Bytes of the OpenVINO IR of `model`: (.xml + .bin, .bin alone, i.e. the weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_openvino(model, tokenizer, tmp)
        weights = path.with_suffix(".bin").stat().st_size
        return path.stat().st_size + weights, weights


def compression_report(
    load_base: Callable[[], nn.Module],
    model: nn.Module,
    tokenizer,
    compression: CompressionConfig,
    output_dir: str | Path,
    *,
    export_ir: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare `model` with the model it started from; write the JSON report (with `extra`, e.g. how
    the structure was chosen) and the plot."""
    base = load_base()
    # Totals are the starting model's own units: a model pruned before (heads per layer differ) counts its
    # own heads and neurons, not those of the architecture it was cut from.
    before, after = kept_sizes(base), kept_sizes(model)
    # Layers pair by their place in the unpruned architecture; a layer removed whole kept nothing.
    left = dict(zip(source_layers(model), after))
    gone = {"heads": 0, "intermediate_size": 0}
    weights_before, weights_after = linear_weight_count(base), linear_weight_count(model)
    report: dict[str, Any] = {
        "layers": [
            {
                "layer": i,
                "heads_kept": left.get(source, gone)["heads"],
                "heads_total": b["heads"],
                "neurons_kept": left.get(source, gone)["intermediate_size"],
                "neurons_total": b["intermediate_size"],
                **({} if source in left else {"removed": True}),
            }
            for i, (source, b) in enumerate(zip(source_layers(base), before))
        ],
        "encoder_linear_weights_before": weights_before,
        "encoder_linear_weights_after": weights_after,
        "encoder_linear_weights_removed_pct": round(100.0 * (1 - weights_after / weights_before), 2),
        "heads_kept": sum(a["heads"] for a in after),
        "heads_total": sum(b["heads"] for b in before),
        "neurons_kept": sum(a["intermediate_size"] for a in after),
        "neurons_total": sum(b["intermediate_size"] for b in before),
    }
    if export_ir:
        if compression.quantization is not None:
            # Ranges do not change the size, so one calibration sample is enough for the reference.
            config = dataclasses.replace(compression.quantization, num_init_samples=1)
            base = quantize_model(base, config, [example_inputs(tokenizer)], source=compression.source)
        report["ir_bytes_before"], report["ir_weight_bytes_before"] = ir_size(base, tokenizer)
        report["ir_bytes_after"], report["ir_weight_bytes_after"] = ir_size(model, tokenizer)
    report.update(extra or {})
    output_dir = Path(output_dir)
    atomic.write_json(output_dir / REPORT_JSON, report)
    plot_report(report, output_dir / REPORT_PNG)
    return report


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Bars of heads and neurons kept per layer, with the headline figures in the title."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [row["layer"] for row in report["layers"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kept, total, label in (
        (axes[0], "heads_kept", "heads_total", "attention heads"),
        (axes[1], "neurons_kept", "neurons_total", "FFN neurons"),
    ):
        ax.bar(layers, [r[total] for r in report["layers"]], color="#dddddd", label="original")
        ax.bar(layers, [r[kept] for r in report["layers"]], color="#3b75af", label="kept")
        ax.set_xlabel("layer")
        ax.set_title(label)
        ax.set_xticks(layers)
        ax.legend(loc="lower right")
    title = f"{report['encoder_linear_weights_removed_pct']:.1f}% of encoder linear weights removed"
    if "ir_bytes_before" in report:
        mb = 1 / 2**20
        title += f"; IR {report['ir_bytes_before'] * mb:.1f} MB -> {report['ir_bytes_after'] * mb:.1f} MB"
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
