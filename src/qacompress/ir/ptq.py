"""Post-training INT8 quantization of an `openvino.Model` (`nncf.quantize`), and the IR-only model folder
it is saved as: the baseline a user would pick instead of QAT."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from qacompress.core.atomic import staged_files
from qacompress.core.cpu import has_int8_dot_product
from qacompress.core.extensions import import_nncf
from qacompress.core.ondisk import IR_FILE, MODEL_FILES
from qacompress.model.loading import load_tokenizer


def ptq_overflow_fix() -> str:
    """NNCF's `overflow_fix` for post-training INT8 on this CPU: `enable` (7-bit weights) where the CPU
    lacks VNNI/AMX, whose saturating 16-bit pair sums full 8-bit weights can overflow; `disable` (8-bit
    weights) where VNNI/AMX sum into 32 bits and are exact. QAT trains on the coarser grid; PTQ cannot:
    on the MiniLM reference, 7-bit weights cost about half a point of F1 (docs/concepts.md). An IR made
    with 8-bit weights is exact on the VNNI/AMX CPU it was made for, not on an AVX2-only one."""
    return "disable" if has_int8_dot_product() else "enable"


def quantize_ir(ov_model, calibration: list[dict[str, np.ndarray]], *, preset: str = "mixed", overflow_fix: str | None = None):
    """An INT8 copy of an `openvino.Model` by post-training quantization (`nncf.quantize`,
    `ModelType.TRANSFORMER`), with `overflow_fix` (default: `ptq_overflow_fix()`, for this CPU)."""
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    names = [i.get_any_name() for i in ov_model.inputs]
    dataset = nncf.Dataset([{k: v for k, v in sample.items() if k in names} for sample in calibration])
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix or ptq_overflow_fix()))
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

    quantized = quantize_ir(ov.Core().read_model(str(Path(model_dir) / IR_FILE)), calibration, preset=preset)
    return save_ir_dir(quantized, model_dir, output_dir)


def save_ir_dir(ov_model, model_dir: str | Path, output_dir: str | Path) -> Path:
    """An IR-only model directory: `ov_model` with the config and tokenizer of `model_dir`."""
    import openvino as ov

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    with staged_files(output_dir, replaces=MODEL_FILES) as staging:
        ov.save_model(ov_model, str(staging / IR_FILE), compress_to_fp16=False)
        shutil.copy2(model_dir / "config.json", staging / "config.json")
        load_tokenizer(str(model_dir)).save_pretrained(staging)
    return output_dir
