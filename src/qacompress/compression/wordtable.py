"""The word-embedding table on the INT8 grid the IR stores, from the first QAT step on.

The INT8 IR stores the word table as INT8 weights (NNCF's weights-only compression: per row,
asymmetric), because 30,522 x hidden floats are most of a small model's IR. Rounding the table only
at export perturbs a model whose 8-bit activations amplify any perturbation: on the QAT MiniLM
of docs/results.md it cost 0.2 F1 on average, up to 0.5 on one evaluation. So QAT starts from the rounded table
and holds it there: the model trains around exactly the table the IR will store, and the export's
compression gives the rounded table back bit for bit (NNCF's rounding is idempotent on its own grid).
Held rather than trained through a quantizer: a QAT run with NNCF's per-row symmetric quantizer on the
table scored 0.7 F1 lower than the float-table run (docs/results.md, "Held word table"), and a held table
needs neither its gradient nor its optimizer state.
"""

from __future__ import annotations

import torch
from torch import nn

from qacompress.ir.weights import compress_weights, constant_value


def int8_grid(table: torch.Tensor) -> torch.Tensor:
    """`table` as the INT8 IR stores it: the export's own compression applied to a one-lookup
    OpenVINO model and read back, so that torch and the IR hold the same values."""
    import openvino as ov
    from openvino import opset13 as ops

    ids = ops.parameter([-1], ov.Type.i64, name="input_ids")
    lookup = ops.gather(ops.constant(table.detach().float().cpu().numpy()), ids, 0)
    compressed = compress_weights(ov.Model([lookup], [ids]), embeddings_only=False)
    gather = next(op for op in compressed.get_ordered_ops() if op.get_type_name() == "Gather")
    return torch.from_numpy(constant_value(gather.input_value(0))).to(device=table.device, dtype=table.dtype)


def hold_word_table(model: nn.Module) -> None:
    """Put the word table on its INT8 grid and stop training it (QAT set-up)."""
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight.copy_(int8_grid(weight))
    freeze_word_table(model)


def freeze_word_table(model: nn.Module) -> None:
    """Stop training the word table: a held model loaded again, whose saved table is already on its grid."""
    model.get_input_embeddings().weight.requires_grad_(False)


def holds_word_table(model: nn.Module) -> bool:
    """Whether the word table is held (not trained), as `hold_word_table` leaves it."""
    return not model.get_input_embeddings().weight.requires_grad
