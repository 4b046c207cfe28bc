"""The `prune` job: training-free structured pruning of a fine-tuned QA model, on CPU.

After Kwon et al. 2022 (*A Fast Post-Training Pruning Framework for Transformers*), for users who have
a fine-tuned model and little compute. In order:
1. Fisher importance of every head and FFN neuron on calibration features (`qacompress.compression.fisher`; no
   answers needed: the labels are drawn from the unpruned model's own predictions);
2. the most important structure under the constraint, `target_macs` (share of the encoder's
   multiply-accumulates) or `target_latency` (share of the OpenVINO latency, from layer latencies
   measured here: `qacompress.compression.latency`), chosen globally (`qacompress.compression.selection`);
3. physical removal (`qacompress.model.surgery.prune_`);
4. layer-wise least-squares re-fitting of the output projections (`qacompress.compression.refit`);
5. export: the float torch model and tokenizer, and an OpenVINO IR, INT8 by post-training
   quantization unless `quantize=False`; the compression report, and SQuAD scores when asked.
`fisher_prune` (steps 1-4) is also what `train` runs for a `structured_pruning` config section.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qacompress.core import atomic
from qacompress.model.architecture import require_layout
from qacompress.core.atomic import staged_files
from qacompress.compression.config import CompressionConfig
from qacompress.data.squad import load_examples
from qacompress.core.errors import BudgetError, DataError, QACompressError
from qacompress.inference.evaluation import DecodeSettings, eval_data, score_model_dir
from qacompress.compression.export import export_openvino, quantize_ir, save_model_dir
from qacompress.data.features import MODEL_INPUT_NAMES, prepare_eval_features
from qacompress.compression.fisher import fisher_importance
from qacompress.model.loading import IR_FILE, load_qa_model, load_tokenizer
from qacompress.compression.refit import refit_
from qacompress.measure.report import compression_report
from qacompress.compression.selection import Selection, encoder_macs, mac_costs, select_structure
from qacompress.model.surgery import current_sizes, prune_

logger = logging.getLogger(__name__)


@dataclass
class PruneConfig:
    """What `fisher_prune` does. Exactly one of `target_macs` / `target_latency`, each in (0, 1]."""

    target_macs: float | None = None
    target_latency: float | None = None
    seq_length: int = 384
    label_samples: int = 1  # labels drawn per feature for the Fisher estimate
    refit: bool = True
    refit_samples: int = 128  # features for the least-squares fit (a few hundred tokens per unknown suffice)
    ridge: float = 1e-4
    quantized_latency: bool = True  # measure the latency table with INT8 IRs (as the output will be)
    latency_points: int = 5  # grid points per axis (heads, neurons) of the latency table
    latency_seconds: float = 1.0  # timing per grid point, split over the rounds
    latency_rounds: int = 5  # interleaved timing rounds (see qacompress.compression.latency)
    batch_size: int = 8
    seed: int = 42
    progress: bool = True

    def __post_init__(self) -> None:
        given = [(n, v) for n, v in (("target_macs", self.target_macs), ("target_latency", self.target_latency)) if v is not None]
        if len(given) != 1:
            raise QACompressError("give exactly one of --target_macs F and --target_latency F (F in (0, 1])")
        name, value = given[0]
        if not 0 < value <= 1:
            raise QACompressError(f"--{name} must be in (0, 1] (the fraction kept), got {value}")
        if min(self.label_samples, self.refit_samples, self.batch_size, self.latency_rounds) < 1 or self.latency_points < 2:
            raise QACompressError(
                "--label_samples, --refit_samples, --batch_size and --latency_rounds must be >= 1, --latency_points >= 2"
            )

    @property
    def constraint(self) -> tuple[str, float]:
        return ("macs", self.target_macs) if self.target_macs is not None else ("latency", self.target_latency)


def feature_batches(features: Any, tokenizer, batch_size: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Model inputs of the first `limit` features, in padded batches of `batch_size`."""
    columns = [c for c in MODEL_INPUT_NAMES if c in features.column_names]
    count = len(features) if limit is None else min(limit, len(features))
    rows = features.select_columns(columns).select(range(count))
    batches = []
    for start in range(0, count, batch_size):
        chunk = rows[start : start + batch_size]
        items = [{c: chunk[c][i] for c in columns} for i in range(len(chunk[columns[0]]))]
        batches.append(dict(tokenizer.pad(items, return_tensors="pt")))
    return batches


