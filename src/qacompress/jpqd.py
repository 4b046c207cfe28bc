"""JPQD: joint movement pruning, quantization and distillation, in two training phases.

Order (chosen for NNCF 3 and measured in the README):
1. **Pruning warm-up, in float** (epochs [0, warmup_end_epoch)): importance scores learn which blocks,
   rows and columns matter while the threshold rises; the teacher distils throughout.
2. **Resolve and remove**: masks become whole heads and FFN neurons, which are cut out of the model
   (`qacompress.structured`). What remains is a smaller, dense model.
3. **QAT fine-tuning** (epochs [warmup_end_epoch, num_train_epochs)): NNCF quantizers are inserted into
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
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qacompress.architecture import require_layout
from qacompress.checkpoint import apply_compression_state, load_compression_state
from qacompress.config import CompressionConfig
from qacompress.errors import ConfigError
from qacompress.export import save_model_dir
from qacompress.models import load_qa_model
from qacompress.movement import MovementPruner, attach_movement_pruning, detach_movement_pruning
from qacompress.report import compression_report
from qacompress.structured import current_sizes, prune_

logger = logging.getLogger(__name__)

PRUNED_DIR = "pruned"
FINETUNE_DIR = "finetune"


def _check_schedule(compression: CompressionConfig, args: Any) -> None:
    config = compression.movement_sparsity
    if args.max_steps and args.max_steps > 0:
        raise ConfigError(
            "movement_sparsity schedules by epochs; pass --num_train_epochs instead of --max_steps",
            file=compression.source,
            key="movement_sparsity.params",
        )
    if config.warmup_end_epoch > args.num_train_epochs:
        raise ConfigError(
            f"warmup_end_epoch {config.warmup_end_epoch} is beyond --num_train_epochs {args.num_train_epochs}: "
            "pruning would never finish; train longer or end the warm-up earlier",
            file=compression.source,
            key="movement_sparsity.params.warmup_end_epoch",
        )


def freeze_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero masked parameters (`{"<module>.weight": mask}`) and keep them zero while training."""
    for name, mask in masks.items():
        param = model.get_parameter(name)
        with torch.no_grad():
            param.mul_(mask)
        param.register_hook(lambda grad, mask=mask: grad * mask)


def train_jpqd(
    model_path: str,
    load: dict,
    tokenizer,
    compression: CompressionConfig,
    args: Any,
    data: Any,
    settings: Any,
    teacher: nn.Module | None,
) -> tuple[nn.Module, dict]:
    """Run both phases (resuming where a previous run stopped); returns the final model and metrics."""
    from qacompress.train import calibration_samples, fit, resolve_resume

    _check_schedule(compression, args)
    mconfig = compression.movement_sparsity
    out = Path(args.output_dir)
    total_epochs = float(args.num_train_epochs)
    metrics: dict[str, Any] = {}

    if not (out / PRUNED_DIR / "config.json").is_file():
        model = load_qa_model(model_path, **load)
        pruner = attach_movement_pruning(model, mconfig, compression.source)
        resume = resolve_resume(args, out)
        if resume:
            state = load_compression_state(resume)
            apply_compression_state(model, state)
            pruner.load_schedule_state(state["movement_schedule"])
        from qacompress.trainer import MovementScheduleCallback

        warmup_args = dataclasses.replace(args, num_train_epochs=mconfig.warmup_end_epoch)
        trainer, phase = fit(
            model, tokenizer, warmup_args, data, settings, teacher=teacher, resume=resume,
            schedule_epochs=(0.0, total_epochs), callbacks=[MovementScheduleCallback(pruner)],
        )
        trainer.save_state()
        metrics.update({f"warmup_{k}": v for k, v in phase.items()})
        model = trainer.accelerator.unwrap_model(trainer.model)
        if args.should_save:
            save_pruned(model, pruner, mconfig.enable_structured_masking, tokenizer, out / PRUNED_DIR)
    _barrier(args)

    model = load_qa_model(str(out / PRUNED_DIR))
    state = load_compression_state(out / PRUNED_DIR) or {}
    freeze_zeros(model, state.get("frozen_masks", {}))
    finetune_args = dataclasses.replace(
        args, output_dir=str(out / FINETUNE_DIR), num_train_epochs=total_epochs - mconfig.warmup_end_epoch
    )
    resume = resolve_resume(finetune_args, out / FINETUNE_DIR)
    qconfig = compression.quantization
    if qconfig is not None:
        if resume:
            model = apply_compression_state(model, load_compression_state(resume))
        else:
            from qacompress.quantization import quantize_model

            samples = calibration_samples(data.train_features, qconfig.num_init_samples, args.seed)
            model = quantize_model(model, qconfig, samples, source=compression.source)
    if finetune_args.num_train_epochs > 0:
        trainer, phase = fit(
            model, tokenizer, finetune_args, data, settings, teacher=teacher, resume=resume,
            schedule_epochs=(float(mconfig.warmup_end_epoch), total_epochs),
        )
        trainer.save_state()
        metrics.update(phase)
        model = trainer.accelerator.unwrap_model(trainer.model)
    if args.should_save:
        compression_report(
            lambda: load_qa_model(model_path, **load), model, tokenizer, compression, out, export_ir=args.export_openvino
        )
    return model, metrics


def save_pruned(
    model: nn.Module, pruner: MovementPruner, structured: bool, tokenizer, directory: Path
) -> None:
    """Resolve the warm-up's masks, cut out removed heads/neurons, and save the float model."""
    layout = require_layout(model)
    pruner.set_step(pruner.warmup_bounds()[1])  # the final threshold, whatever step training stopped at
    keep, frozen = pruner.resolve_structure(model, layout)
    if not structured:
        frozen = pruner.parameter_masks(list(pruner.targets))
    detach_movement_pruning(model)
    if structured:
        frozen.update(prune_(model, keep))
    freeze_zeros(model, frozen)
    kept = [{"heads": k.heads, "neurons": k.neurons} for k in keep]
    logger.info("after pruning warm-up: %s", current_sizes(model))
    save_model_dir(model, tokenizer, directory, export_ir=False, extra_state={"frozen_masks": frozen, "kept": kept})


def _barrier(args: Any) -> None:
    if args.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
