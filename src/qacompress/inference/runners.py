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

from qacompress.core.atomic import recover
from qacompress.core.errors import ModelError
from qacompress.model.loading import IR_FILE, is_openvino_dir

#: OpenVINO's CPU plugin runs "FP32" models in bf16 on CPUs that support it; qacompress asks for f32
#: by default so that an IR agrees with its torch model, and lets the user choose.
PRECISIONS = ("f32", "bf16", "auto")


class QARunner(Protocol):
    """Anything that maps model inputs to (start_logits, end_logits)."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


class OpenVINOQAModel:
    """An OpenVINO IR directory compiled for a device (CPU by default)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "CPU",
        precision: str = "f32",
        performance_hint: str = "LATENCY",
        num_streams: int | None = None,
    ) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ModelError(f"--inference_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        path = Path(model_dir) / IR_FILE
        if not path.is_file():
            raise ModelError(f"{model_dir}: no {IR_FILE} (export the model first: qacompress export)")
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        config: dict[str, str] = {"PERFORMANCE_HINT": performance_hint}
        if precision != "auto" and device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = precision
        if num_streams is not None:
            config["NUM_STREAMS"] = str(num_streams)
        self.compiled = self.core.compile_model(self.model, device, config)
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.model.inputs)
        self.path = path

    @property
    def precision(self) -> str:
        """The precision OpenVINO computes in ('f32', 'bf16', ...): `auto` and CPUs without bf16 decide it."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({k: inputs[k] for k in self.input_names})
        return np.array(result["start_logits"]), np.array(result["end_logits"])


class TorchQAModel:
    """A torch QA model run without gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        forward_names = ("input_ids", "attention_mask", "token_type_ids")
        has_types = getattr(model.config, "type_vocab_size", 0) > 0 and model.config.model_type != "distilbert"
        self.input_names = tuple(n for n in forward_names if n != "token_type_ids" or has_types)

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
    from qacompress.model.loading import load_qa_model

    return TorchQAModel(load_qa_model(model_dir))
