"""Inference speed, size and accuracy of every way to ship a QA model, side by side in one run.

Two families:
- BERT-base shape (random weights: speed needs no trained weights): torch FP32, OpenVINO FP32,
  OpenVINO INT8 by post-training quantization (PTQ), the QAT IR (NNCF quantizers as QAT inserts them)
  and a JPQD IR (the heads/neurons kept by the MiniLM JPQD run, scaled to BERT-base, then quantized).
- MiniLM-L6 as trained by qacompress (`runs/minilm-fp32`, `runs/minilm-qat`, `runs/minilm-jpqd`):
  the same five rows, with EM/F1 on the SQuAD v1.1 dev slice.
Writes `benchmarks/results/speed.json` and `speed.md`. Usage: `python benchmarks/speed.py [--quick]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import default_compression_config
from qacompress.compression.export import save_model_dir
from qacompress.compression.quantization import quantize_model
from qacompress.data.features import MODEL_INPUT_NAMES, prepare_train_features
from qacompress.data.squad import load_examples
from qacompress.ir.ptq import post_training_quantize
from qacompress.measure.benchmark import BenchmarkSettings, format_table, measure_model
from qacompress.model.loading import default_model_path, load_tokenizer
from qacompress.model.surgery import prune_

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, SQUAD, WORK, jpqd_keep, write_results  # noqa: E402


def calibration(tokenizer, count: int, seq: int = 256) -> list[dict]:
    """Real training features (batch 1), for PTQ and QAT range initialisation."""
    examples = load_examples(str(SQUAD / "train.json"), max_samples=count)
    features = prepare_train_features(examples, tokenizer, max_seq_length=seq, doc_stride=128)
    names = [n for n in MODEL_INPUT_NAMES if n in features.column_names]
    return [{n: torch.tensor([row[n]]) for n in names} for row in features.select(range(min(count, len(features))))]


def prepare_family(
    name: str, torch_dir: Path, tokenizer, qat_dir: Path | None, jpqd_dir: Path | None, num_samples: int = 300
) -> list[tuple[str, Path, str]]:
    """Model dirs to measure: (row name, directory, backend). `num_samples` calibrate PTQ and QAT ranges."""
    base = WORK / name
    samples = calibration(tokenizer, num_samples)
    rows = [(f"{name} torch FP32", torch_dir, "torch")]
    ov_fp32 = base / "ov-fp32"
    if not (ov_fp32 / "openvino_model.xml").is_file():
        save_model_dir(load_qa_model(str(torch_dir), restore_compression=False), tokenizer, ov_fp32)
    rows.append((f"{name} OpenVINO FP32", ov_fp32, "openvino"))
    ptq = base / "ov-int8-ptq"
    if not (ptq / "openvino_model.xml").is_file():
        post_training_quantize(ov_fp32, ptq, [{k: v.numpy() for k, v in s.items()} for s in samples])
    rows.append((f"{name} OpenVINO INT8 PTQ", ptq, "openvino"))
    if qat_dir is None:
        qat_dir = base / "qat"
        if not (qat_dir / "openvino_model.xml").is_file():
            model = quantize_model(load_qa_model(str(torch_dir)), default_compression_config().quantization, samples)
            save_model_dir(model, tokenizer, qat_dir)
    rows.append((f"{name} QAT IR", qat_dir, "openvino"))
    if jpqd_dir is None:
        jpqd_dir = base / "jpqd"
        if not (jpqd_dir / "openvino_model.xml").is_file():
            model = load_qa_model(str(torch_dir))
            prune_(model, jpqd_keep(model.config))
            model = quantize_model(model, default_compression_config().quantization, samples)
            save_model_dir(model, tokenizer, jpqd_dir)
    rows.append((f"{name} JPQD IR", jpqd_dir, "openvino"))
    return rows


def bert_base_dir(tokenizer) -> Path:
    path = WORK / "bert-base" / "torch-fp32"
    if not (path / "config.json").is_file():
        from transformers import BertConfig, BertForQuestionAnswering

        torch.manual_seed(0)
        model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size))
        save_model_dir(model, tokenizer, path, export_ir=False)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing windows (a smoke run)")
    parser.add_argument("--skip_bert_base", action="store_true")
    args = parser.parse_args(argv)
    settings = BenchmarkSettings(min_seconds=0.5 if args.quick else 3.0, throughput_seconds=1 if args.quick else 5)
    tokenizer = load_tokenizer(default_model_path())
    families = []
    if not args.skip_bert_base:
        # Random weights: the ranges do not change the speed, and 64 samples keep NNCF's per-sample
        # range statistics (mean_min_max) within this machine's memory at BERT-base size.
        families.append(prepare_family("BERT-base", bert_base_dir(tokenizer), tokenizer, None, None, num_samples=64))
    fp32 = RUNS / "minilm-fp32"
    if (fp32 / "config.json").is_file():
        qat, jpqd = RUNS / "minilm-qat", RUNS / "minilm-jpqd"
        families.append(
            prepare_family(
                "MiniLM-L6", fp32, tokenizer,
                qat if (qat / "openvino_model.xml").is_file() else None,
                jpqd if (jpqd / "openvino_model.xml").is_file() else None,
            )
        )  # fmt: skip
    validation = {"file": str(SQUAD / "dev.json"), "max_samples": None, "max_seq_length": 256, "doc_stride": 128}
    tables, everything = [], {}
    for rows in families:
        results = []
        for name, path, backend in rows:
            print(f"measuring {name} ...", flush=True)
            trained = str(path).startswith(str(RUNS)) or "MiniLM" in name
            results.append(
                measure_model(str(path), name=name, backend=backend, settings=settings,
                              validation=validation if trained else None)  # fmt: skip
            )
        tables.append(format_table(results, settings))
        everything[rows[0][0].split(" ")[0]] = results
    text = "\n\n".join(tables) + (
        "\n\nRows: BERT-base rows use random weights (its \"QAT IR\" is quantized without training, its \"JPQD IR\" "
        "is the random model cut to the MiniLM JPQD run's proportions): speed only. MiniLM-L6 rows are the demo "
        "runs' trained models, scored at length 256 (stride 128) on the dev slice."
    )
    print(text)
    write_results("speed", {"settings": settings.__dict__, "families": everything}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
