"""The `compress` job: from a fine-tuned QA model M to the fastest model for this CPU that keeps its
accuracy, in one run.

1. **Checks** before minutes of work: M exists and is fine-tuned for QA (its start/end predictions are
   not near uniform: Fisher importance draws its labels from them), the training data has answers.
2. **Plan**: M's FP32 IR and its INT8 IR (post-training quantized) are timed at batch 1 and
   `--max_seq_length`, run in `--inference_precision` (f32 by default, as every qacompress command runs
   an IR; `auto` is OpenVINO's own choice, bf16 on CPUs with native bf16, as optimum-intel runs it); the
   faster is the deployment precision and its latency the unpruned baseline.
   `--target_speedup X` keeps 1/X of that latency, `--target_latency F` keeps F of it.
3. **Selection and recovery**: a `structured_pruning` run of `train` (`qacompress.training.structured`:
   Fisher selection under a latency table measured here for that precision, removal, re-fit, then
   fine-tuning) with M as the teacher, and quantizers in training only where INT8 is the deployment.
   The config it runs is kept as `OUT/compress_config.json` (`qacompress train` reruns it).
4. **Report**: EM/F1 of M and of the result's IR on the validation questions with paired 95% intervals,
   batch-1 latency of the result against M in torch and against M's best unpruned IR, sizes, heads and
   neurons kept per layer, wall time per phase, the command and the CPU: `compress_report.json` and
   `compress_report.png`.

Run again, it resumes: the plan is read back from `compress_plan.json`, training from its checkpoints.
The recovery defaults (`COMPRESS_DEFAULTS`) are those the evidence protocol of `benchmarks/protocol.py`
chose where it has measured them (docs/compress.md says which), the best recipe-(b) run's elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import DEFAULT_QUANTIZATION
from qacompress.compression.fisher import prediction_entropy
from qacompress.compression.latency import IRCall
from qacompress.compression.pruning import feature_batches
from qacompress.core import atomic
from qacompress.core.cpu import cpu_info, describe
from qacompress.core.errors import BudgetError, QACompressError
from qacompress.core.ondisk import (
    COMPRESS_CONFIG,
    COMPRESS_LOCK,
    COMPRESS_PLAN,
    COMPRESS_REPORT,
    COMPRESS_WALL,
    FINETUNE_DIR,
    PRUNED_DIR,
)
from qacompress.core.timing import interleaved_medians, synthetic_inputs
from qacompress.data.arguments import DataTrainingArguments, split_source
from qacompress.data.features import prepare_eval_features
from qacompress.data.intervals import paired_bootstrap
from qacompress.data.metrics import question_scores
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import gold_answers, load_examples
from qacompress.inference.evaluation import evaluate
from qacompress.inference.runners import TorchQAModel
from qacompress.ir.runtime import OpenVINOQAModel
from qacompress.jobs.train import run_train
from qacompress.measure.benchmark import dir_size_mb
from qacompress.model.architecture import input_names
from qacompress.model.loading import load_tokenizer
from qacompress.training.arguments import ModelArguments, QACompressTrainingArguments, translate_legacy
from qacompress.training.phases import last_complete_checkpoint

logger = logging.getLogger(__name__)

#: Mean start/end entropy (fraction of uniform) above which M is taken for a model not fine-tuned for QA:
#: the reference MiniLM of benchmarks/reference lies far below, the encoder with a fresh head next to 1.
NEAR_UNIFORM = 0.9
#: Training flags whose defaults `compress` changes (any flag given on the command line wins). The learning
#: rate is provisional (the best recipe-(b) run of docs/results.md); the protocol chose the distillation
#: weight (`train`'s 0.5 over 0.9, two seeds) and four epochs of recovery (at 2x on the reference four
#: recovered 1.1 F1 more than two from the same selection, 2.0 more than one at 1.5x: docs/compress.md).
#: Training batches are padded to their longest feature and drawn in groups of similar length: SQuAD
#: features at length 256 average about 160 tokens, and a recovery step on them takes about half the
#: time of one padded to 256.
COMPRESS_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1.2e-4,
    "num_train_epochs": 4.0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "warmup_steps": 0.1,
    "max_seq_length": 256,
    "pad_to_max_length": False,
    "train_sampling_strategy": "group_by_length",
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 25,
}


@dataclass
class CompressSettings:
    """What `compress` aims for. Exactly one of `target_speedup` / `target_latency`."""

    target_speedup: float | None = field(
        default=None, metadata={"help": "Speed-up to reach over the best unpruned IR of the model on this CPU (e.g. 2)"}
    )
    target_latency: float | None = field(
        default=None, metadata={"help": "Fraction of the best unpruned IR's latency to keep, in (0, 1]"}
    )
    selection_samples: int = field(default=256, metadata={"help": "Training features the Fisher selection uses"})
    remove_layers: bool = field(
        default=False,
        metadata={"help": "Remove whole encoder layers where that keeps more Fisher information within the budget"},
    )
    allow_untrained_model: bool = field(
        default=False,
        metadata={"help": "Compress a model whose predictions are near uniform (not fine-tuned for QA) anyway"},
    )

    def __post_init__(self) -> None:
        if (self.target_speedup is None) == (self.target_latency is None):
            raise QACompressError("give exactly one of --target_speedup X (>= 1) and --target_latency F (in (0, 1])")
        if self.target_speedup is not None and self.target_speedup < 1:
            raise QACompressError(f"--target_speedup must be >= 1, got {self.target_speedup}")
        if self.target_latency is not None and not 0 < self.target_latency <= 1:
            raise QACompressError(f"--target_latency must be in (0, 1], got {self.target_latency}")
        if self.selection_samples < 1:
            raise QACompressError(f"--selection_samples must be >= 1, got {self.selection_samples}")

    @property
    def fraction(self) -> float:
        """The share of the best unpruned IR's latency to keep."""
        return self.target_latency if self.target_latency is not None else 1.0 / self.target_speedup


