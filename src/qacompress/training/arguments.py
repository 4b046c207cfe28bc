"""Command-line arguments of `qacompress train`: the flags of optimum-intel's run_qa.py, as dataclasses.

Model and data arguments are those of transformers' `run_qa.py`; compression and distillation flags
are those optimum-intel's `OVTrainingArguments` added; everything else is `TrainingArguments`. A single
`.json` file of arguments works as in run_qa, and flags that transformers 5 renamed are translated.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from qacompress.compression.distillation import DistillationConfig
from qacompress.core.errors import QACompressError
from qacompress.data.arguments import DataTrainingArguments
from qacompress.ir.compile import check_precision, precision_flag

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to fine-tune, and which teacher to distil from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model directory or Hub name; default: the packaged all-MiniLM-L6-v2 encoder"},
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's"})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored"})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)"})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tuned QA model to distil from (enables knowledge distillation)"}
    )


@dataclass
class QACompressTrainingArguments(DistillationConfig, TrainingArguments):
    """`TrainingArguments` plus compression, distillation (`DistillationConfig`'s flags) and export settings."""

    nncf_compression_config: str | None = field(
        default=None,
        metadata={"help": "NNCF JSON config (quantization and/or movement_sparsity sections)"},
    )
    compression: str = field(
        default="auto",
        metadata={
            "help": "auto: the --nncf_compression_config, else INT8 QAT with the default config; "
            "none: plain FP32 fine-tuning (baselines, teachers)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty output_dir that holds no checkpoint"}
    )
    export_openvino: bool = field(default=True, metadata={"help": "Write openvino_model.xml/.bin beside the model"})
    inference_precision: str = precision_flag()

    def __post_init__(self) -> None:
        if self.compression not in ("auto", "none"):
            raise QACompressError(f"--compression must be 'auto' or 'none', got {self.compression!r}")
        if self.compression == "none" and self.nncf_compression_config:
            raise QACompressError("--compression none contradicts --nncf_compression_config; pass one of them")
        DistillationConfig.__post_init__(self)  # neither base's __post_init__ calls the other's
        check_precision(self.inference_precision)
        if (self.fp16 or self.fp16_full_eval) and not _has_accelerator():
            raise QACompressError(
                "--fp16 needs a CUDA GPU (or another accelerator torch supports) and none is available; drop "
                "--fp16 (CPU training runs in FP32; --bf16 works on CPUs with bfloat16 support)"
            )
        if not _has_accelerator():
            # On a CPU-only machine, say so: accelerate then sets up gloo DDP under torchrun (without
            # it, each torchrun process would train alone), and pinning memory would only warn.
            self.use_cpu = True
            self.dataloader_pin_memory = False
        TrainingArguments.__post_init__(self)


def _has_accelerator() -> bool:
    """CUDA, ROCm, XPU, MPS...: whichever torch can train on; transformers decides what each supports."""
    import torch

    return torch.accelerator.is_available()


#: Flags of the transformers 4 era that users' scripts still pass, and their transformers 5 names.
LEGACY_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--no_cuda": "--use_cpu", "--warmup_ratio": "--warmup_steps"}


def translate_legacy(argv: list[str]) -> list[str]:
    """`argv` with transformers 4 flag names replaced by their transformers 5 names (or refused with why)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in LEGACY_FLAGS:
            logger.warning("%s is called %s in transformers 5; using that", name, LEGACY_FLAGS[name])
            arg = LEGACY_FLAGS[name] + eq + value
        elif name == "--logging_dir":
            raise QACompressError(
                "--logging_dir was removed in transformers 5; set TENSORBOARD_LOGGING_DIR=DIR instead "
                "(TensorBoard logs go to OUTPUT_DIR/runs by default)"
            )
        out.append(arg)
    return out


def parse_train_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, QACompressTrainingArguments]:
    """Parse flags, or a single .json file of them (as run_qa does)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, QACompressTrainingArguments))
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            if not os.path.isfile(argv[0]):
                raise QACompressError(f"{argv[0]}: arguments file not found")
            model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=translate_legacy(argv))
    except ValueError as exc:
        raise QACompressError(str(exc).splitlines()[0]) from None
    return model_args, data_args, training_args


def build_parser() -> HfArgumentParser:
    """The parser, for `--help` and documentation."""
    return HfArgumentParser((ModelArguments, DataTrainingArguments, QACompressTrainingArguments))
