"""Training-free structured pruning of a fine-tuned QA model (`fisher_prune`), on CPU.

After Kwon et al. 2022 (*A Fast Post-Training Pruning Framework for Transformers*), for users who have
a fine-tuned model and little compute. In order:
1. Fisher importance of every head and FFN neuron on calibration features (`qacompress.compression.fisher`; no
   answers needed: the labels are drawn from the unpruned model's own predictions);
2. the most important structure under the constraint, `target_macs` (share of the encoder's
   multiply-accumulates) or `target_latency` (share of the OpenVINO latency, from layer latencies
   measured here: `qacompress.compression.latency`), chosen globally (`qacompress.compression.selection`);
3. physical removal (`qacompress.model.surgery.prune_`);
4. layer-wise least-squares re-fitting of the output projections (`qacompress.compression.refit`);
`qacompress prune` (`qacompress.jobs.prune`) runs these, then exports (INT8 by post-training
quantization unless `--quantize false`), reports and scores; `train` runs them for a
`structured_pruning` config section before its recovery training.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qacompress.compression import latency
from qacompress.compression.config import PruneConfig
from qacompress.compression.fisher import fisher_importance
from qacompress.compression.refit import refit_
from qacompress.compression.selection import Selection, encoder_macs, mac_costs, select_structure
from qacompress.core.errors import BudgetError, QACompressError
from qacompress.data.features import input_columns
from qacompress.model.architecture import require_layout
from qacompress.model.surgery import current_sizes, kept_sizes, prune_

logger = logging.getLogger(__name__)


def feature_batches(features: Any, tokenizer, batch_size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Model inputs of the first `limit` features, in padded batches of `batch_size`."""
    columns = input_columns(features)
    count = len(features) if limit is None else min(limit, len(features))
    rows = features.select_columns(columns).select(range(count))
    batches = []
    for start in range(0, count, batch_size):
        chunk = rows[start : start + batch_size]
        items = [{c: chunk[c][i] for c in columns} for i in range(len(chunk[columns[0]]))]
        batches.append(dict(tokenizer.pad(items, return_tensors="pt")))
    return batches


@dataclass
class PruneResult:
    """The pruned (and re-fitted) model, how its structure was chosen (JSON-ready), and the parameter
    masks that keep the zeroed stand-ins of emptied layers at zero if it is trained further."""

    model: nn.Module
    summary: dict[str, Any]
    frozen: dict[str, torch.Tensor]


def fisher_prune(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: PruneConfig) -> PruneResult:
    """Steps 1-4 on a copy of `model`. A budget of 1.0 keeps every unit, so nothing is scored or
    measured (`prune --target_macs 1.0` is the INT8 post-training quantization path)."""
    layout = require_layout(model)
    model.eval()
    kind, fraction = config.constraint
    if fraction >= 1.0:
        return _keep_everything(model, layout, kind)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    importance = fisher_importance(
        model, batches, label_samples=config.label_samples, seed=config.seed, progress=config.progress
    )
    timings["fisher_s"] = time.perf_counter() - t0
    hidden = model.config.hidden_size
    summary: dict[str, Any] = {"criterion": "fisher", "constraint": kind, "target": fraction,
                               "calibration_features": importance.samples, "label_samples": config.label_samples}
    if kind == "macs":
        costs = mac_costs(hidden, layout.head_size, config.seq_length)
    else:
        t0 = time.perf_counter()
        table = latency.measure_latency_table(
            model, config.seq_length, quantize=config.quantized_latency, precision=config.latency_precision,
            points=config.latency_points,
            rounds=config.latency_rounds, min_seconds=config.latency_seconds, progress=config.progress,
        )
        timings["latency_table_s"] = time.perf_counter() - t0
        costs = table.costs
        summary["latency_table"] = table.to_dict()
    try:
        selection: Selection = select_structure(importance, costs, fraction)
    except BudgetError as exc:
        # Only a latency table has a fixed cost (embeddings, QA head, per-layer overheads, as measured).
        raise BudgetError(
            f"--target_{kind} {fraction} is below the fixed cost: the smallest reachable is {exc.smallest:.3f} x the "
            f"full model's {'latency' if kind == 'latency' else 'MACs'} (embeddings, QA head and per-layer overheads "
            "are not pruned)",
            fraction=fraction, smallest=exc.smallest,
        ) from None
    except ValueError as exc:
        raise QACompressError(f"--target_{kind} {fraction}: {exc}") from None
    pruned = copy.deepcopy(model)
    frozen = prune_(pruned, selection.keep)
    summary.update(
        heads_kept=selection.heads,
        neurons_kept=selection.neurons,
        kept=[{"heads": k.heads, "neurons": k.neurons} for k in selection.keep],
        predicted_cost_fraction=round(selection.cost / selection.full_cost, 4),
        fisher_kept_fraction=round(selection.importance_kept / max(selection.importance_total, 1e-30), 4),
        encoder_macs_fraction=round(
            encoder_macs([{"heads": len(k.heads), "intermediate_size": len(k.neurons)} for k in selection.keep],
                         hidden, layout.head_size, config.seq_length)
            / encoder_macs(current_sizes(model, layout), hidden, layout.head_size, config.seq_length), 4
        ),
    )  # fmt: skip
    if config.refit:
        t0 = time.perf_counter()
        errors = refit_(model, pruned, batches[: max(1, -(-config.refit_samples // config.batch_size))],
                        ridge=config.ridge, progress=config.progress)  # fmt: skip
        timings["refit_s"] = time.perf_counter() - t0
        summary["refit_errors"] = [asdict(e) for e in errors]
    summary["timings"] = {k: round(v, 2) for k, v in timings.items()}
    logger.info(
        "kept %d heads and %d neurons (%.1f%% of the %s budget used, %.1f%% of the Fisher information)",
        selection.heads, selection.neurons, 100 * selection.cost / selection.budget, kind,
        100 * summary["fisher_kept_fraction"],
    )  # fmt: skip
    return PruneResult(pruned, summary, frozen)


def _keep_everything(model: nn.Module, layout, kind: str) -> PruneResult:
    """The result of a full budget: a copy of `model`, every head and neuron kept."""
    sizes, live = current_sizes(model, layout), kept_sizes(model, layout)
    keep = [{"heads": list(range(s["heads"])), "neurons": list(range(s["intermediate_size"]))} for s in sizes]
    summary: dict[str, Any] = {
        "criterion": "none (a full budget keeps every unit)", "constraint": kind, "target": 1.0,
        "heads_kept": sum(s["heads"] for s in live), "neurons_kept": sum(s["intermediate_size"] for s in live),
        "kept": keep, "predicted_cost_fraction": 1.0, "fisher_kept_fraction": 1.0, "encoder_macs_fraction": 1.0,
        "timings": {},
    }  # fmt: skip
    logger.info("a full %s budget keeps all %d heads and %d neurons", kind, summary["heads_kept"], summary["neurons_kept"])
    return PruneResult(copy.deepcopy(model), summary, {})