Arguments = tuple[CompressSettings, ModelArguments, DataTrainingArguments, QACompressTrainingArguments]


def parse_compress_args(argv: list[str]) -> Arguments:
    """`compress` flags: its own, then all of `train`'s, with `COMPRESS_DEFAULTS` as their defaults."""
    parser = HfArgumentParser((CompressSettings, ModelArguments, DataTrainingArguments, QACompressTrainingArguments))
    parser.set_defaults(**COMPRESS_DEFAULTS)
    return tuple(parser.parse_args_into_dataclasses(args=translate_legacy(argv)))  # type: ignore[return-value]


def compress(
    model_name_or_path: str,
    train_file: str,
    output_dir: str,
    *,
    validation_file: str | None = None,
    target_speedup: float | None = None,
    target_latency: float | None = None,
    **flags: Any,
) -> dict[str, Any]:
    """`qacompress compress` from Python; `flags` are any of its other flags (`max_steps=200`,
    `learning_rate=1e-4`, ...). Returns the report (also written to `output_dir/compress_report.json`)."""
    given = {"model_name_or_path": model_name_or_path, "train_file": train_file, "output_dir": output_dir,
             "validation_file": validation_file, "target_speedup": target_speedup, "target_latency": target_latency,
             **flags}  # fmt: skip
    argv = [a for key, value in given.items() if value is not None for a in (f"--{key}", str(value))]
    return run_compress(*parse_compress_args(argv), command="qacompress compress " + " ".join(argv))


