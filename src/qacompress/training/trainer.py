"""`transformers.Trainer`, extended only through its public hooks, for compressed QA training.

- `compute_loss`: task loss, plus distillation from a frozen teacher (logits, each feature's computed once
  and kept for later epochs; optionally hidden states, computed every step), plus movement pruning's
  regulariser (added once);
- `log`: the loss parts, the importance threshold and sparsity per layer role, and the training seconds
  so far (over resumed invocations too) at every logging step (so they reach the console,
  `trainer_state.json` and TensorBoard);
- `evaluate`: SQuAD EM/F1 (v2 fields too) at every evaluation during training, by the same code and on
  the same features as the final scoring (`qacompress.inference.evaluation.evaluate_runner`), one forward pass;
  needed because the evaluation features carry no labels, so `Trainer` never calls `compute_metrics`
  (transformers' own `QuestionAnsweringTrainer` example overrides `evaluate` for the same reason);
- `save_model`: plain weights with `save_pretrained` plus `compression_state.pt` (quantizers, scores,
  schedule), because safetensors cannot hold NNCF's shared quantizer scales;
- `create_scheduler`: one learning-rate schedule across the phases of a JPQD run;
- `MovementScheduleCallback`: moves the pruning threshold at every optimizer step;
- `BestCompressionStateCallback`: with `--load_best_model_at_end`, Trainer reloads only the plain
  weights of the best checkpoint; this puts back its quantizer and importance-score tensors too;
- `RunClockCallback`: training seconds over every invocation of a resumed run (Trainer's own
  `train_runtime` counts only the last one).
The inner training loop stays transformers' own (the old OVTrainer copied it and broke on every
release).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections import defaultdict
from pathlib import Path
from types import MethodType
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import speed_metrics

from qacompress.compression.checkpoint import (
    load_compression_state,
    load_compression_tensors,
    load_qa_model,
    save_compressed,
)
from qacompress.compression.distillation import (
    DistillationConfig,
    TeacherLogits,
    distillation_loss,
    hidden_distillation_loss,
)
from qacompress.compression.movement import MovementPruner
from qacompress.compression.quantization import AUTOCAST_ORIGINAL_FORWARD
from qacompress.core.errors import QACompressError
from qacompress.core.ondisk import MOVEMENT_ATTR, MOVEMENT_SCHEDULE
from qacompress.data.postprocess import DecodeSettings
from qacompress.inference.evaluation import evaluate_runner, prefixed
from qacompress.inference.runners import TorchQAModel

LABELS = ("start_positions", "end_positions")
#: Where `gathered_model` puts the whole model for a moment, inside `output_dir`.
GATHERED_DIR = "gathered-model"
logger = logging.getLogger(__name__)


class QACompressTrainer(Trainer):
    """Trainer with distillation, movement-pruning regularisation and compression-aware saving."""

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module | None = None,
        distillation: DistillationConfig | None = None,
        schedule_steps: tuple[int, int] | None = None,
        eval_examples: Any = None,
        decode_settings: DecodeSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(BestCompressionStateCallback())
        self.add_callback(RunClockCallback())
        self.teacher = teacher
        # With examples, `eval_dataset` is the full evaluation features (offsets, example ids) and every
        # evaluation is SQuAD-scored; without, `evaluate` is Trainer's own.
        self.eval_examples = eval_examples
        self.decode_settings = decode_settings or DecodeSettings()
        self.distillation = distillation or DistillationConfig()
        self.schedule_steps = schedule_steps  # (optimizer steps before this phase, steps of the whole run)
        self._loss_parts: dict[str, float] = defaultdict(float)
        self._loss_count = 0
        if teacher is not None:
            teacher.to(self.args.device)
        self.teacher_logits = TeacherLogits(teacher) if teacher is not None else None
        if self.is_sharded and self.pruner is not None:
            raise QACompressError(
                "movement pruning (JPQD) does not train sharded (FSDP, DeepSpeed ZeRO-3): its importance scores "
                "and masks need whole weights; train it data-parallel (torchrun without --fsdp / ZeRO-3)"
            )
        if self.args.fsdp_plugin_args is not None and not self.is_fsdp_enabled and self.is_world_process_zero():
            logger.warning(
                "--fsdp is not in effect: accelerate shards only across GPUs or other accelerators, so this run "
                "trains %s with whole model copies", "in one process" if self.args.world_size == 1 else "data-parallel"
            )

    @property
    def pruner(self) -> MovementPruner | None:
        return getattr(self.accelerator.unwrap_model(self.model), MOVEMENT_ATTR, None)

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        layerwise = self.teacher is not None and model.training and self.distillation.hidden_distillation_weight > 0
        outputs = model(**inputs, output_hidden_states=True) if layerwise else model(**inputs)
        task = outputs.loss.mean()  # DataParallel returns one loss per replica
        loss = task
        parts = {"task_loss": task.detach()}
        if self.teacher is not None and model.training:
            features = {k: v for k, v in inputs.items() if k not in LABELS}
            if layerwise:  # the teacher's layers too: run it
                with torch.no_grad():
                    teacher_out = self.teacher(**features, output_hidden_states=True)
                teacher_logits = (teacher_out.start_logits, teacher_out.end_logits)
            else:
                teacher_logits = self.teacher_logits(features)
            distill = distillation_loss(
                (outputs.start_logits, outputs.end_logits),
                teacher_logits,
                self.distillation.distillation_temperature,
                inputs.get("attention_mask"),
            )
            w = self.distillation.distillation_weight
            loss = (1.0 - w) * task + w * distill
            parts["distillation_loss"] = distill.detach()
            if layerwise:
                hidden = hidden_distillation_loss(
                    outputs.hidden_states, teacher_out.hidden_states, inputs.get("attention_mask")
                )
                loss = loss + self.distillation.hidden_distillation_weight * hidden
                parts["hidden_distillation_loss"] = hidden.detach()
        pruner = self.pruner
        if pruner is not None and model.training:
            compression = pruner.regularization()
            loss = loss + compression
            parts["compression_loss"] = compression.detach()
        if model.training:
            for key, value in parts.items():
                self._loss_parts[key] += float(value)
            self._loss_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_count:
            for key, total in self._loss_parts.items():
                logs[key] = round(total / self._loss_count, 6)
            self._loss_parts.clear()
            self._loss_count = 0
            pruner = self.pruner
            if pruner is not None:
                logs["importance_threshold"] = pruner.threshold
                logs["importance_regularization_factor"] = pruner.regularization_factor
                for role, value in pruner.sparsity(self.accelerator.unwrap_model(self.model)).items():
                    logs[f"sparsity/{role}"] = round(value, 4)
            logs["train_seconds"] = round(self.run_clock().seconds(), 1)  # so that a log shows the pace too
        super().log(logs, start_time)

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
        eval_examples: Any = None,
    ) -> dict[str, float]:
        """SQuAD EM/F1 of the model as it is now (masked, pruned or fake-quantized), logged like Trainer's.

        The same call as the final scoring (`qacompress.jobs.train.score_split`): one length-sorted forward pass over
        the features, n-best decoding, the official metric; so it costs what the final evaluation
        costs, and gives the same figures for the same weights. Each process of a distributed run
        scores the whole set, so all agree on the best checkpoint.
        """
        examples = eval_examples if eval_examples is not None else self.eval_examples
        if examples is None or isinstance(eval_dataset, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        features = eval_dataset if eval_dataset is not None else self.eval_dataset
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        if hasattr(self.optimizer, "eval"):  # schedule-free optimizers evaluate their averaged weights
            self.optimizer.eval()
        start = time.time()
        tokenizer = self.processing_class
        _, scores = evaluate_runner(
            TorchQAModel(model), examples, features, self.decode_settings,
            batch_size=self.args.per_device_eval_batch_size,
            pad_token_id=getattr(tokenizer, "pad_token_id", None) or 0,
            progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )  # fmt: skip
        model.train(was_training)  # the next training_step also puts the optimizer back in train mode
        metrics = prefixed(scores, metric_key_prefix)
        batches = math.ceil(len(features) / self.args.per_device_eval_batch_size)
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(features), num_steps=batches))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """Within a multi-phase run, stretch the schedule over all phases and start at this phase's offset."""
        if not self.schedule_steps:
            return super().create_scheduler(num_training_steps, optimizer)
        before, total = self.schedule_steps
        scheduler = super().create_scheduler(total, optimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping before any optimizer step is the point here
            for _ in range(before):
                scheduler.step()
        return scheduler

    def run_clock(self) -> RunClockCallback:
        """This trainer's `RunClockCallback` (looked up: Trainer may replace it when restoring callbacks)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunClockCallback))

    @property
    def is_sharded(self) -> bool:
        """FSDP or DeepSpeed ZeRO-3: each process holds only shards of the weights."""
        return self.is_fsdp_enabled or is_deepspeed_zero3_enabled()

    def trained_model(self) -> nn.Module:
        """The model as training leaves it, ready to save, export and evaluate: out of its DDP or
        DataParallel wrapper and back on its own forward, without the autocast wrapper accelerate puts
        on it for `--fp16`/`--bf16` (NNCF would no longer see its quantizers, and an export would trace
        the autocast). accelerate's own `unwrap_model(keep_fp32_wrapper=False)` cannot do the latter
        for a quantized model: it rebinds NNCF's forward object as a method of the model. Under a
        sharded strategy it is `gathered_model()`."""
        if self.is_sharded:
            return self.gathered_model()
        model = self.accelerator.unwrap_model(self.model)
        original = model.__dict__.pop(AUTOCAST_ORIGINAL_FORWARD, None)
        if isinstance(original, MethodType) and original.__func__ is type(model).forward:
            model.__dict__.pop("forward", None)  # the class's forward again
        elif original is not None:
            model.forward = original  # NNCF's forward with hooks
        return model

    def gathered_model(self) -> nn.Module:
        """The whole trained model, the way checkpoints get it: saved through the accelerator's gathered
        state dict (every process takes part, the main one writes) and read back with its compression
        state. Needed under FSDP or ZeRO-3, where the unwrapped module holds only this process's shards;
        the other processes get their unwrapped module, as they neither save nor score."""
        directory = Path(self.args.output_dir) / GATHERED_DIR
        self.save_model(str(directory))
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return self.accelerator.unwrap_model(self.model)
        model = load_qa_model(str(directory)).to(self.args.device)
        shutil.rmtree(directory)
        return model

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save weights with `save_pretrained` and compression state beside them.

        The weights come from the accelerator's state dict, which gathers whole tensors under sharded
        strategies (FSDP, DeepSpeed ZeRO-3): every process takes part in that, the main one writes."""
        state_dict = self.accelerator.get_state_dict(self.deepspeed if self.is_deepspeed_enabled else self.model)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        pruner = self.pruner
        extra = {MOVEMENT_SCHEDULE: pruner.schedule_state()} if pruner is not None else None
        save_compressed(model, output_dir, extra_state=extra, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


class BestCompressionStateCallback(TrainerCallback):
    """After `--load_best_model_at_end`, load the best checkpoint's compression tensors as well.

    Trainer's loader reads `model.safetensors` only, which leaves the last step's quantizer scales and
    importance scores in place; those live in the checkpoint's `compression_state.pt`.
    """

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not (args.load_best_model_at_end and state.best_model_checkpoint and model is not None):
            return
        saved = load_compression_state(state.best_model_checkpoint)
        if saved is not None:
            load_compression_tensors(model, saved)


class RunClockCallback(TrainerCallback, ExportableState):
    """Training seconds summed over the invocations of a resumed run, kept in each checkpoint's
    `trainer_state.json` (as a stateful callback) so that an interruption loses none of the record; a
    checkpoint's figure covers the work up to it, not the time lost after it."""

    def __init__(self) -> None:
        self.earlier_seconds = 0.0  # training time of earlier invocations, up to the checkpoint resumed
        self.started: float | None = None
        self.first_step = 0  # the step this invocation started at

    def seconds(self) -> float:
        """Training seconds of the run so far, over all its invocations."""
        return self.earlier_seconds + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def state(self) -> dict:
        # Named as the attribute it restores (Trainer sets it with `restore_callback_states_from_checkpoint`).
        return {"args": {}, "attributes": {"earlier_seconds": round(self.seconds(), 1)}}

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed state carries the checkpoint's figure (whether or not Trainer restores callbacks); a
        # checkpoint written before this callback existed has none, and gets an entry to update on save.
        saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        self.earlier_seconds = float(saved.get("attributes", {}).get("earlier_seconds", 0.0))
        self.started, self.first_step = time.perf_counter(), state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.earlier_seconds, self.started = self.seconds(), None


class MovementScheduleCallback(TrainerCallback):
    """Sets the pruning threshold and regularisation factor for each optimizer step."""

    def __init__(self, pruner: MovementPruner) -> None:
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        self.pruner.set_step(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.pruner.set_step(state.global_step)
