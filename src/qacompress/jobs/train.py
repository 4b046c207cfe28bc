"""The `qacompress train` job: run_qa.py's fine-tuning, with compression, end to end.

Read top to bottom: load tokenizer, data and features; pick the compression (a config file, the
default INT8 QAT, or none); then either one training phase (FP32 or QAT) or, with movement sparsity,
two: a float warm-up that learns which heads and neurons to drop, physical removal of them, then
fine-tuning of the smaller model with quantizers (JPQD). Each phase is a plain `Trainer` run, so
checkpoints, logging, `torchrun` and `--resume_from_checkpoint` behave as in transformers. The end
result is a model directory with the torch model, tokenizer and OpenVINO IR, and the result files of
transformers' examples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, default_data_collator, set_seed

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import CompressionConfig, default_compression_config, load_compression_config
from qacompress.compression.distillation import check_hidden_sizes, check_teacher_tokenizer, freeze_teacher
from qacompress.compression.export import save_model_dir
from qacompress.core import atomic
from qacompress.core.errors import QACompressError
from qacompress.core.ondisk import PRUNED_DIR
from qacompress.data.arguments import DataTrainingArguments, load_split, split_source
from qacompress.data.postprocess import DecodeSettings
from qacompress.inference.evaluation import score_model_dir
from qacompress.measure.variants import warn_if_int8_is_slower
from qacompress.model.loading import default_model_path, load_config, load_tokenizer
from qacompress.training.arguments import ModelArguments, QACompressTrainingArguments
from qacompress.training.phases import Data, Run, last_complete_checkpoint
from qacompress.training.plans import plan_for

logger = logging.getLogger(__name__)


# ---- set-up -------------------------------------------------------------------------------------------
def resolve_compression(args: QACompressTrainingArguments) -> CompressionConfig | None:
    """The compression a run applies: the given config, default QAT, or none for FP32."""
    if args.compression == "none":
        return None
    if args.nncf_compression_config:
        config = load_compression_config(args.nncf_compression_config)
    else:
        config = default_compression_config()
    for warning in config.warnings:
        logger.warning(warning)
    return config


def check_output_dir(args: QACompressTrainingArguments) -> None:
    """Refuse to train into a non-empty output_dir that holds nothing to resume (as run_qa did)."""
    out = Path(args.output_dir)
    if not args.do_train or not out.is_dir() or args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    resumable = last_complete_checkpoint(out) or (out / PRUNED_DIR).is_dir()
    if not resumable and any(out.iterdir()):
        raise QACompressError(
            f"output directory {out} already exists and is not empty, and holds no checkpoint to resume; "
            "use --overwrite_output_dir to train into it anyway, or choose another --output_dir"
        )


def check_best_metric(args: QACompressTrainingArguments, version_2_with_negative: bool) -> None:
    """`--metric_for_best_model` must name a metric that evaluations during training report (Trainer
    defaults it to `loss` with `--load_best_model_at_end`, but the evaluation features carry no labels)."""
    name = args.metric_for_best_model
    if not args.do_train or name is None:
        return
    wanted = ["exact_match", "f1"]
    if version_2_with_negative:
        wanted += [f"{p}_{m}" for p in ("HasAns", "NoAns", "best") for m in ("exact_match", "f1")]
    if name.removeprefix("eval_") not in wanted:
        raise QACompressError(
            f"--metric_for_best_model {name}: evaluations during training report SQuAD metrics; "
            f"use one of {', '.join(wanted)}"
        )


def load_data(data_args: DataTrainingArguments, args: QACompressTrainingArguments, tokenizer) -> Data:
    """Examples and features for the requested splits (prepared once, on the main process first)."""
    data = Data(
        collator=default_data_collator if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer),
        max_seq_length=data_args.max_seq_length,
    )
    if args.do_train:
        split_source(data_args, "train", "--do_train")
    if args.do_eval:
        split_source(data_args, "validation", "--do_eval")
    with args.main_process_first(desc="dataset preprocessing"):
        if args.do_train:
            _, data.train_features = load_split(data_args, tokenizer, "train", needed_by="--do_train", labels=True)
        if args.do_eval:
            data.eval_examples, data.eval_features = load_split(
                data_args, tokenizer, "validation", needed_by="--do_eval", labels=False
            )
    return data


def load_test_data(data_args: DataTrainingArguments, tokenizer) -> tuple[Any, Any]:
    """`--do_predict` data: answers optional (scored when present), features padded as evaluation's."""
    return load_split(
        data_args, tokenizer, "test", needed_by="--do_predict", labels=False, require_answers=False,
        pad_to_max_length=True,
    )  # fmt: skip