def run_compress(
    settings: CompressSettings,
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    args: QACompressTrainingArguments,
    *,
    command: str,
) -> dict[str, Any]:
    """The four phases of the module docstring; returns the report."""
    model_path = model_args.model_name_or_path
    if not model_path or not Path(model_path).is_dir():
        raise QACompressError(f"--model_name_or_path {model_path}: compress needs a fine-tuned QA model directory")
    out = Path(args.output_dir)
    _check_output_dir(out, args.overwrite_output_dir)

    def busy() -> None:
        raise QACompressError(f"{out} is in use by another qacompress run (wait for it, or choose another --output_dir)")

    with atomic.file_lock(out / COMPRESS_LOCK, on_busy=busy):
        if args.overwrite_output_dir:  # start afresh: an earlier run's plan, selection and checkpoints go
            (out / COMPRESS_PLAN).unlink(missing_ok=True)
            (out / COMPRESS_WALL).unlink(missing_ok=True)
            for stale in (out / PRUNED_DIR, out / FINETUNE_DIR, *out.glob("checkpoint-*")):
                shutil.rmtree(stale, ignore_errors=True)
        with _phase(out, "checks"):
            tokenizer = load_tokenizer(model_path)
            _check_inputs(settings, model_path, tokenizer, data_args)
        with _phase(out, "plan"):
            plan = _plan(out, model_path, data_args.max_seq_length, settings, args.inference_precision)
        with _phase(out, "recovery"):
            metrics = _recover(out, plan, settings, model_args, data_args, args)
        with _phase(out, "report"):
            report = _report(out, plan, model_path, data_args, metrics, args.seed)
        report.update(command=command, cpu=cpu_info(), cpu_line=describe(), wall_time_s=atomic.read_json(out / COMPRESS_WALL))
        atomic.write_json(out / COMPRESS_REPORT, report)
        _plot(report, out / COMPRESS_REPORT.replace(".json", ".png"))
        return report


@contextlib.contextmanager
def _phase(out: Path, name: str) -> Iterator[None]:
    """Add the phase's wall time to `OUT/compress_wall.json`, also when it is interrupted: a resumed run
    reports the time of all its invocations."""
    started = time.perf_counter()
    try:
        yield
    finally:
        path = out / COMPRESS_WALL
        spent = atomic.read_json(path) if path.is_file() else {}
        spent[f"{name}_s"] = round(spent.get(f"{name}_s", 0.0) + time.perf_counter() - started, 1)
        atomic.write_json(path, spent)


# ---- 1. checks ----------------------------------------------------------------------------------------
def _check_output_dir(out: Path, overwrite: bool) -> None:
    """A folder of something else is refused (as `train` refuses it); one of an earlier compress run resumes."""
    if not out.is_dir() or overwrite or (out / COMPRESS_PLAN).is_file():
        return
    if {p.name for p in out.iterdir()} <= {COMPRESS_LOCK, COMPRESS_WALL}:  # empty, or a run refused at its checks
        return
    raise QACompressError(
        f"output directory {out} already exists, is not empty and holds no compress run to resume; "
        "use --overwrite_output_dir to write into it anyway, or choose another --output_dir"
    )


def _check_inputs(settings: CompressSettings, model_path: str, tokenizer, data_args: DataTrainingArguments) -> None:
    """Training data with answers, and a model whose predictions are not near uniform."""
    source = split_source(data_args, "train", "compress (recovery training)")
    examples = load_examples(
        source, split="train", dataset_config_name=data_args.dataset_config_name, require_answers=True,
        version_2_with_negative=data_args.version_2_with_negative, max_samples=data_args.max_train_samples,
    )  # fmt: skip
    if len(examples) == 0:
        raise QACompressError(f"{source}: no training examples (check --max_train_samples)")
    if settings.allow_untrained_model:
        return
    sample = examples.select(range(min(16, len(examples))))
    features = prepare_eval_features(
        sample, tokenizer, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        pad_to_max_length=False,
    )  # fmt: skip
    entropy = prediction_entropy(load_qa_model(model_path), feature_batches(features, tokenizer, 8))
    if entropy > NEAR_UNIFORM:
        raise QACompressError(
            f"{model_path}: its answer-start/end predictions are near uniform (entropy {entropy:.2f} of uniform's "
            f"on {len(features)} training features): it does not look fine-tuned for QA, and Fisher selection "
            "assumes a fine-tuned model; fine-tune it first (qacompress train --compression none), or pass "
            "--allow_untrained_model to compress it anyway"
        )


