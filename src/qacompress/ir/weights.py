"""Weights inside an `openvino.Model`: INT8 weights-only compression, reading a constant subgraph's value,
and the float twin of a quantized IR."""

from __future__ import annotations

import numpy as np

from qacompress.core.extensions import import_nncf
from qacompress.ir.compile import compile_ir
from qacompress.model.architecture import SHARED_EMBEDDINGS


def compress_weights(ov_model, *, embeddings_only: bool):
    """INT8 weights-only compression (NNCF, per output channel / per embedding row, asymmetric).

    `embeddings_only` restricts it to the word-embedding lookup: the word embeddings alone are 30,522 x
    hidden floats, most of a small model's IR. QAT held that table on this very grid
    (`qacompress.compression.wordtable`), so
    compressing it again gives the same values; a table trained in float (an FP32 model, or QAT from
    before tables were held) is rounded here; one NNCF quantized during QAT is already INT8 behind its
    scale, which NNCF leaves alone. The position and token-type tables stay float: they are small, and
    their rounding reaches every token of every input (on the FP32 MiniLM of docs/results.md, INT8 position
    tables cost 0.37 F1, the word table alone 0.12).
    """
    nncf = import_nncf()
    ignored = None
    if embeddings_only:
        small_tables = [f".*{name}.*" for name in SHARED_EMBEDDINGS]
        ignored = nncf.IgnoredScope(types=["MatMul"], patterns=small_tables, validate=False)
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)


def constant_value(output) -> np.ndarray:
    """The float32 value of an OpenVINO output computed from constants only (e.g. a decompressed weight)."""
    import openvino as ov

    compiled = compile_ir(ov.Model([output], []), precision="f32")
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
