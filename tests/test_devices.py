"""What the CPU can show of "device and dtype follow the model": frozen zeros that survive quantization,
masks that follow a dtype change, the maths of one process driving several GPUs (DataParallel), and
exports and runners that leave the trained model where it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import MovementSparsityConfig, SparseStructure, default_compression_config
from qacompress.compression.export import to_openvino
from qacompress.compression.movement import attach_movement_pruning
from qacompress.compression.quantization import is_quantized, quantize_model
from qacompress.core.ondisk import INT8_EMBEDDINGS, QUANTIZER_LAYOUT, STATE_FILE
from qacompress.inference.runners import TorchQAModel
from qacompress.ir.convert import cpu_float_copy
from qacompress.model.surgery import LayerKeep, prune_
from qacompress.training.pruned import freeze_zeros
from qacompress.training.trainer import QACompressTrainer

FFN_OUT0 = "bert.encoder.layer.0.output.dense.weight"


def train_args(model: Path, squad_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model_name_or_path", str(model),
        "--train_file", str(squad_dir / "v1.1" / "train.json"), "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
        "--do_train", "--do_eval", "--max_train_samples", "32", "--max_eval_samples", "32",
        "--max_seq_length", "96", "--doc_stride", "32", "--per_device_train_batch_size", "8",
        "--learning_rate", "5e-3", "--seed", "3", "--disable_tqdm", "true", "--report_to", "none",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def inputs(seed: int = 0, batch: int = 4, length: int = 16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def train_steps(model: nn.Module, steps: int = 3) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        batch = inputs(step)
        out = model(**batch, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=torch.tensor([2, 3, 4, 5]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def emptied_layer_model(tiny_bert_dir) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Tiny BERT whose layer 0 lost all FFN neurons (a zeroed stand-in neuron remains)."""
    model = load_qa_model(str(tiny_bert_dir))
    frozen = prune_(model, [LayerKeep(heads=[0, 1, 2, 3], neurons=[]), LayerKeep(heads=[0, 1], neurons=list(range(32)))])
    assert FFN_OUT0 in frozen
    return model, frozen


def calibration() -> list[dict[str, torch.Tensor]]:
    return [{k: v[:1] for k, v in inputs(s).items()} for s in range(4)]


def test_frozen_zeros_survive_quantization(tiny_bert_dir):
    """The JPQD fine-tuning phase: zeros frozen after `quantize_model` stay zero under QAT."""
    model, frozen = emptied_layer_model(tiny_bert_dir)
    quantized = quantize_model(model, default_compression_config().quantization, calibration())
    freeze_zeros(quantized, frozen)
    train_steps(quantized)
    assert torch.count_nonzero(quantized.get_parameter(FFN_OUT0)) == 0


def test_frozen_zeros_follow_the_model_to_another_dtype(tiny_bert_dir):
    """Zeros are frozen on the model as loaded (float32, CPU) and Trainer moves it afterwards (to the
    GPU, or another dtype): the gradient hooks must follow. The CPU can show the dtype half; the GPU
    half failed on the first GPU run ("found at least two devices, cuda:0 and cpu" in JPQD
    fine-tuning) and is covered by `benchmarks/gpu_check.sh`."""
    model, frozen = emptied_layer_model(tiny_bert_dir)
    freeze_zeros(model, frozen)
    model.to(torch.bfloat16)
    model.train()
    batch = inputs()
    out = model(**batch, start_positions=torch.tensor([1, 2, 3, 4]), end_positions=torch.tensor([2, 3, 4, 5]))
    out.loss.backward()
    grad = model.get_parameter(FFN_OUT0).grad
    assert grad.dtype == torch.bfloat16 and torch.count_nonzero(grad) == 0
    assert torch.count_nonzero(model.get_parameter("bert.encoder.layer.1.output.dense.weight").grad) > 0