# ---- 2. plan ------------------------------------------------------------------------------------------
def _plan(
    out: Path, model_path: str, seq_length: int, settings: CompressSettings, inference_precision: str
) -> dict[str, Any]:
    """Which precision pays here and what the budget keeps; measured once, read back when resuming."""
    path = out / COMPRESS_PLAN
    if path.is_file():
        plan = atomic.read_json(path)
        asked = {"target_speedup": settings.target_speedup, "target_latency": settings.target_latency,
                 "seq_length": seq_length, "inference_precision": inference_precision}  # fmt: skip
        # Plans written before the precision was a choice ran in f32.
        different = {k: plan.get(k, "f32") for k, v in asked.items() if plan.get(k, "f32") != v}
        if different:
            raise QACompressError(
                f"{out} holds a compress run planned for {', '.join(f'{k} {v}' for k, v in different.items())}, "
                "not what this command asks for; resume it with the same flags, or choose another --output_dir"
            )
        logger.info("resuming: deployment %s, measured on %s (%s)", plan["precision"], plan["cpu"], path)
        return plan
    model = load_qa_model(model_path)
    logger.info("timing the unpruned FP32 and INT8 IRs of %s at batch 1, length %d", model_path, seq_length)
    calls = {precision: IRCall(model, seq_length, quantize, inference_precision)
             for precision, quantize in (("fp32", False), ("int8", True))}  # fmt: skip
    # Compared in interleaved rounds, as the report compares: load that comes and goes slows both alike.
    ms = interleaved_medians(calls, 5, 3.0)
    computed_in = {precision: call.precision for precision, call in calls.items()}
    precision = min(ms, key=ms.get)
    plan = {
        "precision": precision,
        "unpruned_ir_ms": ms,
        "inference_precision": inference_precision,
        "computed_in": computed_in[precision],  # the hint as this CPU resolved it (bf16 for auto on AMX)
        "seq_length": seq_length,
        "fraction": settings.fraction,
        "target_speedup": settings.target_speedup,
        "target_latency": settings.target_latency,
        "cpu": cpu_info()["name"],
    }
    logger.info("INT8 IR %.1f ms, FP32 IR %.1f ms (computed in %s): deploying %s; keeping %.3f of its latency",
                ms["int8"], ms["fp32"], plan["computed_in"], precision, settings.fraction)  # fmt: skip
    atomic.write_json(path, plan)
    return plan


# ---- 3. selection and recovery ------------------------------------------------------------------------
def _recover(
    out: Path,
    plan: dict[str, Any],
    settings: CompressSettings,
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    args: QACompressTrainingArguments,
) -> dict[str, Any]:
    """The `structured_pruning` training run, distilled from M; its metrics."""
    sections: list[dict[str, Any]] = [
        {"algorithm": "structured_pruning", "criterion": "fisher", "target_latency": plan["fraction"],
         "num_samples": settings.selection_samples, "remove_layers": settings.remove_layers},
    ]  # fmt: skip
    if plan["precision"] == "int8":
        sections.append(DEFAULT_QUANTIZATION)
    config_path = out / COMPRESS_CONFIG
    atomic.write_json(config_path, sections)
    started = last_complete_checkpoint(out) or last_complete_checkpoint(out / FINETUNE_DIR) or (out / PRUNED_DIR).is_dir()
    args = dataclasses.replace(
        args, do_train=True, do_eval=bool(data_args.validation_file or data_args.dataset_name), do_predict=False,
        nncf_compression_config=str(config_path), compression="auto", export_openvino=True,
        overwrite_output_dir=args.overwrite_output_dir or not started,  # our own plan files are not in the way
    )  # fmt: skip
    model_args = dataclasses.replace(
        model_args, teacher_model_name_or_path=model_args.teacher_model_name_or_path or model_args.model_name_or_path
    )
    try:
        return run_train(model_args, data_args, args)
    except BudgetError as exc:
        what = (f"--target_speedup {settings.target_speedup} keeps {plan['fraction']:.3f}"
                if settings.target_speedup else f"--target_latency {settings.target_latency} keeps")  # fmt: skip
        removing = "heads, neurons and layers" if exc.remove_layers else "heads and neurons"
        raise QACompressError(
            f"{what} of the unpruned {plan['precision']} IR's latency, below what removing {removing} can reach on "
            f"this CPU ({exc.smallest:.3f}: {exc.what_stays}); ask for at most --target_speedup "
            f"{1 / exc.smallest:.2f} (--target_latency {exc.smallest:.3f})"
        ) from None


