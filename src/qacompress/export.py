"""Writing a finished model directory: torch weights, tokenizer and OpenVINO IR, in optimum-intel's layout.

`save_model_dir` produces what transformers saves (`config.json`, `model.safetensors`, tokenizer files)
plus `openvino_model.xml`/`.bin` beside them, which `optimum.intel.OVModelForQuestionAnswering` and
`qacompress evaluate/predict` load. Batch and sequence dimensions are dynamic. A quantized model is
stripped to plain fake-quantize ops first, which OpenVINO turns into INT8 FakeQuantize operations
(weights stored as INT8). Everything goes through a staged commit (`qacompress.atomic`): an
interrupted export leaves the previous one in place.
"""

from __future__ import annotations

import copy
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qacompress.atomic import staged_files
from qacompress.checkpoint import STATE_FILE, save_compressed
from qacompress.models import IR_FILE

logger = logging.getLogger(__name__)

#: Files a model directory may hold that a new export must replace or remove.
MODEL_FILES = (STATE_FILE, IR_FILE, IR_FILE.replace(".xml", ".bin"), "model.safetensors", "config.json")


def example_inputs(tokenizer, length: int = 64) -> dict[str, torch.Tensor]:
    """A small tokenised (question, context) pair to trace the model with."""
    question = "What does the example question ask?"
    context = " ".join(["The example context answers it."] * max(1, length // 6))
    encoded = tokenizer(question, context, truncation="only_second", max_length=length, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def cpu_float_copy(model: nn.Module) -> nn.Module:
    """`model` itself when it is already float32 on the CPU, else a float32 CPU copy: OpenVINO traces
    on the CPU, and a model trained on a GPU (or cast to fp16/bf16) must stay where it is."""
    params = list(model.parameters())
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params if p.is_floating_point()):
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def to_openvino(model: nn.Module, example_input: dict[str, torch.Tensor]):
    """An `openvino.Model` of `model` (fake quantizers become FakeQuantize ops)."""
    import openvino as ov

    from qacompress.quantization import is_quantized, strip

    model = cpu_float_copy(model).eval()
    source = strip(model, example_input) if is_quantized(model) else model
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(source, example_input=dict(example_input))
    for output, name in zip(ov_model.outputs, ("start_logits", "end_logits")):
        output.get_tensor().set_names({name})
    return ov_model


def export_openvino(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write `openvino_model.xml`/`.bin` for `model` into `directory` (not atomic on its own)."""
    import openvino as ov

    path = Path(directory) / IR_FILE
    ov_model = to_openvino(model, example_inputs(tokenizer))
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def quantize_ir(ov_model, calibration: list[dict[str, np.ndarray]], *, preset: str = "mixed", overflow_fix: str | None = None):
    """An INT8 copy of an `openvino.Model` by post-training quantization (`nncf.quantize`,
    `ModelType.TRANSFORMER`); `overflow_fix` None keeps NNCF's default."""
    from qacompress.quantization import _nncf

    nncf = _nncf()
    names = [i.get_any_name() for i in ov_model.inputs]
    dataset = nncf.Dataset([{k: v for k, v in sample.items() if k in names} for sample in calibration])
    advanced = None
    if overflow_fix is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    return nncf.quantize(
        ov_model,
        dataset,
        preset=nncf.QuantizationPreset(preset),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        advanced_parameters=advanced,
    )


def post_training_quantize(
    model_dir: str | Path, output_dir: str | Path, calibration: list[dict[str, np.ndarray]], *, preset: str = "mixed"
) -> Path:
    """INT8 IR by post-training quantization of an exported FP32 IR: the baseline a user would pick
    instead of QAT."""
    import openvino as ov

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    quantized = quantize_ir(ov.Core().read_model(str(model_dir / IR_FILE)), calibration, preset=preset)
    from qacompress.models import load_tokenizer

    with staged_files(output_dir, replaces=MODEL_FILES) as staging:
        ov.save_model(quantized, str(staging / IR_FILE), compress_to_fp16=False)
        shutil.copy2(model_dir / "config.json", staging / "config.json")
        load_tokenizer(str(model_dir)).save_pretrained(staging)
    return output_dir


def save_model_dir(
    model: nn.Module,
    tokenizer,
    directory: str | Path,
    *,
    export_ir: bool = True,
    extra_state: dict | None = None,
) -> Path:
    """Write a complete model directory atomically; returns `directory`."""
    directory = Path(directory)
    model = model.module if hasattr(model, "module") else model
    with staged_files(directory, replaces=MODEL_FILES) as staging:
        save_compressed(model, staging, extra_state=extra_state)
        tokenizer.save_pretrained(staging)
        if export_ir:
            export_openvino(model, tokenizer, staging)
    logger.info("saved model to %s%s", directory, " (with OpenVINO IR)" if export_ir else "")
    return directory
