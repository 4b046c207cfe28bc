"""Integration on the real all-MiniLM-L6-v2 (the packaged default model) and the real SQuAD slices,
kept small: QAT fine-tuning with the default config, export, evaluation of torch model and IR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qacompress.cli import main


@pytest.mark.slow
def test_default_minilm_qat_end_to_end(tmp_path: Path, squad_dir: Path) -> None:
    out = tmp_path / "minilm"
    args = [
        "train",  # no --model_name_or_path: the packaged MiniLM
        "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
        "--do_train", "--do_eval", "--max_train_samples", "24", "--max_eval_samples", "24",
        "--max_seq_length", "128", "--doc_stride", "48", "--per_device_train_batch_size", "8",
        "--max_steps", "4", "--learning_rate", "1e-4", "--disable_tqdm", "true", "--output_dir", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6
    assert config["architectures"] == ["BertForQuestionAnswering"]
    xml = (out / "openvino_model.xml").read_text()
    assert 'type="FakeQuantize"' in xml and 'element_type="i8"' in xml
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 24
    # After 4 steps the QA head is untrained and span scores are close together, so INT8 rounding in
    # OpenVINO picks other (equally wrong) spans for some questions: allow one question's worth of F1
    # (100/24). The 1-point agreement is asserted on 40 questions in test_train_cli, and measured on
    # the 810 dev questions in the README's demo.
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 100 / 24 + 1e-9
    assert len(json.loads((out / "eval_openvino_predictions.json").read_text())) == 24