@dataclass
class PruneResult:
    """The pruned (and re-fitted) model, how its structure was chosen (JSON-ready), and the parameter
    masks that keep the zeroed stand-ins of emptied layers at zero if it is trained further."""

    model: nn.Module
    summary: dict[str, Any]
    frozen: dict[str, torch.Tensor]


def fisher_prune(model: nn.Module, batches: list[dict[str, torch.Tensor]], config: PruneConfig) -> PruneResult:
    """Steps 1-4 on a copy of `model`."""
    layout = require_layout(model)
    model.eval()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    importance = fisher_importance(
        model, batches, label_samples=config.label_samples, seed=config.seed, progress=config.progress
    )
    timings["fisher_s"] = time.perf_counter() - t0
    kind, fraction = config.constraint
    hidden = model.config.hidden_size
    summary: dict[str, Any] = {"criterion": "fisher", "constraint": kind, "target": fraction,
                               "calibration_features": importance.samples, "label_samples": config.label_samples}
    if kind == "macs":
        costs = mac_costs(hidden, layout.head_size, config.seq_length)
    else:
        from qacompress.compression.latency import measure_latency_table

        t0 = time.perf_counter()
        table = measure_latency_table(
            model, config.seq_length, quantize=config.quantized_latency, points=config.latency_points,
            rounds=config.latency_rounds, min_seconds=config.latency_seconds, progress=config.progress,
        )
        timings["latency_table_s"] = time.perf_counter() - t0
        costs = table.costs
        summary["latency_table"] = table.to_dict()
    try:
        selection: Selection = select_structure(importance, costs, fraction)
    except BudgetError as exc:
        # Only a latency table has a fixed cost (embeddings, QA head, per-layer overheads, as measured).
        raise BudgetError(
            f"--target_{kind} {fraction} is below the fixed cost: the smallest reachable is {exc.smallest:.3f} x the "
            f"full model's {'latency' if kind == 'latency' else 'MACs'} (embeddings, QA head and per-layer overheads "
            "are not pruned)",
            fraction=fraction, smallest=exc.smallest,
        ) from None
    except ValueError as exc:
        raise QACompressError(f"--target_{kind} {fraction}: {exc}") from None
    pruned = copy.deepcopy(model)
    frozen = prune_(pruned, selection.keep)
    summary.update(
        heads_kept=selection.heads,
        neurons_kept=selection.neurons,
        kept=[{"heads": k.heads, "neurons": k.neurons} for k in selection.keep],
        predicted_cost_fraction=round(selection.cost / selection.full_cost, 4),
        fisher_kept_fraction=round(selection.importance_kept / max(selection.importance_total, 1e-30), 4),
        encoder_macs_fraction=round(
            encoder_macs([{"heads": len(k.heads), "intermediate_size": len(k.neurons)} for k in selection.keep],
                         hidden, layout.head_size, config.seq_length)
            / encoder_macs(current_sizes(model, layout), hidden, layout.head_size, config.seq_length), 4
        ),
    )  # fmt: skip
    if config.refit:
        t0 = time.perf_counter()
        errors = refit_(model, pruned, batches[: max(1, -(-config.refit_samples // config.batch_size))],
                        ridge=config.ridge, progress=config.progress)  # fmt: skip
        timings["refit_s"] = time.perf_counter() - t0
        summary["refit_errors"] = [asdict(e) for e in errors]
    summary["timings"] = {k: round(v, 2) for k, v in timings.items()}
    logger.info(
        "kept %d heads and %d neurons (%.1f%% of the %s budget used, %.1f%% of the Fisher information)",
        selection.heads, selection.neurons, 100 * selection.cost / selection.budget, kind,
        100 * summary["fisher_kept_fraction"],
    )  # fmt: skip
    return PruneResult(pruned, summary, frozen)


# ---- the command ----------------------------------------------------------------------------------------
@dataclass
class PruneArguments:
    """`qacompress prune` flags (data flags are `train`'s: --train_file, --max_seq_length, ...)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A fine-tuned QA model directory"})
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the pruned model"})
    target_macs: float | None = field(default=None, metadata={"help": "Fraction of the encoder's MACs to keep, in (0, 1]"})
    target_latency: float | None = field(
        default=None, metadata={"help": "Fraction of the OpenVINO latency (batch 1, max_seq_length) to keep, in (0, 1]"}
    )
    quantize: bool = field(default=True, metadata={"help": "INT8 post-training quantization of the IR"})
    refit: bool = field(default=True, metadata={"help": "Least-squares re-fit of each pruned layer"})
    label_samples: int = field(default=1, metadata={"help": "Labels drawn per feature for the Fisher estimate"})
    refit_samples: int = field(default=128, metadata={"help": "Calibration features used by the re-fit"})
    latency_points: int = field(default=5, metadata={"help": "Head and neuron counts timed for --target_latency"})
    latency_seconds: float = field(default=1.0, metadata={"help": "Seconds of timing per latency table point"})
    latency_rounds: int = field(default=5, metadata={"help": "Interleaved rounds the latency timing is split into"})
    quantization_samples: int = field(default=300, metadata={"help": "Calibration features for INT8 ranges"})
    batch_size: int = field(default=8, metadata={"help": "Features per forward pass"})
    inference_precision: str = field(default="f32", metadata={"help": "OpenVINO precision for evaluating the IR"})
    seed: int = field(default=42, metadata={"help": "Seed of the label draws"})
    device: str = field(
        default="auto", metadata={"help": "Where the Fisher scores and the re-fit run: auto (a CUDA GPU if there is one), cpu, cuda, cuda:N"}
    )


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


def run_prune(args: PruneArguments, data_args: Any) -> dict[str, Any]:
    """Prune, export and (with --validation_file) evaluate; returns the metrics."""
    started = time.perf_counter()
    config = PruneConfig(
        target_macs=args.target_macs, target_latency=args.target_latency, seq_length=data_args.max_seq_length,
        label_samples=args.label_samples, refit=args.refit, refit_samples=args.refit_samples,
        quantized_latency=args.quantize, latency_points=args.latency_points, latency_seconds=args.latency_seconds,
        latency_rounds=args.latency_rounds, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    if not args.model_name_or_path or not Path(args.model_name_or_path).is_dir():
        raise QACompressError(f"--model_name_or_path {args.model_name_or_path}: no such model directory")
    if not args.output_dir:
        raise QACompressError("prune needs --output_dir DIR")
    source = data_args.train_file or data_args.dataset_name
    if not source:
        raise QACompressError("prune needs calibration data: --train_file FILE or --dataset_name NAME")
    tokenizer = load_tokenizer(args.model_name_or_path)
    model = load_qa_model(args.model_name_or_path).to(resolve_device(args.device))
    require_layout(model)
    examples = load_examples(
        source, split="train", dataset_config_name=data_args.dataset_config_name, require_answers=False,
        version_2_with_negative=True, max_samples=data_args.max_train_samples,
    )  # fmt: skip
    if len(examples) == 0:
        raise DataError("no calibration examples (check --max_train_samples)", file=source)
    features = prepare_eval_features(
        examples, tokenizer, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        pad_to_max_length=False, load_from_cache_file=not data_args.overwrite_cache,
    )  # fmt: skip
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


def write_int8_ir(model: nn.Module, tokenizer, features: Any, count: int, directory: Path) -> None:
    """Export `model` to an FP32 IR, quantize it to INT8 with `count` calibration features, and put
    it into `directory` (beside the float torch model)."""
    import openvino as ov

    columns = [c for c in MODEL_INPUT_NAMES if c in features.column_names]
    rows = features.select_columns(columns).select(range(min(count, len(features))))
    calibration = [{c: np.asarray([row[c]], dtype=np.int64) for c in columns} for row in rows]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_openvino(model, tokenizer, tmp)
        # 'enable': 7-bit weights, so that INT8 products do not saturate on CPUs without VNNI (AVX2).
        quantized = quantize_ir(ov.Core().read_model(str(path)), calibration, overflow_fix="enable")
        with staged_files(directory) as staging:
            ov.save_model(quantized, str(staging / IR_FILE), compress_to_fp16=False)