# ---- the job -----------------------------------------------------------------------------------------
def run_train(model_args: ModelArguments, data_args: DataTrainingArguments, args: QACompressTrainingArguments) -> dict:
    """Fine-tune (with compression), evaluate and export; returns all metrics."""
    set_seed(args.seed)
    check_output_dir(args)
    check_best_metric(args, data_args.version_2_with_negative)
    model_path = model_args.model_name_or_path or default_model_path()
    if model_args.model_name_or_path is None:
        logger.info("no --model_name_or_path: using the packaged all-MiniLM-L6-v2 encoder at %s", model_path)
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_path, cache_dir=model_args.cache_dir)
    compression = resolve_compression(args)
    teacher = load_teacher(model_args, tokenizer)
    if teacher is not None and args.hidden_distillation_weight > 0:
        check_hidden_sizes(load_config(model_path), teacher.config, model_args.teacher_model_name_or_path)
    data = load_data(data_args, args, tokenizer)
    settings = DecodeSettings.from_args(data_args)
    load = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision)
    if model_args.config_name:
        load["config"] = load_config(model_args.config_name, cache_dir=model_args.cache_dir)

    metrics: dict[str, Any] = {}
    if args.do_train:
        run = Run(model_path, load, tokenizer, compression, args, data, settings, teacher)
        model, train_metrics = plan_for(compression)(run)
        train_metrics["train_samples"] = len(data.train_features)
        metrics.update(train_metrics)
        if args.should_save:
            atomic.write_json(Path(args.output_dir) / "train_results.json", train_metrics)
            qconfig = compression.quantization if compression is not None else None
            int8_embeddings = qconfig.int8_embeddings if qconfig is not None else True
            save_model_dir(model, tokenizer, args.output_dir, export_ir=args.export_openvino, int8_embeddings=int8_embeddings)
            if args.export_openvino:
                warn_if_int8_is_slower(model, tokenizer, args.output_dir, data_args.max_seq_length)
    else:
        model = load_qa_model(model_path, **load)
    if args.should_save and args.do_eval:
        metrics.update(score_split(model, tokenizer, args, data.eval_examples, data.eval_features, settings, "eval"))
    if args.should_save and args.do_predict:
        examples, features = load_test_data(data_args, tokenizer)
        metrics.update(score_split(model, tokenizer, args, examples, features, settings, "predict"))
    if args.should_save:
        atomic.write_json(Path(args.output_dir) / "all_results.json", metrics)
    return metrics


def load_teacher(model_args: ModelArguments, tokenizer) -> torch.nn.Module | None:
    """The frozen teacher, refused if it does not share the student's tokenizer."""
    name = model_args.teacher_model_name_or_path
    if not name:
        return None
    teacher_tokenizer = load_tokenizer(name, cache_dir=model_args.cache_dir)
    check_teacher_tokenizer(tokenizer, teacher_tokenizer, name)
    return freeze_teacher(load_qa_model(name, cache_dir=model_args.cache_dir))


def score_split(model, tokenizer, args: QACompressTrainingArguments, examples, features, settings, prefix: str) -> dict:
    """SQuAD metrics of the torch model and its exported IR (`evaluation.score_model_dir`)."""
    return score_model_dir(
        model, args.output_dir, examples, features, settings, prefix=prefix, with_ir=args.export_openvino,
        precision=args.inference_precision, batch_size=args.per_device_eval_batch_size,
        pad_token_id=tokenizer.pad_token_id or 0,
    )  # fmt: skip
