"""A latency model of a QA encoder on this machine's OpenVINO CPU plugin, for `--target_latency`.

MACs are a poor proxy for latency: attention's L^2 products, memory traffic and INT8 kernels weigh
heads and neurons differently on every CPU. Following Kwon et al. 2022 (who measure a lookup table of
attention and FFN latency per unit count and find it linear beyond a small count), we time one-layer
copies of the model, exported to OpenVINO (INT8 when the output will be), with a grid of head counts
at the full FFN and of neuron counts at full attention, at batch 1 and `--max_seq_length`, in the
precision the output will run in (`--inference_precision`: on CPUs with native bf16, OpenVINO's default
computes an FP32 IR in bf16, at a third of its f32 latency on an AMX Xeon). A least-squares fit gives the cost of one head and of one neuron; the full model is timed too, and what its
layers do not explain (embeddings, QA head, per-layer overheads) is the fixed cost. A copy with no
encoder layer is timed as well: the fit's intercept (one layer without units) minus its latency is what
a layer costs beyond its units, what removing a whole layer saves. The table and the fit are kept in
the output's `compression_report.json`.

All IRs are compiled first and then timed in interleaved rounds, each point's latency being the median
of its round medians: on a shared 2-core VM, load that comes and goes then slows every point alike
instead of the few timed while it lasted, and a budget given as a fraction of the full model's latency
stays put (timed one point after the other under intermittent load, four tables' per-head costs
were up to 3.2x apart; interleaved, 1.03x: `benchmarks/latency_table.py`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qacompress.compression.export import to_openvino
from qacompress.compression.selection import UnitCosts
from qacompress.core.ondisk import PRUNING_CONFIG_ATTR
from qacompress.core.timing import interleaved, interleaved_medians, synthetic_inputs
from qacompress.ir.compile import bound_inference
from qacompress.ir.ptq import quantize_ir
from qacompress.model.architecture import input_names, require_layout
from qacompress.model.surgery import LayerKeep, current_sizes, prune_

logger = logging.getLogger(__name__)


@dataclass
class LatencyTable:
    """Measured one-layer latencies (ms) per (heads, neurons), the fitted unit costs and the full model's."""

    seq_length: int
    quantized: bool
    precision: str = "f32"  # what OpenVINO computed in (the hint as this CPU resolved it)
    rounds: int = 1
    points: list[dict] = field(default_factory=list)  # {"heads", "neurons", "ms", "round_ms"}
    full_model_ms: float = 0.0
    no_layer_ms: float = 0.0  # the model without encoder layers (embeddings and QA head)
    costs: UnitCosts | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["costs"] = asdict(self.costs) if self.costs else None
        return out


class IRCall:
    """One batch-1 inference of a model as a compiled OpenVINO IR, ready to time; `precision` is what
    OpenVINO computes it in (the requested hint as this CPU resolves it)."""

    def __init__(self, model: nn.Module, length: int, quantize: bool, precision: str) -> None:
        self.inputs = synthetic_inputs(1, length, model.config.vocab_size, input_names(model.config), seed=0)
        ov_model = to_openvino(model, {k: torch.from_numpy(v) for k, v in self.inputs.items()})
        if quantize:
            # Speed does not depend on the ranges, so one synthetic sample calibrates enough.
            ov_model = quantize_ir(ov_model, [self.inputs])
        self.infer, self.precision = bound_inference(ov_model, self.inputs, precision=precision)

    def __call__(self) -> object:
        return self.infer()


def _grid(full: int, points: int) -> list[int]:
    return sorted({max(1, round(x)) for x in np.linspace(1, full, points)})


@dataclass
class LayerGrid:
    """Compiled IRs of one-layer copies of a model (one per grid point) and of the model itself, ready to
    time as often as wanted: compiling is the slow part, and timing all points together is the point."""

    seq_length: int
    quantized: bool
    grid: list[tuple[int, int]]  # (heads, neurons) per one-layer IR
    calls: list[IRCall]  # one inference per grid point, then the layerless copy's, then the full model's
    sizes: list[dict[str, int]]  # the full model's per-layer sizes


def compile_layer_grid(
    model: nn.Module,
    seq_length: int,
    *,
    quantize: bool,
    precision: str = "f32",
    points: int = 5,
    progress: bool = True,
) -> LayerGrid:
    """One-layer copies of `model` with `points` head counts at the full FFN and `points` neuron counts
    at full attention, a copy without layers, and `model` itself, as compiled OpenVINO IRs at batch 1 and
    `seq_length`, run with the inference `precision` hint (f32, bf16 or auto)."""
    layout = require_layout(model)
    sizes = current_sizes(model, layout)
    heads, neurons = max(s["heads"] for s in sizes), max(s["intermediate_size"] for s in sizes)
    grid = [(h, neurons) for h in _grid(heads, points)] + [(heads, n) for n in _grid(neurons, points) if n != neurons]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = 1
    setattr(config, PRUNING_CONFIG_ATTR, None)
    from transformers import AutoModelForQuestionAnswering

    calls = []
    for h, n in tqdm(grid, desc="Layer latency table: export", disable=not progress, unit="point"):
        torch.manual_seed(0)
        one = AutoModelForQuestionAnswering.from_config(config).eval()
        prune_(one, [LayerKeep(heads=list(range(h)), neurons=list(range(n)))])
        calls.append(IRCall(one, seq_length, quantize, precision))
    config.num_hidden_layers = 0
    torch.manual_seed(0)
    calls.append(IRCall(AutoModelForQuestionAnswering.from_config(config).eval(), seq_length, quantize, precision))
    calls.append(IRCall(model.eval(), seq_length, quantize, precision))
    return LayerGrid(seq_length=seq_length, quantized=quantize, grid=grid, calls=calls, sizes=sizes)


