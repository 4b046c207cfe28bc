"""`qacompress evaluate`: SQuAD EM/F1 of a torch or OpenVINO model folder."""

from __future__ import annotations

from qacompress.cli.common import ModelRef, parse, print_metrics, require_model
from qacompress.data.arguments import DataTrainingArguments, split_source
from qacompress.data.postprocess import DecodeSettings
from qacompress.inference.evaluation import evaluate, prefixed


def run(argv: list[str]) -> int:
    ref, data_args = parse((ModelRef, DataTrainingArguments), argv, "qacompress evaluate")
    model_dir = require_model(ref)
    source = split_source(data_args, "validation", "evaluate")
    metrics = evaluate(
        model_dir, source, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        settings=DecodeSettings.from_args(data_args), backend=ref.backend, precision=ref.inference_precision,
        batch_size=ref.batch_size, max_samples=data_args.max_eval_samples, output_dir=ref.output_dir,
    )  # fmt: skip
    print_metrics(prefixed(metrics, "eval"))
    return 0