def test_hooks_registered_before_quantization_are_lost(tiny_bert_dir):
    """Why the order matters: `quantize_model` deep-copies the model, and the copy's parameters carry
    no gradient hooks, so zeros frozen before quantization come back to life while training."""
    model, frozen = emptied_layer_model(tiny_bert_dir)
    freeze_zeros(model, frozen)
    quantized = quantize_model(model, default_compression_config().quantization, calibration())
    train_steps(quantized)
    assert torch.count_nonzero(quantized.get_parameter(FFN_OUT0)) > 0


def movement_config() -> MovementSparsityConfig:
    return MovementSparsityConfig(
        warmup_start_epoch=0, warmup_end_epoch=1, importance_regularization_factor=0.1, init_importance_threshold=-1.0,
        steps_per_epoch=1,
        sparse_structure_by_scopes=[SparseStructure("block", ["{re}.*BertAttention.*"], sparse_factors=(8, 8))],
        ignored_scopes=["{re}.*qa_outputs.*"],
    )  # fmt: skip


@pytest.mark.parametrize("when", ["before", "after"])
def test_masks_follow_a_dtype_change(tiny_bert_dir, when):
    """Scores attached to a float32 model that is then cast, or to a model already in bf16, mask it in
    the model's dtype; the scores learn in float32 when attached to a bf16 model."""
    model = load_qa_model(str(tiny_bert_dir))
    if when == "after":
        model = model.to(torch.bfloat16)
    pruner = attach_movement_pruning(model, movement_config())
    pruner.set_step(1)
    if when == "before":
        model = model.to(torch.bfloat16)
    else:
        assert all(p.dtype == torch.float32 for p in pruner.scores.values())
    out = model(**inputs())
    assert out.start_logits.dtype == torch.bfloat16 and torch.isfinite(out.start_logits.float()).all()


