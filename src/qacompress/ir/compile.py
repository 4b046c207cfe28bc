"""Compiling an IR for OpenVINO's CPU plugin: the one place that sets its performance and precision hints.

The CPU plugin runs "FP32" models in bf16 on CPUs that support it; qacompress asks for f32 by default
so that an IR agrees with its torch model, and lets the user choose (`auto` leaves it to OpenVINO).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

from qacompress.core.errors import ModelError

PRECISIONS = ("f32", "bf16", "auto")


def precision_flag() -> Any:
    """The `--inference_precision` field of every command that runs an IR: declared here, once."""
    return field(default="f32", metadata={"help": "OpenVINO CPU precision of the IR: f32, bf16 or auto"})


def check_precision(precision: str) -> str:
    """`precision` if OpenVINO's CPU plugin takes it, else the one-line error (before any work starts)."""
    if precision not in PRECISIONS:
        raise ModelError(f"--inference_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@functools.cache
def core() -> Any:
    """One `openvino.Core` per process: each new one reads the plugin configuration again."""
    import openvino as ov

    return ov.Core()


def compile_ir(
    model: Any,
    *,
    precision: str = "f32",
    hint: str = "LATENCY",
    device: str = "CPU",
    num_streams: int | None = None,
) -> Any:
    """`model` (an `openvino.Model` or the path of an `.xml`) compiled for `device` with a performance
    `hint` (LATENCY or THROUGHPUT) and an inference `precision` (f32, bf16 or auto; CPU only)."""
    check_precision(precision)
    config: dict[str, str] = {"PERFORMANCE_HINT": hint}
    if precision != "auto" and device == "CPU":
        config["INFERENCE_PRECISION_HINT"] = precision
    if num_streams is not None:
        config["NUM_STREAMS"] = str(num_streams)
    return core().compile_model(str(model) if isinstance(model, Path) else model, device, config)


def compiled_precision(compiled: Any) -> str:
    """The precision OpenVINO computes in ('f32', 'bf16', ...): `auto` and CPUs without bf16 decide it."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def bound_inference(model: Any, inputs: dict[str, Any], *, precision: str = "f32") -> tuple[Callable[[], object], str]:
    """One batch of `inputs` through `model` compiled for latency, as a call ready to time, and the precision
    OpenVINO computes it in: compiling and feeding stay outside the timed call. Inputs the IR does not
    take are left out (a model without token types, fed the usual three)."""
    compiled = compile_ir(model, precision=precision)
    request = compiled.create_infer_request()
    feed = {name: inputs[name] for name in (port.get_any_name() for port in compiled.inputs)}
    return (lambda: request.infer(feed)), compiled_precision(compiled)
