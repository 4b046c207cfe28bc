"""`qacompress benchmark`: speed, memory, size (and with a validation file EM/F1) of model folders side by
side, or the deployment variants of one (`--compare_variants`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qacompress.cli.common import parse
from qacompress.core import atomic
from qacompress.core.cpu import cpu_info
from qacompress.core.errors import QACompressError
from qacompress.core.settings import settings_from, with_flags
from qacompress.data.arguments import DataTrainingArguments
from qacompress.ir.compile import check_precision, precision_flag
from qacompress.measure.benchmark import BenchmarkSettings, format_table, measure_model
from qacompress.measure.variants import compare_variants, format_variants


@dataclass
class _BenchmarkCommand:
    """`qacompress benchmark` flags: these, then `BenchmarkSettings`' (--batch_sizes, --min_seconds, ...),
    then the data flags (--validation_file, --max_eval_samples, --max_seq_length, --doc_stride)."""

    model_name_or_path: list[str] = field(default_factory=list, metadata={"help": "Model directories to compare"})
    names: list[str] | None = field(default=None, metadata={"help": "Row names (default: directory names)"})
    backend: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={"help": "auto, openvino or torch: one for all models, or one per model (e.g. torch openvino to "
                  "compare a dir's torch model with its IR)"},
    )  # fmt: skip
    inference_precision: str = precision_flag()
    output_file: str = field(default="benchmark_results.json", metadata={"help": "Where the measurements go"})
    compare_variants: bool = field(
        default=False,
        metadata={"help": "Measure the deployment variants of one model dir (INT8, weights-only INT8, FP32, bf16 where "
                  "the CPU has it) and recommend one; writes benchmark.json to --output_dir"},
    )  # fmt: skip
    output_dir: str | None = field(
        default=None, metadata={"help": "With --compare_variants: where variants and benchmark.json go (default: the model dir)"}
    )


BenchmarkArguments = with_flags("BenchmarkArguments", _BenchmarkCommand, BenchmarkSettings)


def run(argv: list[str]) -> int:
    args, data_args = parse((BenchmarkArguments, DataTrainingArguments), argv, "qacompress benchmark")
    if not args.model_name_or_path:
        raise QACompressError("benchmark needs --model_name_or_path DIR [DIR ...]")
    bad = [b for b in args.backend if b not in ("auto", "openvino", "torch")]
    if bad:
        raise QACompressError(f"--backend must be auto, openvino or torch, got {bad[0]!r}")
    check_precision(args.inference_precision)
    count = len(args.model_name_or_path)
    if args.names and len(args.names) != count:
        raise QACompressError("--names needs one name per --model_name_or_path")
    if len(args.backend) not in (1, count):
        raise QACompressError("--backend takes one value, or one per --model_name_or_path")
    backends = args.backend * count if len(args.backend) == 1 else args.backend
    settings = settings_from(args, BenchmarkSettings, precision=args.inference_precision)
    validation = None
    if data_args.validation_file:
        validation = {"file": data_args.validation_file, "max_samples": data_args.max_eval_samples,
                      "max_seq_length": data_args.max_seq_length, "doc_stride": data_args.doc_stride}  # fmt: skip
    if args.compare_variants:
        if count != 1:
            raise QACompressError("--compare_variants takes one --model_name_or_path")
        report = compare_variants(args.model_name_or_path[0], args.output_dir, settings, validation)
        print(format_variants(report))
        print(f"wrote {report['path']}")
        return 0
    names = args.names or [Path(p).name for p in args.model_name_or_path]
    results = []
    for path, name, backend in zip(args.model_name_or_path, names, backends):
        print(f"measuring {name} ({path}, {backend}) ...", flush=True)
        results.append(measure_model(path, name=name, backend=backend, settings=settings, validation=validation))
    table = format_table(results, settings)
    print(table)

    record = {"settings": asdict(settings), "cpu": cpu_info(), "cpu_count": os.cpu_count(), "results": results}
    atomic.write_json(args.output_file, record)
    print(f"wrote {args.output_file}")
    return 0