# ---- 4. report ----------------------------------------------------------------------------------------
def _report(
    out: Path, plan: dict[str, Any], model_path: str, data_args: DataTrainingArguments, metrics: dict, seed: int
) -> dict[str, Any]:
    """Accuracy before and after (paired), latency against M in torch and M's best unpruned IR, sizes, kept."""
    report: dict[str, Any] = {"plan": plan, "train_metrics": metrics}
    if data_args.validation_file or data_args.dataset_name:
        report["accuracy"] = _paired_accuracy(out, model_path, data_args, seed)
    model = load_qa_model(model_path)
    length = plan["seq_length"]
    inputs = synthetic_inputs(1, length, model.config.vocab_size, input_names(model.config), seed=0)
    hint = plan.get("inference_precision", "f32")
    result_ir, torch_model = OpenVINOQAModel(out, precision=hint), TorchQAModel(model)
    unpruned = IRCall(model, length, plan["precision"] == "int8", hint)
    # In interleaved rounds: timed one after the other, 3 s each, the same result once read 1.46x against
    # M's INT8 IR on a 2-core EPYC where interleaved timings gave 1.7-1.9x.
    ms = interleaved_medians({"model_torch": lambda: torch_model(inputs), f"model_{plan['precision']}_ir": unpruned,
                              "result_ir": lambda: result_ir(inputs)}, 7, 3.0)  # fmt: skip
    report["latency_ms"] = {"batch": 1, "seq_length": length, **ms}
    report["speedup"] = {
        "vs_model_torch": round(ms["model_torch"] / ms["result_ir"], 2),
        "vs_best_unpruned_ir": round(ms[f"model_{plan['precision']}_ir"] / ms["result_ir"], 2),
    }
    report["size_mb"] = {"model_torch": dir_size_mb(model_path, "torch"), "result_ir": dir_size_mb(out, "openvino")}
    pruning = out / "compression_report.json"
    if pruning.is_file():
        kept = atomic.read_json(pruning)
        report["kept"] = {k: kept[k] for k in ("layers", "heads_kept", "heads_total", "neurons_kept", "neurons_total")
                          if k in kept}  # fmt: skip
        # The share of M's Fisher information the selection kept: how much recovery has to bring back.
        selection = kept.get("pruning", {})
        for key in ("fisher_kept_fraction", "encoder_macs_fraction", "removed_layers"):
            if key in selection:
                report["kept"][key] = selection[key]
    return report


def _paired_accuracy(out: Path, model_path: str, data_args: DataTrainingArguments, seed: int) -> dict[str, Any]:
    """EM/F1 of M (torch) and of the result's IR on the same questions, with paired bootstrap intervals."""
    settings = DecodeSettings.from_args(data_args)
    source = split_source(data_args, "validation", "compress (scores)")
    baseline = out / "baseline"
    if not (baseline / "eval_predictions.json").is_file():
        evaluate(model_path, source, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
                 settings=settings, backend="torch", max_samples=data_args.max_eval_samples, output_dir=baseline)  # fmt: skip
    examples = load_examples(source, split="validation", max_samples=data_args.max_eval_samples,
                             version_2_with_negative=settings.version_2_with_negative)  # fmt: skip
    gold = gold_answers(examples)
    scores = {}
    for name, path in (("model", baseline / "eval_predictions.json"), ("result", out / "eval_openvino_predictions.json")):
        exact, f1, _ = question_scores(atomic.read_json(path), gold, version_2=settings.version_2_with_negative)
        scores[name] = {"exact_match": exact, "f1": f1}
    accuracy: dict[str, Any] = {"questions": len(gold)}
    for metric in ("exact_match", "f1"):
        before, after = scores["model"][metric], scores["result"][metric]
        accuracy[metric] = {
            "model_torch": round(100 * sum(before.values()) / len(before), 2),
            "result_ir": round(100 * sum(after.values()) / len(after), 2),
            "difference": paired_bootstrap(before, after, seed=seed).as_dict(),
        }
    return accuracy


