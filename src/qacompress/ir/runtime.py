"""Running an OpenVINO IR folder: on feature batches (a dict of numpy arrays in, start/end logits out),
and at full throughput."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qacompress.core.errors import ModelError
from qacompress.core.ondisk import IR_FILE
from qacompress.ir.compile import compile_ir, compiled_precision, core


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
        path = Path(model_dir) / IR_FILE
        if not path.is_file():
            raise ModelError(f"{model_dir}: no {IR_FILE} (export the model first: qacompress export)")
        self.model = core().read_model(str(path))
        self.compiled = compile_ir(
            self.model, precision=precision, hint=performance_hint, device=device, num_streams=num_streams
        )
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.model.inputs)
        self.path = path

    @property
    def precision(self) -> str:
        """The precision OpenVINO computes in ('f32', 'bf16', ...): `auto` and CPUs without bf16 decide it."""
        return compiled_precision(self.compiled)

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({k: inputs[k] for k in self.input_names})
        return np.array(result["start_logits"]), np.array(result["end_logits"])


def ir_throughput(
    model_dir: str | Path, inputs: dict[str, np.ndarray], *, seconds: float, precision: str = "f32"
) -> float:
    """Samples per second with the THROUGHPUT hint and as many async requests as OpenVINO suggests."""
    import openvino as ov

    compiled = compile_ir(Path(model_dir) / IR_FILE, precision=precision, hint="THROUGHPUT")
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    batch = next(iter(inputs.values())).shape[0]
    for _ in range(len(queue)):
        queue.start_async(inputs)
    queue.wait_all()
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        queue.start_async(inputs)
        done += 1
    queue.wait_all()
    return round(done * batch / (time.perf_counter() - start), 2)