def time_layer_grid(grid: LayerGrid, *, rounds: int = 5, min_seconds: float = 1.0, progress: bool = True) -> LatencyTable:
    """Time every IR of `grid` in `rounds` interleaved rounds of `min_seconds / rounds` each; a point's
    latency is the median of its round medians. The table carries the fitted unit costs."""
    medians = interleaved(grid.calls, rounds, min_seconds, progress=progress, desc="Layer latency table: timing")
    full_model = grid.calls[-1]
    table = LatencyTable(grid.seq_length, grid.quantized, precision=full_model.precision, rounds=rounds)
    table.points = [
        {"heads": h, "neurons": n, "ms": float(np.median(times)), "round_ms": times}
        for (h, n), times in zip(grid.grid, medians)
    ]
    table.full_model_ms = float(np.median(medians[-1]))
    table.no_layer_ms = float(np.median(medians[-2]))
    table.costs = fit_unit_costs(table.points, table.full_model_ms, grid.sizes, table.no_layer_ms)
    return table


def measure_latency_table(
    model: nn.Module,
    seq_length: int,
    *,
    quantize: bool,
    precision: str = "f32",
    points: int = 5,
    rounds: int = 5,
    min_seconds: float = 1.0,
    progress: bool = True,
) -> LatencyTable:
    """The latency table of `model` on this machine (`compile_layer_grid`, then `time_layer_grid`)."""
    grid = compile_layer_grid(model, seq_length, quantize=quantize, precision=precision, points=points,
                              progress=progress)  # fmt: skip
    return time_layer_grid(grid, rounds=rounds, min_seconds=min_seconds, progress=progress)


class LatencyCheck:
    """A pruned candidate's IR timed against the full model's, in interleaved rounds. The table is a
    linear model fitted on one-layer copies and can miss a whole model by much: on an AMD EPYC with
    AVX-512 VNNI its fixed cost (2.87 of 8.67 ms) made a 0.5 target select a model that ran at 0.33."""

    def __init__(self, model: nn.Module, seq_length: int, *, quantize: bool, precision: str, rounds: int,
                 min_seconds: float) -> None:  # fmt: skip
        self.seq_length, self.quantize, self.precision = seq_length, quantize, precision
        self.rounds, self.min_seconds = rounds, min_seconds
        self.full = IRCall(model.eval(), seq_length, quantize, precision)

    def __call__(self, candidate: nn.Module) -> dict[str, float]:
        """`fraction`: the candidate's latency over the full model's; both in ms."""
        call = IRCall(candidate.eval(), self.seq_length, self.quantize, self.precision)
        ms = interleaved_medians({"mine": call, "full": self.full}, self.rounds, self.min_seconds)
        mine, full = ms["mine"], ms["full"]
        return {"fraction": mine / full, "ms": mine, "full_model_ms": full}


def fit_unit_costs(
    points: list[dict[str, float]], full_model_ms: float, sizes: list[dict[str, int]], no_layer_ms: float | None = None
) -> UnitCosts:
    """Per-head and per-neuron latency by least squares on one-layer timings (ms = c + a*heads + b*neurons);
    the fixed cost is what the model's units do not explain of its measured latency. With the latency of
    the model without layers, c minus it is a layer's own cost (within [0, fixed / layers])."""
    design = np.array([[1.0, p["heads"], p["neurons"]] for p in points])
    ms = np.array([p["ms"] for p in points])
    (intercept, per_head, per_neuron), *_ = np.linalg.lstsq(design, ms, rcond=None)
    heads = max(p["heads"] for p in points)
    neurons = max(p["neurons"] for p in points)
    # Timing noise must not make a unit look free (or worth negative time): floor at 1% of the mean cost.
    per_head = max(float(per_head), 0.01 * float(ms.mean()) / heads)
    per_neuron = max(float(per_neuron), 0.01 * float(ms.mean()) / neurons)
    variable = sum(per_head * s["heads"] + per_neuron * s["intermediate_size"] for s in sizes)
    if variable > full_model_ms:
        logger.warning(
            "the one-layer timings give the units %.2f ms, more than the whole model's measured %.2f ms: the fixed "
            "cost is taken as 0, and the latency target is a share of the units' modelled cost", variable, full_model_ms,
        )  # fmt: skip
    fixed = max(0.0, float(full_model_ms) - variable)
    layer = 0.0 if no_layer_ms is None else min(max(0.0, float(intercept) - no_layer_ms), fixed / len(sizes))
    return UnitCosts(head=per_head, neuron=per_neuron, fixed=fixed, layer=layer)
