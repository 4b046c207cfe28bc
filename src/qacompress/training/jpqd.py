"""JPQD: joint movement pruning, quantization and distillation, in two training phases.

Order (chosen for NNCF 3, explained in docs/concepts.md, measured in docs/results.md):
1. **Pruning warm-up, in float** (up to the end of epoch `warmup_end_epoch`, counted in the config's
   `steps_per_epoch` when given): importance scores learn which blocks,
   rows and columns matter while the threshold rises; the teacher distils throughout.
2. **Resolve and remove**: masks become whole heads and FFN neurons, which are cut out of the model
   (`qacompress.model.surgery`). What remains is a smaller, dense model.
3. **QAT fine-tuning** (the remaining steps of the run): NNCF quantizers are inserted into
   the smaller model, calibrated on training features, and trained with distillation to the end.
NNCF 3 can only quantize a linear whose weight is a plain parameter, so masks and quantizers cannot
share a layer; removing the pruned structure first also makes every step of phase 3 cheaper. One
learning-rate schedule spans both phases. Phase 1 checkpoints live in `output_dir/checkpoint-N`
(scores and schedule position in `compression_state.pt`), the pruned float model in
`output_dir/pruned`, phase 3 checkpoints in `output_dir/finetune/checkpoint-N`; re-running the same
command resumes whichever phase was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from qacompress.compression.checkpoint import apply_compression_state, load_compression_state, load_qa_model
from qacompress.compression.config import CompressionConfig
from qacompress.compression.export import save_model_dir
from qacompress.compression.movement import MovementPruner, attach_movement_pruning
from qacompress.core import atomic
from qacompress.core.errors import ConfigError
from qacompress.core.ondisk import (
    FROZEN_MASKS,
    KEPT,
    MOVEMENT_SCHEDULE,
    PRUNED_DIR,
    WARMUP_RESULTS,
)
from qacompress.model.surgery import kept_sizes
from qacompress.training.phases import Run, fit, resolve_resume, steps_per_epoch, total_steps
from qacompress.training.pruned import barrier, finetune_pruned, freeze_zeros, start_afresh
from qacompress.training.trainer import MovementScheduleCallback

logger = logging.getLogger(__name__)


def plan_steps(compression: CompressionConfig, args: Any, num_features: int) -> tuple[int, int, int]:
    """(steps per schedule epoch, last step of the warm-up, total steps) of a JPQD run.

    A schedule epoch is `steps_per_epoch` from the config when given (NNCF's meaning), else a real
    epoch; the run is `--max_steps` or `--num_train_epochs` real epochs.
    """
    config = compression.movement_sparsity
    real = steps_per_epoch(num_features, args)
    total = total_steps(num_features, args)
    per_epoch = config.steps_per_epoch or real
    warmup_end = config.warmup_end_epoch * per_epoch
    if warmup_end > total:
        raise ConfigError(
            f"the pruning warm-up ends at step {warmup_end} (warmup_end_epoch {config.warmup_end_epoch} x "
            f"{per_epoch} steps) but training has only {total} steps: train longer or end the warm-up earlier",
            file=compression.source,
            key="movement_sparsity.params.warmup_end_epoch",
        )
    return per_epoch, warmup_end, total


def warmup_training_args(args: Any, warmup_end: int) -> Any:
    """The warm-up phase's arguments: its evaluations are logged, but none of its checkpoints is
    eligible as the best model (a masked float model is not what ships, and its F1 falls as the
    threshold rises, so "best" would undo the pruning); best is chosen within fine-tuning only."""
    keep_metric = args.save_strategy == "best"  # Trainer needs the metric to save on improvement
    return dataclasses.replace(
        args, max_steps=warmup_end, load_best_model_at_end=False,
        metric_for_best_model=args.metric_for_best_model if keep_metric else None,
    )  # fmt: skip


def train_jpqd(run: Run) -> tuple[nn.Module, dict]:
    """Run both phases (resuming where a previous run stopped); returns the final model and metrics."""
    compression, args, data = run.compression, run.args, run.data
    mconfig = compression.movement_sparsity
    per_epoch, warmup_end, total = plan_steps(compression, args, len(data.train_features))
    out = Path(args.output_dir)
    start_afresh(args)
    metrics: dict[str, Any] = {}

    if not (out / PRUNED_DIR / "config.json").is_file():
        model = load_qa_model(run.model_path, **run.load)
        pruner = attach_movement_pruning(model, mconfig, compression.source)
        pruner.steps_per_epoch = per_epoch
        resume = resolve_resume(args, out)
        if resume:
            state = load_compression_state(resume)
            apply_compression_state(model, state)
            pruner.load_schedule_state(state[MOVEMENT_SCHEDULE])
        warmup_args = warmup_training_args(args, warmup_end)
        model, phase = fit(
            model, run, warmup_args, resume=resume, schedule_steps=(0, total),
            callbacks=[MovementScheduleCallback(pruner)],
        )  # fmt: skip
        metrics.update({f"warmup_{k}": v for k, v in phase.items()})
        if args.should_save:
            save_pruned(model, pruner, mconfig.enable_structured_masking, run.tokenizer, out / PRUNED_DIR)
            atomic.write_json(out / PRUNED_DIR / WARMUP_RESULTS, metrics)
    elif (out / PRUNED_DIR / WARMUP_RESULTS).is_file():
        metrics.update(json.loads((out / PRUNED_DIR / WARMUP_RESULTS).read_text()))
    barrier(args)

    model, phase = finetune_pruned(run, warmup_end, total)
    metrics.update(phase)
    if "warmup_epoch" in metrics and "epoch" in phase:
        metrics["epoch"] = metrics["warmup_epoch"] + phase["epoch"]  # of the whole run, not of phase 2
    return model, metrics


def save_pruned(
    model: nn.Module, pruner: MovementPruner, structured: bool, tokenizer, directory: Path
) -> None:
    """Resolve the warm-up's masks, cut out removed heads/neurons, and save the float model."""
    keep, frozen = pruner.convert(model, structured=structured)
    freeze_zeros(model, frozen)
    kept = [{"heads": k.heads, "neurons": k.neurons} for k in keep]
    logger.info("after pruning warm-up: %s", kept_sizes(model))
    save_model_dir(model, tokenizer, directory, export_ir=False, extra_state={FROZEN_MASKS: frozen, KEPT: kept})
