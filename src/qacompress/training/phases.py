"""What the training phases of a run share: its data, its context, its step count, checkpoints to
resume, and one phase as one `QACompressTrainer` run.

The training plans (`qacompress.training.plans`: one phase for FP32 or QAT; `jpqd` and `structured`: a
movement warm-up or a Fisher selection, then the pruned model's fine-tuning in `pruned`) build on this
module, so none imports another's internals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import default_data_collator

from qacompress.compression.checkpoint import apply_compression_state, load_compression_state
from qacompress.compression.config import CompressionConfig
from qacompress.compression.distillation import DistillationConfig
from qacompress.compression.quantization import is_quantized, quantize_model
from qacompress.core.errors import QACompressError
from qacompress.core.settings import settings_from
from qacompress.data.features import input_columns
from qacompress.data.postprocess import DecodeSettings
from qacompress.training.arguments import QACompressTrainingArguments
from qacompress.training.trainer import QACompressTrainer

logger = logging.getLogger(__name__)


@dataclass
class Data:
    """Examples and features of one run (None where the split is not used)."""

    train_features: Any = None
    eval_examples: Any = None
    eval_features: Any = None
    collator: Any = default_data_collator
    max_seq_length: int = 384


@dataclass
class Run:
    """Everything a training phase needs to know about its run: where the model starts (`model_path`,
    `load`: keyword arguments of `load_qa_model`), the compression, the arguments, data, decoding
    settings and the frozen teacher (or None)."""

    model_path: str
    load: dict
    tokenizer: Any
    compression: CompressionConfig | None
    args: QACompressTrainingArguments
    data: Data
    settings: DecodeSettings
    teacher: torch.nn.Module | None


def calibration_samples(features: Any, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`count` training features (batch 1 each), the same on every process of a distributed run."""
    order = np.random.default_rng(seed).permutation(len(features))[:count]
    columns = input_columns(features)
    rows = features.select(order.tolist())
    return [{c: torch.tensor([row[c]]) for c in columns} for row in rows]


def steps_per_epoch(num_features: int, args: QACompressTrainingArguments) -> int:
    """Optimizer steps per epoch, as the Trainer will count them (per process, after accumulation)."""
    per_process = math.ceil(num_features / max(args.world_size, 1))
    batch = args.train_batch_size  # per_device_train_batch_size x GPUs of this process (DataParallel)
    batches = per_process // batch if args.dataloader_drop_last else math.ceil(per_process / batch)
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def total_steps(num_features: int, args: QACompressTrainingArguments) -> int:
    """Optimizer steps of the whole run: `--max_steps`, else `--num_train_epochs` real epochs."""
    if args.max_steps and args.max_steps > 0:
        return args.max_steps
    return math.ceil(steps_per_epoch(num_features, args) * args.num_train_epochs)


def model_inputs(features: Any, with_labels: bool) -> Any:
    keep = input_columns(features)
    if with_labels:
        keep += ["start_positions", "end_positions"]
    return features.select_columns(keep)


def last_complete_checkpoint(directory: str | Path) -> str | None:
    """The newest `checkpoint-N` whose save finished (trainer_state.json is written last)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = []
    for path in directory.glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(suffix), path))
    return str(max(found)[1]) if found else None


def resolve_resume(args: QACompressTrainingArguments, directory: Path) -> str | None:
    """The checkpoint to resume from: the one asked for, else the newest complete one (as run_qa)."""
    if args.resume_from_checkpoint:
        if not Path(args.resume_from_checkpoint).is_dir():
            raise QACompressError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such directory")
        return args.resume_from_checkpoint
    if args.overwrite_output_dir:
        return None
    found = last_complete_checkpoint(directory)
    if found:
        logger.info("resuming from %s (pass --overwrite_output_dir to start afresh)", found)
    return found


def fit(
    model: torch.nn.Module,
    run: Run,
    args: QACompressTrainingArguments,
    *,
    resume: str | None = None,
    schedule_steps: tuple[int, int] | None = None,
    callbacks: list | None = None,
):
    """Train `model` for one phase of `run` (with this phase's `args`) in one `QACompressTrainer`, and
    save the trainer state beside the last checkpoint; returns the trained model and the phase's metrics."""
    trainer = QACompressTrainer(
        model=model,
        args=args,
        train_dataset=model_inputs(run.data.train_features, True) if run.data.train_features is not None else None,
        eval_dataset=run.data.eval_features,  # scored with eval_examples at every evaluation (trainer.evaluate)
        eval_examples=run.data.eval_examples,
        decode_settings=run.settings,
        processing_class=run.tokenizer,
        data_collator=run.data.collator,
        teacher=run.teacher,
        distillation=settings_from(args, DistillationConfig),
        schedule_steps=schedule_steps,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    metrics = dict(result.metrics)
    clock = trainer.run_clock()
    # Trainer's figures are this invocation's; these cover the whole run, however often it was resumed.
    metrics["train_runtime_total"] = round(clock.seconds(), 1)
    metrics["train_steps_run"] = trainer.state.global_step - clock.first_step
    return trainer.trained_model(), metrics


def with_quantizers(model: torch.nn.Module, run: Run, resume: str | None) -> torch.nn.Module:
    """`model` with the run's quantizers (when its config has a quantization section): those of the
    checkpoint being resumed, or new ones calibrated on training features."""
    qconfig = run.compression.quantization if run.compression is not None else None
    if qconfig is None or is_quantized(model):
        return model
    if resume:
        return apply_compression_state(model, load_compression_state(resume))
    samples = calibration_samples(run.data.train_features, qconfig.num_init_samples, run.args.seed)
    return quantize_model(model, qconfig, samples, source=run.compression.source)
