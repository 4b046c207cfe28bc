"""The last phase of every pruning plan (`jpqd`, `structured`): the pruned float model saved in
`output_dir/pruned`, with the parameters its pruning zeroed kept at zero, fine-tuned (with quantizers
when the config has them, and distillation) to the end of the run's schedule."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qacompress.compression.checkpoint import load_compression_state, load_qa_model
from qacompress.core.ondisk import FINETUNE_DIR, FROZEN_MASKS, PRUNED_DIR, REPORT
from qacompress.measure.report import compression_report
from qacompress.training.phases import Run, fit, resolve_resume, with_quantizers

logger = logging.getLogger(__name__)


def freeze_zeros(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero masked parameters (`{"<module>.weight": mask}`) and keep them zero while training.

    Gradient hooks live on the parameter objects: call this on the model that trains, after
    `quantize_model` (whose deep copy rebuilds the parameters without their hooks).
    """
    for name, mask in masks.items():
        param = model.get_parameter(name)
        with torch.no_grad():
            param.mul_(mask.to(device=param.device, dtype=param.dtype))
        param.register_hook(KeepZeros(mask))


class KeepZeros:
    """Gradient hook that zeroes the gradient where `mask` is 0. The mask follows the gradient's device
    and dtype, because the model usually moves after the hook is registered (Trainer puts it on the
    GPU; mixed precision or a cast changes its dtype)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.mask.device != grad.device or self.mask.dtype != grad.dtype:
            self.mask = self.mask.to(device=grad.device, dtype=grad.dtype)
        return grad * self.mask


def finetune_pruned(run: Run, before: int, total: int) -> tuple[nn.Module, dict]:
    """The last phase of a pruning run: load the pruned float model from `output_dir/pruned`, insert
    quantizers (when the config has them), fine-tune with distillation from step `before` to `total`
    of the run's schedule, and write the compression report."""
    compression, args = run.compression, run.args
    out = Path(args.output_dir)
    metrics: dict[str, Any] = {}
    model = load_qa_model(str(out / PRUNED_DIR))
    state = load_compression_state(out / PRUNED_DIR) or {}
    finetune_args = dataclasses.replace(args, output_dir=str(out / FINETUNE_DIR), max_steps=total - before)
    resume = resolve_resume(finetune_args, out / FINETUNE_DIR)
    model = with_quantizers(model, run, resume)
    freeze_zeros(model, state.get(FROZEN_MASKS, {}))
    if total > before:
        model, phase = fit(model, run, finetune_args, resume=resume, schedule_steps=(before, total))
        metrics.update(phase)
    if args.should_save:
        compression_report(
            lambda: load_qa_model(run.model_path, **run.load), model, run.tokenizer, compression, out,
            export_ir=args.export_openvino, extra=state.get(REPORT),
        )
    return model, metrics


def barrier(args: Any) -> None:
    """Wait for every process: rank 0 writes `output_dir/pruned`, which all of them load next."""
    if args.world_size > 1:
        torch.distributed.barrier()


def start_afresh(args: Any) -> None:
    """With `--overwrite_output_dir` a pruning run starts from its first step: an earlier run's pruned
    model and checkpoints go, else its selection (made under another config) would be kept, and a later
    resume would pick up its checkpoints."""
    if args.overwrite_output_dir and args.should_save:
        out = Path(args.output_dir)
        for stale in (out / PRUNED_DIR, out / FINETUNE_DIR, *out.glob("checkpoint-*")):
            if stale.is_dir():
                logger.info("--overwrite_output_dir: removing %s of an earlier run", stale)
                shutil.rmtree(stale)
    barrier(args)
