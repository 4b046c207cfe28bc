"""What the verbs of the `qacompress` command share: the model reference, argument parsing into
dataclasses, logging, and how metrics are printed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from qacompress.core.errors import QACompressError
from qacompress.ir.compile import precision_flag


@dataclass
class ModelRef:
    """Which model directory to use, and how to run it."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model directory (torch or OpenVINO IR)"})
    backend: str = field(default="auto", metadata={"help": "auto (IR if present), openvino or torch"})
    inference_precision: str = precision_flag()
    batch_size: int = field(default=8, metadata={"help": "Features per model call"})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write results (optional)"})


def setup_logging(debug: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.DEBUG if debug else logging.INFO)
    for noisy in ("torchao", "torch.utils._pytree", "nncf", "datasets", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR if noisy.startswith("torch") else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse(dataclasses: tuple, argv: list[str], prog: str):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclasses, prog=prog)
    return parser.parse_args_into_dataclasses(args=argv)


def require_model(ref: ModelRef) -> str:
    if not ref.model_name_or_path:
        raise QACompressError("--model_name_or_path DIR is required")
    if not Path(ref.model_name_or_path).is_dir():
        raise QACompressError(f"{ref.model_name_or_path}: no such model directory")
    return ref.model_name_or_path


def print_metrics(metrics: dict) -> None:
    if not metrics:
        return
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
