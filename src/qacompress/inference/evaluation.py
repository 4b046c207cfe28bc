"""SQuAD evaluation: logits for every feature, n-best decoding, official EM/F1, result files.

One code path (`evaluate_runner`: `run_features`, batched with length-sorted dynamic padding, then
`decode_and_score`) for every runner: the torch model at each evaluation during training
(`QACompressTrainer.evaluate`), in the final scoring, and its OpenVINO IR, so all are scored identically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qacompress.core import atomic
from qacompress.core.errors import ModelError
from qacompress.data.features import prepare_eval_features
from qacompress.data.metrics import squad_metrics
from qacompress.data.postprocess import DecodeSettings, QAPredictions, postprocess_qa_predictions
from qacompress.data.squad import gold_answers, load_examples
from qacompress.inference.runners import QARunner, TorchQAModel, load_runner
from qacompress.ir.runtime import OpenVINOQAModel
from qacompress.model.loading import is_openvino_dir, load_tokenizer


def run_features(
    runner: QARunner, features: Any, *, batch_size: int = 8, pad_token_id: int = 0, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Start/end logits of every feature, shape (num_features, max_len); padding columns hold -1e4.

    Features are run in order of length so that each batch pads only to its own longest member.
    """
    columns = [c for c in runner.input_names if c in features.column_names]
    ids = features["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(lengths) else 0
    start = np.full((len(ids), width), -1e4, dtype=np.float32)
    end = np.full((len(ids), width), -1e4, dtype=np.float32)
    data = {c: features[c] for c in columns}
    order = np.argsort(-lengths, kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="Evaluating", disable=not progress, unit="batch"):
        longest = int(lengths[batch].max())
        inputs = {}
        for c in columns:
            pad = pad_token_id if c == "input_ids" else 0
            array = np.full((len(batch), longest), pad, dtype=np.int64)
            for row, i in enumerate(batch):
                array[row, : lengths[i]] = data[c][i]
            inputs[c] = array
        s, e = runner(inputs)
        for row, i in enumerate(batch):
            start[i, : lengths[i]] = s[row, : lengths[i]]
            end[i, : lengths[i]] = e[row, : lengths[i]]
    return start, end


def decode(examples: Any, features: Any, start: np.ndarray, end: np.ndarray, settings: DecodeSettings) -> QAPredictions:
    """Answers (and n-best lists) from the features' logits."""
    return postprocess_qa_predictions(
        examples,
        features,
        start,
        end,
        version_2_with_negative=settings.version_2_with_negative,
        n_best_size=settings.n_best_size,
        max_answer_length=settings.max_answer_length,
        null_score_diff_threshold=settings.null_score_diff_threshold,
        cls_index=np.asarray(features["cls_index"]) if "cls_index" in features.column_names else None,
    )


def decode_and_score(
    examples: Any, features: Any, start: np.ndarray, end: np.ndarray, settings: DecodeSettings
) -> tuple[QAPredictions, dict[str, float]]:
    """Answers from logits, then the official SQuAD metric (v2 with HasAns/NoAns and best thresholds)."""
    t0 = time.perf_counter()
    predictions = decode(examples, features, start, end, settings)
    golds = gold_answers(examples)
    metrics: dict[str, float] = {}
    if settings.version_2_with_negative or any(golds.values()):  # test data may come without answers
        metrics = squad_metrics(
            predictions.answers, golds, version_2=settings.version_2_with_negative, null_odds=predictions.null_odds
        )
    metrics["postprocess_runtime"] = round(time.perf_counter() - t0, 4)
    return predictions, metrics


def write_predictions(directory: str | Path, predictions: QAPredictions, prefix: str = "eval") -> None:
    """`{prefix}_predictions.json`, `{prefix}_nbest_predictions.json` and (v2) `{prefix}_null_odds.json`."""
    directory = Path(directory)
    atomic.write_json(directory / f"{prefix}_predictions.json", predictions.answers)
    atomic.write_json(directory / f"{prefix}_nbest_predictions.json", predictions.nbest)
    if predictions.null_odds is not None:
        atomic.write_json(directory / f"{prefix}_null_odds.json", predictions.null_odds)


def evaluate_runner(
    runner: QARunner,
    examples: Any,
    features: Any,
    settings: DecodeSettings,
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = True,
) -> tuple[QAPredictions, dict[str, float]]:
    """Run, decode and score; metrics include wall times of the model and of post-processing."""
    t0 = time.perf_counter()
    start, end = run_features(runner, features, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress)
    model_time = time.perf_counter() - t0
    predictions, metrics = decode_and_score(examples, features, start, end, settings)
    metrics["model_runtime"] = round(model_time, 4)
    metrics["samples"] = len(examples)
    return predictions, metrics


def score_model_dir(
    model: Any,
    output_dir: str | Path,
    examples: Any,
    features: Any,
    settings: DecodeSettings,
    *,
    prefix: str = "eval",
    with_ir: bool = True,
    precision: str = "f32",
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> dict[str, float]:
    """Predictions and SQuAD metrics of the torch `model` and, when `output_dir` holds one, of its
    OpenVINO IR on the same features; writes `{prefix}_predictions.json`, `{prefix}_nbest_predictions.json`,
    `{prefix}_results.json` (and the `{prefix}_openvino_*` twins)."""
    runners = [(prefix, TorchQAModel(model))]
    if with_ir and is_openvino_dir(output_dir):
        runners.append((f"{prefix}_openvino", OpenVINOQAModel(output_dir, precision=precision)))
    metrics: dict[str, float] = {}
    for name, runner in runners:
        predictions, scores = evaluate_runner(
            runner, examples, features, settings, batch_size=batch_size, pad_token_id=pad_token_id
        )
        metrics.update(prefixed(scores, name))
        if isinstance(runner, OpenVINOQAModel):
            metrics[f"{name}_precision"] = runner.precision  # what --inference_precision became on this CPU
        write_predictions(output_dir, predictions, prefix=name)
    atomic.write_json(Path(output_dir) / f"{prefix}_results.json", metrics)
    return metrics


def eval_data(
    data: str | Path | Any,
    tokenizer: Any,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_samples: int | None = None,
    version_2_with_negative: bool = False,
    pad_to_max_length: bool = True,
) -> tuple[Any, Any]:
    """(examples, features) to evaluate on: `data` is a file (json/jsonl/csv), a `datasets` Hub name, or
    examples as `qacompress.data.squad.load_examples` returns them. Features are padded to `max_seq_length`
    as run_qa's evaluation does, or left at their real length for batches to pad (`pad_to_max_length=False`)."""
    import datasets

    if isinstance(data, datasets.Dataset):
        examples = data.select(range(min(max_samples, len(data)))) if max_samples else data
    else:
        examples = load_examples(str(data), split="validation", max_samples=max_samples,
                                 version_2_with_negative=version_2_with_negative)  # fmt: skip
    features = prepare_eval_features(
        examples, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride, pad_to_max_length=pad_to_max_length
    )
    return examples, features


def evaluate(
    model: str | Path | Any,
    data: str | Path | Any,
    *,
    tokenizer: Any = None,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    settings: DecodeSettings | None = None,
    backend: str = "auto",
    precision: str = "f32",
    batch_size: int = 8,
    max_samples: int | None = None,
    output_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """SQuAD scores (`exact_match`, `f1`, and the v2 fields) of a model on SQuAD-style data.

    `model` is a model directory (its OpenVINO IR when it has one, unless `backend="torch"`) or a torch
    QA model in memory (then pass its `tokenizer`); `data` is a file (json/jsonl/csv), a `datasets`
    Hub name, or examples as `qacompress.data.squad.load_examples` returns them. With `output_dir`, the
    predictions and `eval_results.json` are written there, as `qacompress evaluate` does.
    """
    settings = settings or DecodeSettings()
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or load_tokenizer(str(model))
        runner: QARunner = load_runner(str(model), backend=backend, precision=precision)
    elif tokenizer is None:
        raise ModelError("evaluate(model, ...) with a model in memory needs its tokenizer=")
    else:
        runner = TorchQAModel(model)
    examples, features = eval_data(
        data, tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride, max_samples=max_samples,
        version_2_with_negative=settings.version_2_with_negative,
    )  # fmt: skip
    predictions, metrics = evaluate_runner(
        runner, examples, features, settings, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id or 0,
        progress=progress,
    )  # fmt: skip
    metrics["backend"] = type(runner).__name__
    if output_dir is not None:
        write_predictions(output_dir, predictions)
        atomic.write_json(Path(output_dir) / "eval_results.json", prefixed(metrics, "eval"))
    return metrics


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}" if not k.startswith(f"{prefix}_") else k: v for k, v in metrics.items()}
