"""The `qacompress` command: a thin layer over the library.

    qacompress train     ...run_qa.py flags...          fine-tune with QAT / JPQD, evaluate, export
    qacompress evaluate  --model_name_or_path DIR ...   SQuAD EM/F1 of a torch or OpenVINO model dir
    qacompress prune     --model_name_or_path DIR --train_file F --target_macs 0.6 --output_dir OUT
    qacompress export    --model_name_or_path DIR --output_dir OUT [--variant auto|int8|int8_weights|fp32]
    qacompress predict   --model_name_or_path DIR --question Q --context C | --input_file F
    qacompress benchmark --model_name_or_path DIR [DIR ...]

User mistakes print one line and exit with status 2 (`--debug` shows the traceback).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qacompress.core.errors import QACompressError

logger = logging.getLogger("qacompress")


@dataclass
class ModelRef:
    """Which model directory to use, and how to run it."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model directory (torch or OpenVINO IR)"})
    backend: str = field(default="auto", metadata={"help": "auto (IR if present), openvino or torch"})
    inference_precision: str = field(default="f32", metadata={"help": "OpenVINO CPU precision: f32, bf16 or auto"})
    batch_size: int = field(default=8, metadata={"help": "Features per model call"})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write results (optional)"})


@dataclass
class ExportArguments:
    variant: str | None = field(
        default=None,
        metadata={"help": "auto (the fastest on this CPU, see `benchmark --compare_variants`), int8, int8_weights "
                  "or fp32; default: int8 for a QAT/JPQD model, fp32 otherwise"},
    )  # fmt: skip


@dataclass
class PredictArguments:
    question: str | None = field(default=None, metadata={"help": "A question (with --context)"})
    context: str | None = field(default=None, metadata={"help": "The text to find the answer in"})
    input_file: str | None = field(default=None, metadata={"help": ".jsonl/.json/.csv of {id?, question, context}"})
    output_file: str | None = field(default=None, metadata={"help": "Write answers as JSON lines here"})


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.DEBUG if debug else logging.INFO)
    for noisy in ("torchao", "torch.utils._pytree", "nncf", "datasets", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR if noisy.startswith("torch") else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parse(dataclasses: tuple, argv: list[str], prog: str):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclasses, prog=prog)
    return parser.parse_args_into_dataclasses(args=argv)


def cmd_train(argv: list[str]) -> int:
    from qacompress.training.arguments import parse_train_args
    from qacompress.training.run import run_train

    if argv in (["-h"], ["--help"]):
        from qacompress.training.arguments import build_parser

        build_parser().print_help()
        return 0
    try:
        metrics = run_train(*parse_train_args(argv))
    finally:
        _release_process_group()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary is enough
        _print_metrics(metrics)
    return 0


