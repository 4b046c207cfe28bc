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

import contextlib
import copy
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qacompress.model.architecture import SHARED_EMBEDDINGS
from qacompress.core.atomic import staged_files
from qacompress.compression.checkpoint import save_compressed
from qacompress.model.loading import IR_FILE
from qacompress.core.ondisk import INT8_EMBEDDINGS, STATE_FILE

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


#: The IRs a model can be exported as (see the module docstring); `int8` needs a quantized model.
VARIANTS = ("int8", "int8_weights", "fp32")


def model_variants(model: nn.Module) -> tuple[str, ...]:
    """The variants that make sense for `model`: `int8` only where QAT or JPQD trained quantizers."""
    from qacompress.compression.quantization import is_quantized

    return VARIANTS if is_quantized(model) else VARIANTS[1:]


def default_variant(model: nn.Module) -> str:
    """What `train` and `export` write unless told otherwise: INT8 for a quantized model, else FP32."""
    return model_variants(model)[0] if "int8" in model_variants(model) else "fp32"


@contextlib.contextmanager
def quiet_logger(name: str):
    """Raise logger `name` to ERROR for the block. torch's tracer reads every attribute of every module,
    and transformers' `loss_function` property then warns that `loss_type=None` means a causal-LM loss,
    a warning about a loss that a QA model's export never computes."""
    logger_ = logging.getLogger(name)
    level = logger_.level
    logger_.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger_.setLevel(level)


def to_openvino(
    model: nn.Module, example_input: dict[str, torch.Tensor], variant: str | None = None, *, int8_embeddings: bool = True
):
    """An `openvino.Model` of `model` as `variant` (default: `default_variant(model)`).

    `int8_embeddings` applies to the `int8` variant (the `int8_weights` one compresses every table).
    """
    import openvino as ov

    from qacompress.core.errors import ModelError
    from qacompress.compression.quantization import is_quantized, strip

    variant = variant or default_variant(model)
    if variant not in model_variants(model):
        raise ModelError(
            f"variant {variant!r} is not available for this model (available: {', '.join(model_variants(model))}; "
            "'int8' needs a model trained with quantization)"
        )
    model = cpu_float_copy(model).eval()
    quantized = is_quantized(model)
    source = strip(model, example_input) if quantized else model
    with torch.no_grad(), warnings.catch_warnings(), quiet_logger("transformers.modeling_utils"):
        warnings.simplefilter("ignore")  # the tracer's warnings about data-dependent branches
        ov_model = ov.convert_model(source, example_input=dict(example_input))
    for output, name in zip(ov_model.outputs, ("start_logits", "end_logits")):
        output.get_tensor().set_names({name})
    if variant == "int8":
        return compress_weights(ov_model, embeddings_only=True) if int8_embeddings else ov_model
    if quantized:
        ov_model = dequantize(ov_model)
    return compress_weights(ov_model, embeddings_only=False) if variant == "int8_weights" else ov_model


def compress_weights(ov_model, *, embeddings_only: bool):
    """INT8 weights-only compression (NNCF, per output channel / per embedding row, asymmetric).

    `embeddings_only` restricts it to the word-embedding lookup: the word embeddings alone are 30,522 x
    hidden floats, most of a small model's IR. QAT held that table on this very grid (`wordtable`), so
    compressing it again gives the same values; a table trained in float (an FP32 model, or QAT from
    before tables were held) is rounded here; one NNCF quantized during QAT is already INT8 behind its
    scale, which NNCF leaves alone. The position and token-type tables stay float: they are small, and
    their rounding reaches every token of every input (on the FP32 MiniLM of docs/results.md, INT8 position
    tables cost 0.37 F1, the word table alone 0.12).
    """
    from qacompress.compression.quantization import _nncf

    nncf = _nncf()
    ignored = None
    if embeddings_only:
        small_tables = [f".*{name}.*" for name in SHARED_EMBEDDINGS]
        ignored = nncf.IgnoredScope(types=["MatMul"], patterns=small_tables, validate=False)
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def constant_value(output) -> np.ndarray:
    """The float32 value of an OpenVINO output computed from constants only (e.g. a decompressed weight)."""
    import openvino as ov

    compiled = ov.Core().compile_model(ov.Model([output], []), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.asarray(compiled({})[0], dtype=np.float32)


def dequantize(ov_model):
    """The float twin of a quantized IR: every weight evaluated into a float constant (the weights as
    trained: the stripped model stores them as INT8 with a dequantize subgraph), activation
    FakeQuantize ops removed.

    The weights are evaluated rather than constant-folded because OpenVINO keeps such decompression
    subgraphs out of constant folding on purpose.
    """
    import openvino as ov
    from openvino import opset13 as ops

    def constant(node) -> bool:
        if node.get_type_name() == "Constant":
            return True
        return node.get_input_size() > 0 and all(constant(v.get_node()) for v in node.input_values())

    def evaluate(output):
        return ops.constant(constant_value(output)).output(0)

    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and not constant(op.input_value(0).get_node()):
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(op.input_value(0))
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        for port in op.inputs():
            source = port.get_source_output()
            node = source.get_node()
            if node.get_type_name() != "Constant" and constant(node) and source.get_element_type() == ov.Type.f32:
                port.replace_source_output(evaluate(source))
    ov_model.validate_nodes_and_infer_types()
    return ov_model


def export_openvino(
    model: nn.Module, tokenizer, directory: str | Path, variant: str | None = None, *, int8_embeddings: bool = True
) -> Path:
    """Write `openvino_model.xml`/`.bin` for `model` into `directory` (not atomic on its own)."""
    import openvino as ov

    path = Path(directory) / IR_FILE
    ov_model = to_openvino(model, example_inputs(tokenizer), variant, int8_embeddings=int8_embeddings)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def quantize_ir(ov_model, calibration: list[dict[str, np.ndarray]], *, preset: str = "mixed", overflow_fix: str | None = None):
    """An INT8 copy of an `openvino.Model` by post-training quantization (`nncf.quantize`,
    `ModelType.TRANSFORMER`); `overflow_fix` None keeps NNCF's default."""
    from qacompress.compression.quantization import _nncf

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

    quantized = quantize_ir(ov.Core().read_model(str(Path(model_dir) / IR_FILE)), calibration, preset=preset)
    return save_ir_dir(quantized, model_dir, output_dir)


def save_ir_dir(ov_model, model_dir: str | Path, output_dir: str | Path) -> Path:
    """An IR-only model directory: `ov_model` with the config and tokenizer of `model_dir`."""
    import openvino as ov

    from qacompress.model.loading import load_tokenizer

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    with staged_files(output_dir, replaces=MODEL_FILES) as staging:
        ov.save_model(ov_model, str(staging / IR_FILE), compress_to_fp16=False)
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
    variant: str | None = None,
    int8_embeddings: bool = True,
) -> Path:
    """Write a complete model directory atomically; returns `directory`.

    The IR is `variant` (default: INT8 for a quantized model, else FP32). A quantized model records
    `int8_embeddings` in its compression state, so that a later `qacompress export` keeps the choice.
    """
    from qacompress.compression.quantization import is_quantized

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
    from qacompress.compression.checkpoint import load_compression_state

    return bool((load_compression_state(model_dir) or {}).get(INT8_EMBEDDINGS, True))
