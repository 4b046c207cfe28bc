"""Tracing a torch QA model into an `openvino.Model`: the example input, a float CPU copy to trace, and
the conversion itself with optimum-intel's output names."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import torch
from torch import nn


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


def convert(model: nn.Module, example_input: dict[str, torch.Tensor]):
    """`openvino.convert_model` of a float CPU model, traced quietly, with outputs named as optimum-intel
    names them (`start_logits`, `end_logits`)."""
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings(), quiet_logger("transformers.modeling_utils"):
        warnings.simplefilter("ignore")  # the tracer's warnings about data-dependent branches
        ov_model = ov.convert_model(model, example_input=dict(example_input))
    for output, name in zip(ov_model.outputs, ("start_logits", "end_logits")):
        output.get_tensor().set_names({name})
    return ov_model
