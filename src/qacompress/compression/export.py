"""Writing a finished model directory: torch weights, tokenizer and OpenVINO IR, in optimum-intel's layout.

`save_model_dir` produces what transformers saves (`config.json`, `model.safetensors`, tokenizer files)
plus `openvino_model.xml`/`.bin` beside them, which `optimum.intel.OVModelForQuestionAnswering` and
`qacompress evaluate/predict` load. Batch and sequence dimensions are dynamic. A quantized model is
stripped to plain fake-quantize ops first, which OpenVINO turns into INT8 FakeQuantize operations
(weights stored as INT8); its word-embedding table, which QAT leaves in float, is stored as INT8 too
(weights-only, per row: it is most of a small model's IR). Everything goes through
a staged commit (`qacompress.core.atomic`): an interrupted export leaves the previous one in place.

Deployment variants (`VARIANTS`) are the IRs one trained model can ship as; which is fastest depends
on the CPU (`qacompress.measure.variants` measures them):

- `int8`: the QAT/JPQD IR (INT8 weights and activations). Pays where the CPU has VNNI or AMX.
- `fp32`: float weights and activations. For a quantized model these are the weights *as trained*:
  the fake-quantized values the forward pass used during QAT, folded into float constants, with the
  activation quantizers removed. The latent float weights behind the quantizers were never used by
  any forward pass, so the folded ones are the closer float twin of what was trained and evaluated.
- `int8_weights`: the `fp32` IR with its MatMul and embedding weights stored as INT8 (NNCF weight
  compression). The IR keeps activations float; on AVX2-only CPUs OpenVINO computes them so, while on
  VNNI/AMX CPUs it quantizes each such layer's input to 8 bits per group of 32 at run time (its
  `DYNAMIC_QUANTIZATION_GROUP_SIZE` default there), a rounding of the runtime's that the variants'
  F1 measurement includes.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qacompress.compression.checkpoint import load_compression_state, save_compressed
from qacompress.compression.quantization import is_quantized, strip
from qacompress.core.atomic import staged_files
from qacompress.core.errors import ModelError
from qacompress.core.ondisk import INT8_EMBEDDINGS, IR_FILE, MODEL_FILES
from qacompress.data.features import input_columns
from qacompress.ir.convert import convert, cpu_float_copy, example_inputs
from qacompress.ir.ptq import quantize_ir
from qacompress.ir.weights import compress_weights, dequantize

logger = logging.getLogger(__name__)

#: The IRs a model can be exported as (see the module docstring); `int8` needs a quantized model.
VARIANTS = ("int8", "int8_weights", "fp32")


def model_variants(model: nn.Module) -> tuple[str, ...]:
    """The variants that make sense for `model`: `int8` only where QAT or JPQD trained quantizers."""
    return VARIANTS if is_quantized(model) else VARIANTS[1:]


def default_variant(model: nn.Module) -> str:
    """What `train` and `export` write unless told otherwise: INT8 for a quantized model, else FP32."""
    return model_variants(model)[0] if "int8" in model_variants(model) else "fp32"


def to_openvino(
    model: nn.Module, example_input: dict[str, torch.Tensor], variant: str | None = None, *, int8_embeddings: bool = True
):
    """An `openvino.Model` of `model` as `variant` (default: `default_variant(model)`).

    `int8_embeddings` applies to the `int8` variant (the `int8_weights` one compresses every table).
    """
    variant = variant or default_variant(model)
    if variant not in model_variants(model):
        raise ModelError(
            f"variant {variant!r} is not available for this model (available: {', '.join(model_variants(model))}; "
            "'int8' needs a model trained with quantization)"
        )
    model = cpu_float_copy(model).eval()
    quantized = is_quantized(model)
    source = strip(model, example_input) if quantized else model
    ov_model = convert(source, example_input)
    if variant == "int8":
        return compress_weights(ov_model, embeddings_only=True) if int8_embeddings else ov_model
    if quantized:
        ov_model = dequantize(ov_model)
    return compress_weights(ov_model, embeddings_only=False) if variant == "int8_weights" else ov_model


def export_openvino(
    model: nn.Module, tokenizer, directory: str | Path, variant: str | None = None, *, int8_embeddings: bool = True
) -> Path:
    """Write `openvino_model.xml`/`.bin` for `model` into `directory` (not atomic on its own)."""
    import openvino as ov

    path = Path(directory) / IR_FILE
    ov_model = to_openvino(model, example_inputs(tokenizer), variant, int8_embeddings=int8_embeddings)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def save_model_dir(
    model: nn.Module,
    tokenizer,
    directory: str | Path,
    *,
    export_ir: bool = True,
    extra_state: dict | None = None,
    variant: str | None = None,
    int8_embeddings: bool = True,
) -> Path:
    """Write a complete model directory atomically; returns `directory`.

    The IR is `variant` (default: INT8 for a quantized model, else FP32). A quantized model records
    `int8_embeddings` in its compression state, so that a later `qacompress export` keeps the choice.
    """
    directory = Path(directory)
    model = model.module if hasattr(model, "module") else model
    if is_quantized(model):
        extra_state = {**(extra_state or {}), INT8_EMBEDDINGS: int8_embeddings}
    with staged_files(directory, replaces=MODEL_FILES) as staging:
        save_compressed(model, staging, extra_state=extra_state)
        tokenizer.save_pretrained(staging)
        if export_ir:
            export_openvino(model, tokenizer, staging, variant, int8_embeddings=int8_embeddings)
    logger.info("saved model to %s%s", directory, f" (with OpenVINO IR, {variant or default_variant(model)})" if export_ir else "")
    return directory


def saved_int8_embeddings(model_dir: str | Path) -> bool:
    """Whether the model saved in `model_dir` asked for INT8 embedding tables in its INT8 IR (default yes)."""
    return bool((load_compression_state(model_dir) or {}).get(INT8_EMBEDDINGS, True))


def write_int8_ir(model: nn.Module, tokenizer, features: Any, count: int, directory: Path) -> None:
    """Export `model` to an FP32 IR, quantize it to INT8 with `count` calibration features, and put
    it into `directory` (beside the float torch model)."""
    import openvino as ov

    columns = input_columns(features)
    rows = features.select_columns(columns).select(range(min(count, len(features))))
    calibration = [{c: np.asarray([row[c]], dtype=np.int64) for c in columns} for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_openvino(model, tokenizer, tmp)
        # 8-bit weights where this CPU has VNNI/AMX, 7-bit where it does not (`ptq_overflow_fix`).
        quantized = quantize_ir(ov.Core().read_model(str(path)), calibration)
        with staged_files(directory) as staging:
            ov.save_model(quantized, str(staging / IR_FILE), compress_to_fp16=False)