def _release_process_group() -> None:
    """Under torchrun, each rank releases its process group when its work is done (rank 0 still
    evaluates and exports when the others finish): left to interpreter exit, the teardown of gloo's
    threads once aborted a finished rank (SIGABRT, "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_evaluate(argv: list[str]) -> int:
    from qacompress.training.arguments import DataTrainingArguments
    from qacompress.inference.evaluation import DecodeSettings, evaluate, prefixed

    ref, data_args = _parse((ModelRef, DataTrainingArguments), argv, "qacompress evaluate")
    model_dir = _require_model(ref)
    source = data_args.validation_file or data_args.dataset_name
    if not source:
        raise QACompressError("evaluate needs --validation_file FILE or --dataset_name NAME")
    metrics = evaluate(
        model_dir, source, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        settings=DecodeSettings.from_args(data_args), backend=ref.backend, precision=ref.inference_precision,
        batch_size=ref.batch_size, max_samples=data_args.max_eval_samples, output_dir=ref.output_dir,
    )  # fmt: skip
    _print_metrics(prefixed(metrics, "eval"))
    return 0


def cmd_prune(argv: list[str]) -> int:
    from qacompress.training.arguments import DataTrainingArguments
    from qacompress.compression.pruning import PruneArguments, run_prune

    args, data_args = _parse((PruneArguments, DataTrainingArguments), argv, "qacompress prune")
    _print_metrics(run_prune(args, data_args))
    return 0


def cmd_export(argv: list[str]) -> int:
    from qacompress.compression.export import default_variant, save_model_dir, saved_int8_embeddings
    from qacompress.model.loading import load_qa_model, load_tokenizer
    from qacompress.measure.variants import EXPORT_CHOICES, RUNTIME_VARIANTS, choose_variant

    ref, export_args = _parse((ModelRef, ExportArguments), argv, "qacompress export")
    model_dir = _require_model(ref)
    if not ref.output_dir:
        raise QACompressError("export needs --output_dir DIR")
    variant = export_args.variant
    if variant is not None and variant not in EXPORT_CHOICES:
        raise QACompressError(f"--variant must be one of {', '.join(EXPORT_CHOICES)}, got {variant!r}")
    model = load_qa_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    note = ""
    if variant == "auto":
        variant, why = choose_variant(model_dir, model, tokenizer)
        note = f" (auto: {variant}, {why})"
        if variant in RUNTIME_VARIANTS:  # a precision, not an IR: ship its IR and say how to run it
            note += f"; run it with --inference_precision {variant}"
            variant = RUNTIME_VARIANTS[variant]
    variant = variant or default_variant(model)
    save_model_dir(model, tokenizer, ref.output_dir, variant=variant, int8_embeddings=saved_int8_embeddings(model_dir))
    print(f"exported {model_dir} -> {ref.output_dir}/openvino_model.xml as {variant}{note}")
    return 0


def cmd_predict(argv: list[str]) -> int:
    from qacompress.training.arguments import DataTrainingArguments
    from qacompress.data.squad import load_examples
    from qacompress.inference.evaluation import DecodeSettings
    from qacompress.inference.predict import QAPredictor

    ref, pred, data_args = _parse((ModelRef, PredictArguments, DataTrainingArguments), argv, "qacompress predict")
    model_dir = _require_model(ref)
    if bool(pred.input_file) == bool(pred.question or pred.context):
        raise QACompressError("predict needs either --question Q --context C, or --input_file FILE")
    settings = DecodeSettings.from_args(data_args)
    predictor = QAPredictor(
        model_dir, backend=ref.backend, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        settings=settings, batch_size=ref.batch_size, precision=ref.inference_precision,
    )
    if pred.input_file:
        examples = load_examples(pred.input_file, require_answers=False, version_2_with_negative=True)
        answers = predictor.predict_examples(examples, progress=True)
        lines = [json.dumps(a.to_dict(), ensure_ascii=False) for a in answers]
        if pred.output_file:
            from qacompress.core import atomic

            atomic.write_bytes(pred.output_file, ("\n".join(lines) + "\n").encode("utf-8"))
            print(f"wrote {len(lines)} answers to {pred.output_file}")
        else:
            print("\n".join(lines))
    else:
        if not (pred.question and pred.context):
            raise QACompressError("--question and --context go together")
        answer = predictor(pred.question, pred.context)
        print(f"{answer.text}\t(score {answer.score:.3f}, characters {answer.start}-{answer.end})")
    return 0


def cmd_benchmark(argv: list[str]) -> int:
    from qacompress.measure.benchmark import main as benchmark_main

    return benchmark_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "prune": cmd_prune,
    "export": cmd_export,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
}


def _require_model(ref: ModelRef) -> str:
    if not ref.model_name_or_path:
        raise QACompressError("--model_name_or_path DIR is required")
    if not Path(ref.model_name_or_path).is_dir():
        raise QACompressError(f"{ref.model_name_or_path}: no such model directory")
    return ref.model_name_or_path


def _print_metrics(metrics: dict) -> None:
    if not metrics:
        return
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        value = metrics[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qacompress` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nqacompress: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    _setup_logging(debug)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except QACompressError as exc:
        if debug:
            raise
        print(f"qacompress: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qacompress: interrupted (completed checkpoints are kept; run the same command to resume)", file=sys.stderr)
        return 130