class PerReplicaLoss(nn.Module):
    """What DataParallel gives `compute_loss`: outputs gathered from replicas, one loss per replica."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.config = model.config

    def forward(self, **batch):
        halves = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]
        outs = [self.module(**h) for h in halves]
        first = outs[0]
        first.loss = torch.stack([o.loss for o in outs])
        first.start_logits = torch.cat([o.start_logits for o in outs])
        first.end_logits = torch.cat([o.end_logits for o in outs])
        return first


def test_compute_loss_reduces_per_replica_losses(tiny_bert_dir, tmp_path):
    from transformers import TrainingArguments

    student, teacher = load_qa_model(str(tiny_bert_dir)), load_qa_model(str(tiny_bert_dir)).eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = QACompressTrainer(model=student, args=args, teacher=teacher)
    batch = {**inputs(), "start_positions": torch.tensor([1, 2, 3, 4]), "end_positions": torch.tensor([2, 3, 4, 5])}
    wrapped = PerReplicaLoss(student).train()
    torch.manual_seed(0)  # the same dropout in both calls
    loss = trainer.compute_loss(wrapped, batch)
    assert loss.dim() == 0
    torch.manual_seed(0)
    with torch.no_grad():
        per_replica = wrapped(**batch).loss
    assert per_replica.shape == (2,)
    assert trainer._loss_parts["task_loss"] == pytest.approx(float(per_replica.mean()), rel=1e-5)


def test_steps_per_epoch_counts_every_gpu_of_the_process(tmp_path):
    """One process with 4 GPUs (DataParallel) takes 4 per-device batches per optimizer step."""
    from qacompress.training.arguments import QACompressTrainingArguments
    from qacompress.training.phases import steps_per_epoch

    args = QACompressTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[])
    assert steps_per_epoch(100, args) == 13
    args._n_gpu = 4  # what transformers sets on a 4-GPU machine without torchrun
    assert args.train_batch_size == 32 and steps_per_epoch(100, args) == 4


def test_export_and_runner_leave_a_bf16_model_as_it_is(tiny_bert_dir):
    model = load_qa_model(str(tiny_bert_dir)).to(torch.bfloat16).eval()
    assert cpu_float_copy(model) is not model
    example = {k: v[:1] for k, v in inputs().items()}
    ir = to_openvino(model, example)
    assert {o.get_any_name() for o in ir.outputs} == {"start_logits", "end_logits"}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    start, end = TorchQAModel(model)({k: v.numpy() for k, v in inputs().items()})
    assert start.dtype == np.float32 and start.shape == (4, 16)
    float_model = load_qa_model(str(tiny_bert_dir))
    assert cpu_float_copy(float_model) is float_model  # no copy when there is nothing to move


def test_bf16_qat_keeps_its_quantizers_in_checkpoints_and_the_saved_model(tiny_bert_dir, squad_dir, tmp_path):
    """`--bf16` (and `--fp16` on a GPU) train inside accelerate's autocast wrapper around the model's
    forward, which hides NNCF's hooked forward: the checkpoint, the saved model and its IR must still be
    those of a quantized model (before the fix, both lacked the quantizer layout and the IR was exported
    as a float model)."""
    out = tmp_path / "qat-bf16"
    assert main(train_args(tiny_bert_dir, squad_dir, out, "--bf16", "--max_steps", "4", "--save_steps", "2")) == 0
    for directory in (out / "checkpoint-2", out):
        state = torch.load(directory / STATE_FILE, weights_only=True)
        assert QUANTIZER_LAYOUT in state, directory
        assert is_quantized(load_qa_model(str(directory)))
    assert INT8_EMBEDDINGS in torch.load(out / STATE_FILE, weights_only=True)
    assert (out / "openvino_model.xml").read_text().count('type="FakeQuantize"') >= 10  # exported as quantized



def test_gathered_model_is_the_trained_model_read_back_whole(tiny_bert_dir, tmp_path):
    """Under FSDP or ZeRO-3 (which accelerate enables only on GPUs) the final model leaves training
    through the accelerator's gathered state dict, as checkpoints do. The mechanism runs anywhere: here
    on a structurally pruned, quantized model, which must come back with its shapes and quantizers."""
    from transformers import TrainingArguments

    from qacompress.training.trainer import GATHERED_DIR

    pruned, _ = emptied_layer_model(tiny_bert_dir)
    model = quantize_model(pruned, default_compression_config().quantization, calibration()).eval()
    trainer = QACompressTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    assert not trainer.is_sharded
    whole = trainer.gathered_model().eval()
    assert whole is not model and is_quantized(whole)
    assert not (tmp_path / GATHERED_DIR).exists()
    assert whole.get_parameter(FFN_OUT0).shape == model.get_parameter(FFN_OUT0).shape
    with torch.no_grad():
        expected, got = model(**inputs()), whole(**inputs())
    torch.testing.assert_close(got.start_logits, expected.start_logits)
    torch.testing.assert_close(got.end_logits, expected.end_logits)


def test_export_does_not_warn_about_a_causal_lm_loss(tiny_bert_dir, caplog):
    """torch's tracer reads every attribute of every module, and transformers' `loss_function` property
    of the encoder (which has no `loss_type`) then warns that it will use a causal-LM loss: noise at
    every export of a QA model."""
    from transformers.utils import logging as hf_logging

    model = load_qa_model(str(tiny_bert_dir))
    warn_once = hf_logging.get_logger("transformers.modeling_utils").warning_once  # once per process
    hf_logging.enable_propagation()  # transformers' loggers do not reach caplog otherwise
    try:
        with caplog.at_level("WARNING"):
            warn_once.cache_clear()
            model.base_model.loss_function  # noqa: B018  (reading it is what warns)
            assert "loss_type=None" in caplog.text
            caplog.clear()
            warn_once.cache_clear()
            to_openvino(model, {k: v[:1] for k, v in inputs().items()})
            assert "loss_type" not in caplog.text
    finally:
        hf_logging.disable_propagation()
