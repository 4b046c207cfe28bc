"""Training-free structured pruning of a fine-tuned QA model (`fisher_prune`), on CPU.

After Kwon et al. 2022 (*A Fast Post-Training Pruning Framework for Transformers*), for users who have
a fine-tuned model and little compute. In order:
1. Fisher importance of every head and FFN neuron on calibration features (`qacompress.compression.fisher`; no
   answers needed: the labels are drawn from the unpruned model's own predictions);
2. the most important structure under the constraint, `target_macs` (share of the encoder's
   multiply-accumulates) or `target_latency` (share of the OpenVINO latency, from layer latencies
   measured here: `qacompress.compression.latency`), chosen globally (`qacompress.compression.selection`);
   under a latency target the chosen model's IR is then timed against the full model's, and chosen
   again where the table missed (at most `LATENCY_CHECKS` timings);
3. physical removal (`qacompress.model.surgery.prune_`; whole layers too with `remove_layers`, under a
   latency target, where removing a layer keeps more importance than keeping its overhead);
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
from qacompress.compression.fisher import Importance, fisher_importance
from qacompress.compression.refit import refit_
from qacompress.compression.selection import Selection, UnitCosts, encoder_macs, mac_costs, select_structure
from qacompress.core.errors import BudgetError, QACompressError
from qacompress.data.features import input_columns
from qacompress.model.architecture import require_layout
from qacompress.model.surgery import current_sizes, kept_sizes, prune_, remove_layers_

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
        selection: Selection = select_structure(importance, costs, fraction, remove_layers=config.remove_layers)
    except BudgetError as exc:
        # Only a latency table has a fixed cost (embeddings, QA head, per-layer overheads, as measured).
        raise BudgetError(
            f"--target_{kind} {fraction} is below the fixed cost: the smallest reachable is {exc.smallest:.3f} x the "
            f"full model's {'latency' if kind == 'latency' else 'MACs'} ({exc.what_stays})",
            fraction=fraction, smallest=exc.smallest, remove_layers=exc.remove_layers,
        ) from None  # fmt: skip
    except ValueError as exc:
        raise QACompressError(f"--target_{kind} {fraction}: {exc}") from None
    if kind == "latency":
        t0 = time.perf_counter()
        selection, checks = _meet_measured_latency(model, importance, costs, fraction, selection, config)
        summary["latency_checks"] = checks
        timings["latency_checks_s"] = time.perf_counter() - t0
    pruned = copy.deepcopy(model)
    frozen = cut_(pruned, selection)
    summary.update(
        heads_kept=selection.heads,
        neurons_kept=selection.neurons,
        kept=[{"heads": k.heads, "neurons": k.neurons, **({"removed": True} if i in selection.removed else {})}
              for i, k in enumerate(selection.keep)],  # fmt: skip
        removed_layers=selection.removed,
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


#: At most this many selections are timed against the full model; a measured share within the target
#: and at most this much (relative) below it ends the search.
LATENCY_CHECKS, LATENCY_TOLERANCE = 3, 0.05


def _meet_measured_latency(
    model: nn.Module, importance: Importance, costs: UnitCosts, fraction: float, selection: Selection,
    config: PruneConfig,
) -> tuple[Selection, list[dict[str, Any]]]:
    """Time the selection's IR against the full model's and, where the table missed the target, select
    again with the table's budget moved by a secant step through the measured shares. Returns the
    largest selection measured within the target (else the fastest measured) and every check made.
    The steps aim below the target, at the middle of the accepted band: timings of the same pair of
    IRs vary by several percent between runs (MiniLM on a 2-core EPYC: 0.52 at the check, 0.54-0.59
    after), and a model accepted a little above the target is slower than asked wherever it is timed."""
    check = latency.LatencyCheck(model, config.seq_length, quantize=config.quantized_latency,
                                 precision=config.latency_precision, rounds=config.latency_rounds,
                                 min_seconds=config.latency_seconds)  # fmt: skip
    low, aim = fraction * (1 - LATENCY_TOLERANCE), fraction * (1 - LATENCY_TOLERANCE / 2)
    budget, tried = fraction, []
    while True:
        candidate = copy.deepcopy(model)
        cut_(candidate, selection)
        measured = check(candidate)
        tried.append((selection, {"table_budget": round(budget, 4),
                                  "predicted": round(selection.cost / selection.full_cost, 4),
                                  "measured": round(measured["fraction"], 4), "ms": round(measured["ms"], 3),
                                  "full_model_ms": round(measured["full_model_ms"], 3),
                                  "heads": selection.heads, "neurons": selection.neurons,
                                  "removed_layers": selection.removed}))  # fmt: skip
        logger.info("latency check %d: table budget %.3f, predicted %.3f, measured %.3f of the full model (%.2f of "
                    "%.2f ms)", len(tried), budget, tried[-1][1]["predicted"], measured["fraction"], measured["ms"],
                    measured["full_model_ms"])  # fmt: skip
        if low <= measured["fraction"] <= fraction or len(tried) == LATENCY_CHECKS:
            break
        # A secant step through the last two checks (after the first: through the origin, the measured share
        # taken as proportional to the budget, as it is where noise makes the secant's slope not positive).
        (b0, m0), (b1, m1) = ([(0.0, 0.0)] + [(c["table_budget"], c["measured"]) for _, c in tried])[-2:]
        slope = (m1 - m0) / (b1 - b0) if b1 != b0 else 0.0
        budget = min(1.0, b1 + (aim - m1) / slope if slope > 0 else b1 * aim / m1)
        try:
            selection = select_structure(importance, costs, budget, remove_layers=config.remove_layers)
        except (BudgetError, ValueError):  # the table cannot go lower: keep what was measured
            break

    def share(attempt: tuple[Selection, dict[str, Any]]) -> float:
        return attempt[1]["measured"]

    within = [t for t in tried if share(t) <= fraction]
    chosen = max(within, key=share) if within else min(tried, key=share)
    if not within:
        logger.warning("the fastest selection measured runs at %.3f of the full model's latency, above the "
                       "target %.3f", chosen[1]["measured"], fraction)  # fmt: skip
    chosen[1]["chosen"] = True
    return chosen[0], [c for _, c in tried]


def cut_(model: nn.Module, selection: Selection) -> dict[str, torch.Tensor]:
    """Remove the selection's whole layers, then its heads and neurons, from `model` in place; the
    masks that keep emptied sublayers at zero (`prune_`)."""
    remove_layers_(model, selection.removed)
    return prune_(model, [keep for i, keep in enumerate(selection.keep) if i not in selection.removed])


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
