"""Running a QA model on feature batches: OpenVINO IR on CPU, or torch, behind one call.

Evaluation, prediction and benchmarks call a runner with a dict of numpy arrays and get start/end
logits back, so the same features, post-processing and metric serve a torch model and its IR alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from qacompress.compression.checkpoint import load_qa_model
from qacompress.core.atomic import recover
from qacompress.core.errors import ModelError
from qacompress.ir.runtime import OpenVINOQAModel
from qacompress.model.architecture import input_names
from qacompress.model.loading import is_openvino_dir


class QARunner(Protocol):
    """Anything that maps model inputs to (start_logits, end_logits)."""

    input_names: tuple[str, ...]

    @property
    def precision(self) -> str:
        """What it computes in ('f32', 'bf16', 'float32', ...)."""
        ...

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


class TorchQAModel:
    """A torch QA model run without gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.input_names = input_names(model.config)

    @property
    def precision(self) -> str:
        """The weights' dtype ('float32', 'bfloat16', ...)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        device = next(self.model.parameters()).device  # wherever training left the model
        batch = {k: torch.from_numpy(np.asarray(inputs[k])).to(device) for k in self.input_names if k in inputs}
        with torch.inference_mode():
            out = self.model(**batch)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


def load_runner(model_dir: str, *, backend: str = "auto", precision: str = "f32", device: str = "CPU") -> QARunner:
    """The OpenVINO IR in `model_dir` if there is one (or `backend="openvino"`), else the torch model."""
    if backend not in ("auto", "openvino", "torch"):
        raise ModelError(f"--backend must be auto, openvino or torch, got {backend!r}")
    if Path(model_dir).is_dir():
        recover(model_dir)  # finish or discard an export that a crash interrupted
    if backend == "openvino" or (backend == "auto" and is_openvino_dir(model_dir)):
        return OpenVINOQAModel(model_dir, precision=precision, device=device)
    return TorchQAModel(load_qa_model(model_dir))