def format_report(report: dict[str, Any]) -> str:
    """The short table printed at the end of `qacompress compress`."""
    ms, plan = report["latency_ms"], report["plan"]
    best = f"model_{plan['precision']}_ir"
    lines = [
        f"CPU: {report['cpu_line']}",
        f"deployment: {plan['precision']} IR run in {plan.get('computed_in', 'f32')} (unpruned IRs: FP32 "
        f"{plan['unpruned_ir_ms']['fp32']:.1f} ms, INT8 {plan['unpruned_ir_ms']['int8']:.1f} ms); kept "
        f"{plan['fraction']:.3f} of its latency",
        "",
        "| model | batch-1 latency at %d tokens | EM | F1 |" % ms["seq_length"],
        "| --- | --- | --- | --- |",
    ]
    accuracy = report.get("accuracy")
    rows = (("input model, torch", "model_torch", "model_torch"), (f"input model, {plan['precision']} IR", best, None),
            ("compressed IR", "result_ir", "result_ir"))  # fmt: skip
    for label, key, scored in rows:
        em = f1 = "-"
        if accuracy and scored:
            em, f1 = f"{accuracy['exact_match'][scored]:.2f}", f"{accuracy['f1'][scored]:.2f}"
        lines.append(f"| {label} | {ms[key]:.1f} ms | {em} | {f1} |")
    lines.append("")
    kept = report.get("kept", {})
    if "fisher_kept_fraction" in kept:
        lines.append(f"kept {kept['heads_kept']} of {kept['heads_total']} heads, {kept['neurons_kept']} of "
                     f"{kept['neurons_total']} neurons: {100 * kept['fisher_kept_fraction']:.1f}% of the Fisher "
                     f"information, {100 * kept['encoder_macs_fraction']:.1f}% of the encoder's MACs")  # fmt: skip
    if kept.get("removed_layers"):
        lines.append(f"layers removed whole: {', '.join(map(str, kept['removed_layers']))}")
    lines.append(f"speed-up: {report['speedup']['vs_best_unpruned_ir']:.2f}x over the best unpruned IR, "
                 f"{report['speedup']['vs_model_torch']:.2f}x over torch")  # fmt: skip
    if accuracy:
        f1 = accuracy["f1"]["difference"]
        lines.append(f"F1 difference (paired 95% interval, {accuracy['questions']} questions): "
                     f"{f1['diff']:+.2f} [{f1['low']:+.2f}, {f1['high']:+.2f}]")  # fmt: skip
    lines.append("wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in report["wall_time_s"].items()))
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    """Latency bars of the input model (torch, best unpruned IR) and the result, labelled with their F1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms, plan = report["latency_ms"], report["plan"]
    keys = ["model_torch", f"model_{plan['precision']}_ir", "result_ir"]
    labels = ["input model\ntorch", f"input model\n{plan['precision']} IR", "compressed\nIR"]
    f1 = report.get("accuracy", {}).get("f1", {})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bars = ax.bar(labels, [ms[k] for k in keys], color=["#bbbbbb", "#888888", "#3b75af"])
    for bar, key in zip(bars, keys):
        text = f"{ms[key]:.1f} ms" + (f"\nF1 {f1[key]:.2f}" if key in f1 else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"batch-1 latency at {ms['seq_length']} tokens (ms)")
    ax.set_title(f"{report['speedup']['vs_best_unpruned_ir']:.2f}x over the best unpruned IR ({report['cpu']['name']})",
                 fontsize=9)  # fmt: skip
    ax.margins(y=0.25)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
