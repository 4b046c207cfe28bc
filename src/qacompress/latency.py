"""A latency model of a QA encoder on this machine's OpenVINO CPU plugin, for `--target_latency`.

MACs are a poor proxy for latency: attention's L^2 products, memory traffic and INT8 kernels weigh
heads and neurons differently on every CPU. Following Kwon et al. 2022 (who measure a lookup table of
attention and FFN latency per unit count and find it linear beyond a small count), we time one-layer
copies of the model, exported to OpenVINO (INT8 when the output will be), with a grid of head counts
at the full FFN and of neuron counts at full attention, at batch 1 and `--max_seq_length`. A least-
squares fit gives the cost of one head and of one neuron; the full model is timed too, and what its
layers do not explain (embeddings, QA head, per-layer overheads) is the fixed cost. The table and the
fit are kept in the output's `compression_report.json`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qacompress.architecture import require_layout
from qacompress.benchmark import BenchmarkSettings, synthetic_inputs, time_calls
from qacompress.ondisk import PRUNING_CONFIG_ATTR
from qacompress.selection import UnitCosts
from qacompress.structured import LayerKeep, current_sizes, prune_


@dataclass
class LatencyTable:
    """Measured one-layer latencies (ms) per (heads, neurons), the fitted unit costs and the full model's."""

    seq_length: int
    quantized: bool
    points: list[dict[str, float]] = field(default_factory=list)  # {"heads", "neurons", "ms"}
    full_model_ms: float = 0.0
    costs: UnitCosts | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["costs"] = asdict(self.costs) if self.costs else None
        return out


def _ir_latency(model: nn.Module, length: int, quantize: bool, settings: BenchmarkSettings) -> float:
    """Median latency (ms) of `model` as an OpenVINO IR (INT8 by PTQ when `quantize`) at batch 1."""
    import openvino as ov

    from qacompress.export import quantize_ir, to_openvino

    names = ("input_ids", "attention_mask") if model.config.model_type == "distilbert" else (
        "input_ids", "attention_mask", "token_type_ids"
    )
    inputs = synthetic_inputs(1, length, model.config.vocab_size, names, settings.seed)
    ov_model = to_openvino(model, {k: torch.from_numpy(v) for k, v in inputs.items()})
    if quantize:
        # Speed does not depend on the ranges, so one synthetic sample calibrates enough.
        ov_model = quantize_ir(ov_model, [inputs], overflow_fix="enable")
    compiled = ov.Core().compile_model(
        ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": settings.precision}
    )
    request = compiled.create_infer_request()
    return time_calls(lambda: request.infer(inputs), settings)["median"]


def _grid(full: int, points: int) -> list[int]:
    return sorted({max(1, round(x)) for x in np.linspace(1, full, points)})


def measure_latency_table(
    model: nn.Module,
    seq_length: int,
    *,
    quantize: bool,
    points: int = 5,
    min_seconds: float = 0.5,
    progress: bool = True,
) -> LatencyTable:
    """Time one-layer copies of `model` over a grid of head and neuron counts, and the model itself."""
    layout = require_layout(model)
    sizes = current_sizes(model, layout)
    heads, neurons = max(s["heads"] for s in sizes), max(s["intermediate_size"] for s in sizes)
    settings = BenchmarkSettings(warmup=3, min_iterations=10, min_seconds=min_seconds)
    grid = [(h, neurons) for h in _grid(heads, points)] + [(heads, n) for n in _grid(neurons, points) if n != neurons]
    table = LatencyTable(seq_length=seq_length, quantized=quantize)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 1
    setattr(config, PRUNING_CONFIG_ATTR, None)
    from transformers import AutoModelForQuestionAnswering

    for h, n in tqdm(grid, desc="Layer latency table", disable=not progress, unit="point"):
        torch.manual_seed(0)
        one = AutoModelForQuestionAnswering.from_config(config).eval()
        prune_(one, [LayerKeep(heads=list(range(h)), neurons=list(range(n)))])
        table.points.append({"heads": h, "neurons": n, "ms": _ir_latency(one, seq_length, quantize, settings)})
    table.full_model_ms = _ir_latency(model.eval(), seq_length, quantize, settings)
    table.costs = fit_unit_costs(table.points, table.full_model_ms, sizes)
    return table


def fit_unit_costs(points: list[dict[str, float]], full_model_ms: float, sizes: list[dict[str, int]]) -> UnitCosts:
    """Per-head and per-neuron latency by least squares on one-layer timings (ms = c + a*heads + b*neurons);
    the fixed cost is what the model's units do not explain of its measured latency."""
    design = np.array([[1.0, p["heads"], p["neurons"]] for p in points])
    ms = np.array([p["ms"] for p in points])
    (_, per_head, per_neuron), *_ = np.linalg.lstsq(design, ms, rcond=None)
    heads = max(p["heads"] for p in points)
    neurons = max(p["neurons"] for p in points)
    # Timing noise must not make a unit look free (or worth negative time): floor at 1% of the mean cost.
    per_head = max(float(per_head), 0.01 * float(ms.mean()) / heads)
    per_neuron = max(float(per_neuron), 0.01 * float(ms.mean()) / neurons)
    variable = sum(per_head * s["heads"] + per_neuron * s["intermediate_size"] for s in sizes)
    return UnitCosts(head=per_head, neuron=per_neuron, fixed=max(0.0, float(full_model_ms) - variable))
