"""The `prune` job: training-free structured pruning of a fine-tuned QA model
(`qacompress.compression.pruning`), its export, compression report and, with a validation file, its
SQuAD scores."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import CompressionConfig, PruneConfig
from qacompress.compression.export import save_model_dir, write_int8_ir
from qacompress.compression.pruning import feature_batches, fisher_prune
from qacompress.core import atomic
from qacompress.core.errors import DataError, QACompressError
from qacompress.core.ondisk import IR_FILE
from qacompress.core.settings import settings_from, with_flags
from qacompress.data.arguments import DataTrainingArguments, load_split, split_source
from qacompress.data.postprocess import DecodeSettings
from qacompress.inference.evaluation import eval_data, score_model_dir
from qacompress.ir.compile import precision_flag
from qacompress.ir.ptq import ptq_overflow_fix
from qacompress.measure.report import compression_report
from qacompress.model.architecture import require_layout
from qacompress.model.loading import load_tokenizer


@dataclass
class _PruneCommand:
    """`qacompress prune` flags: these, then `PruneConfig`'s (--target_macs, --refit_samples, ...), then
    the data flags of `train` (--train_file, --max_seq_length, ...)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A fine-tuned QA model directory"})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the pruned model"})
    quantize: bool = field(default=True, metadata={"help": "INT8 post-training quantization of the IR"})
    quantization_samples: int = field(default=300, metadata={"help": "Calibration features for INT8 ranges"})
    inference_precision: str = precision_flag()
    device: str = field(
        default="auto", metadata={"help": "Where the Fisher scores and the re-fit run: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N"}
    )


PruneArguments = with_flags("PruneArguments", _PruneCommand, PruneConfig)


def resolve_device(name: str) -> torch.device:
    """`--device`: `auto` is the first CUDA GPU when torch sees one, else the CPU. The label draws use a
    CPU generator, so a GPU run selects what a CPU run selects (up to float rounding at near-ties)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise QACompressError(f"--device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QACompressError(f"--device {name}: torch sees no CUDA GPU here (use --device cpu or auto)")
    return device


def run_prune(args: Any, data_args: DataTrainingArguments) -> dict[str, Any]:
    """Prune, export and (with --validation_file) evaluate; returns the metrics."""
    started = time.perf_counter()
    config = settings_from(args, PruneConfig, seq_length=data_args.max_seq_length, quantized_latency=args.quantize,
                           latency_precision=args.inference_precision)  # fmt: skip
    if not args.model_name_or_path or not Path(args.model_name_or_path).is_dir():
        raise QACompressError(f"--model_name_or_path {args.model_name_or_path}: no such model directory")
    if not args.output_dir:
        raise QACompressError("prune needs --output_dir DIR")
    source = split_source(data_args, "train", "prune (calibration data)")
    tokenizer = load_tokenizer(args.model_name_or_path)
    model = load_qa_model(args.model_name_or_path).to(resolve_device(args.device))
    require_layout(model)
    examples, features = load_split(
        data_args, tokenizer, "train", needed_by="prune (calibration data)", labels=False, require_answers=False,
        version_2_with_negative=True, pad_to_max_length=False,
    )  # fmt: skip
    if len(examples) == 0:
        raise DataError("no calibration examples (check --max_train_samples)", file=source)
    if len(features) == 0:
        raise DataError("the calibration examples gave no features", file=source)
    batches = feature_batches(features, tokenizer, args.batch_size)
    result = fisher_prune(model, batches, config)
    pruned, summary = result.model, result.summary

    out = Path(args.output_dir)
    t0 = time.perf_counter()
    save_model_dir(pruned, tokenizer, out, export_ir=not args.quantize)
    if args.quantize:
        write_int8_ir(pruned, tokenizer, features, args.quantization_samples, out)
    summary["timings"]["export_s"] = round(time.perf_counter() - t0, 2)
    summary["quantized"] = args.quantize
    if args.quantize:
        summary["overflow_fix"] = ptq_overflow_fix()  # 8-bit weights on VNNI/AMX CPUs, 7-bit elsewhere
    # The report's before/after IR sizes would cost two more exports; the output's own IR is what counts.
    ir = out / IR_FILE
    summary["ir_bytes"] = ir.stat().st_size + ir.with_suffix(".bin").stat().st_size
    compression_report(
        lambda: load_qa_model(args.model_name_or_path), pruned, tokenizer, CompressionConfig(source="prune"), out,
        export_ir=False, extra={"pruning": summary},
    )  # fmt: skip
    metrics: dict[str, Any] = {
        "prune_heads_kept": summary["heads_kept"],
        "prune_neurons_kept": summary["neurons_kept"],
        "prune_encoder_macs_fraction": summary["encoder_macs_fraction"],
        "prune_runtime": round(time.perf_counter() - started, 2),
    }
    eval_source = data_args.validation_file
    if eval_source:
        eval_examples, eval_features = eval_data(
            eval_source, tokenizer, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
            max_samples=data_args.max_eval_samples, version_2_with_negative=data_args.version_2_with_negative,
            pad_to_max_length=False,
        )  # fmt: skip
        settings = DecodeSettings.from_args(data_args)
        metrics.update(score_model_dir(
            pruned, out, eval_examples, eval_features, settings, precision=args.inference_precision,
            batch_size=args.batch_size, pad_token_id=tokenizer.pad_token_id or 0,
        ))  # fmt: skip
    atomic.write_json(out / "prune_results.json", {**metrics, "timings": summary["timings"]})
    return metrics
