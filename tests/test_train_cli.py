"""End to end through the command line: QAT fine-tuning of a tiny BERT on real SQuAD records, export
to OpenVINO, evaluation of the IR, prediction, and the run_qa.py interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qacompress.cli import main

REPO = Path(__file__).resolve().parents[1]


def train_args(model_dir, squad_dir, out, *extra: str) -> list[str]:
    return [
        "train",
        "--model_name_or_path", str(model_dir),
        "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
        "--do_train", "--do_eval",
        "--max_train_samples", "48",
        "--max_eval_samples", "40",
        "--max_seq_length", "128",
        "--doc_stride", "48",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--learning_rate", "3e-3",
        "--num_train_epochs", "1",
        "--save_steps", "5",
        "--seed", "7",
        "--disable_tqdm", "true",
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, tiny_bert_dir, squad_dir) -> Path:
    out = tmp_path_factory.mktemp("qat") / "run"
    assert main(train_args(tiny_bert_dir, squad_dir, out)) == 0
    return out


def test_qat_run_writes_run_qa_outputs(qat_run: Path) -> None:
    for name in (
        "config.json", "model.safetensors", "compression_state.pt", "tokenizer.json",
        "openvino_model.xml", "openvino_model.bin", "train_results.json", "eval_results.json",
        "all_results.json", "eval_predictions.json", "eval_nbest_predictions.json", "trainer_state.json",
    ):  # fmt: skip
        assert (qat_run / name).is_file(), name
    results = json.loads((qat_run / "eval_results.json").read_text())
    assert {"eval_exact_match", "eval_f1", "eval_samples"} <= set(results)
    assert results["eval_samples"] == 40
    predictions = json.loads((qat_run / "eval_predictions.json").read_text())
    assert len(predictions) == 40
    train = json.loads((qat_run / "train_results.json").read_text())
    assert train["train_samples"] >= 48 and train["train_loss"] > 0
    assert any(p.name.startswith("checkpoint-") for p in qat_run.iterdir())


def test_qat_ir_is_int8_and_agrees_with_torch(qat_run: Path) -> None:
    xml = (qat_run / "openvino_model.xml").read_text()
    assert xml.count('type="FakeQuantize"') >= 10
    assert 'element_type="i8"' in xml  # weights stored as INT8
    results = json.loads((qat_run / "eval_results.json").read_text())
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 1.0
    torch_answers = json.loads((qat_run / "eval_predictions.json").read_text())
    ir_answers = json.loads((qat_run / "eval_openvino_predictions.json").read_text())
    same = sum(torch_answers[k] == ir_answers[k] for k in torch_answers)
    assert same >= 0.9 * len(torch_answers), f"only {same}/{len(torch_answers)} identical answers"


def test_qat_holds_the_word_table_on_its_int8_grid(qat_run: Path, tiny_bert_dir: Path) -> None:
    """The default QAT trains around its word table rounded to the IR's INT8 grid: the table in the
    final model and in a checkpoint is the starting table rounded, untouched by training at a learning
    rate that moves every trained table (the position table here)."""
    import torch
    from safetensors.torch import load_file

    from qacompress.compression.wordtable import int8_grid

    words, positions = (f"bert.embeddings.{t}_embeddings.weight" for t in ("word", "position"))
    start = load_file(str(tiny_bert_dir / "model.safetensors"))
    held = int8_grid(start[words])
    assert not torch.equal(held, start[words])
    for directory in (qat_run, next(qat_run.glob("checkpoint-*"))):
        saved = load_file(str(directory / "model.safetensors"))
        assert torch.equal(saved[words], held), directory.name
        assert not torch.equal(saved[positions], start[positions])


def test_evaluate_command_on_ir_and_torch(qat_run: Path, squad_dir: Path, tmp_path: Path, capsys) -> None:
    dev = str(squad_dir / "v1.1" / "dev.json")
    common = ["--validation_file", dev, "--max_eval_samples", "40", "--max_seq_length", "128", "--doc_stride", "48"]
    out_ir, out_torch = tmp_path / "ir", tmp_path / "torch"
    assert main(["evaluate", "--model_name_or_path", str(qat_run), "--output_dir", str(out_ir), *common]) == 0
    assert main(["evaluate", "--model_name_or_path", str(qat_run), "--backend", "torch",
                 "--output_dir", str(out_torch), *common]) == 0  # fmt: skip
    ir = json.loads((out_ir / "eval_results.json").read_text())
    torch_ = json.loads((out_torch / "eval_results.json").read_text())
    trained = json.loads((qat_run / "eval_results.json").read_text())
    assert ir["eval_backend"] == "OpenVINOQAModel" and torch_["eval_backend"] == "TorchQAModel"
    assert ir["eval_f1"] == pytest.approx(trained["eval_openvino_f1"])
    assert torch_["eval_f1"] == pytest.approx(trained["eval_f1"])


def test_predict_command(qat_run: Path, tmp_path: Path, capsys) -> None:
    context = "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title."
    assert main(["predict", "--model_name_or_path", str(qat_run), "--question", "Who won?", "--context", context]) == 0
    answer = capsys.readouterr().out.split("\t")[0]
    assert answer and answer in context
    records = tmp_path / "q.jsonl"
    records.write_text(
        "\n".join(json.dumps({"id": f"q{i}", "question": q, "context": context}) for i, q in enumerate(["Who lost?", "What score?"]))
    )
    out = tmp_path / "answers.jsonl"
    assert main(["predict", "--model_name_or_path", str(qat_run), "--input_file", str(records), "--output_file", str(out)]) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["q0", "q1"]
    for a in answers:
        assert context[a["start"] : a["end"]] == a["text"]


def test_export_command_reexports_model(qat_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    assert main(["export", "--model_name_or_path", str(qat_run), "--output_dir", str(out)]) == 0
    assert (out / "openvino_model.xml").read_text().count('type="FakeQuantize"') >= 10


def test_fp32_run_has_no_quantizers(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    out = tmp_path / "fp32"
    args = train_args(tiny_bert_dir, squad_dir, out, "--compression", "none", "--max_train_samples", "16")
    assert main(args) == 0
    assert not (out / "compression_state.pt").exists()
    assert 'type="FakeQuantize"' not in (out / "openvino_model.xml").read_text()
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_f1", "eval_openvino_f1"} <= set(results)  # logits of a float IR vs torch: test_quantization


def saved_training_args(checkpoint: Path):
    """The `TrainingArguments` a run trained with, as the Trainer saved them in a checkpoint."""
    import torch

    return torch.load(checkpoint / "training_args.bin", weights_only=False)


def test_arguments_from_json_file_and_legacy_flags(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    args = {
        "model_name_or_path": str(tiny_bert_dir),
        "train_file": str(squad_dir / "v1.1" / "train.json"),
        "do_train": True,
        "max_train_samples": 8,
        "max_seq_length": 96,
        "doc_stride": 32,
        "num_train_epochs": 1,
        "save_steps": 1,
        "compression": "none",
        "export_openvino": False,
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "args.json"
    path.write_text(json.dumps(args))
    assert main(["train", str(path)]) == 0
    assert (tmp_path / "out" / "train_results.json").is_file()
    from_file = saved_training_args(tmp_path / "out" / "checkpoint-1")
    assert (from_file.compression, from_file.export_openvino, from_file.save_steps) == ("none", False, 1)
    assert not (tmp_path / "out" / "openvino_model.xml").exists() and not (tmp_path / "out" / "compression_state.pt").exists()
    legacy = train_args(tiny_bert_dir, squad_dir, tmp_path / "legacy", "--compression", "none",
                        "--evaluation_strategy", "epoch", "--warmup_ratio=0.25", "--max_train_samples", "8",
                        "--max_eval_samples", "8", "--save_steps", "1", "--no_export_openvino")  # fmt: skip
    assert main(legacy) == 0
    translated = saved_training_args(tmp_path / "legacy" / "checkpoint-1")
    assert translated.eval_strategy == "epoch"  # --evaluation_strategy, under its transformers 5 name
    assert translated.warmup_steps == 0.25  # --warmup_ratio: a value below 1 is a ratio in transformers 5
    state = json.loads((tmp_path / "legacy" / "trainer_state.json").read_text())
    # It evaluated once, at the epoch's end, with SQuAD scores.
    assert [entry["epoch"] for entry in state["log_history"] if "eval_f1" in entry] == [1.0]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "qacompress", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_user_errors_exit_2_with_one_line(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    missing = _cli("train", "--model_name_or_path", str(tiny_bert_dir), "--train_file", str(tmp_path / "nope.json"),
                   "--do_train", "--output_dir", str(tmp_path / "o"))  # fmt: skip
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert "nope.json" in missing.stderr.strip().splitlines()[-1]

    fp16 = _cli("train", "--model_name_or_path", str(tiny_bert_dir), "--fp16", "--output_dir", str(tmp_path / "o"))
    assert fp16.returncode == 2 and "--fp16 needs a CUDA GPU" in fp16.stderr and "Traceback" not in fp16.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = _cli("train", "--model_name_or_path", str(tiny_bert_dir),
                   "--train_file", str(squad_dir / "v1.1" / "train.json"), "--do_train", "--output_dir", str(busy))  # fmt: skip
    assert refused.returncode == 2 and "--overwrite_output_dir" in refused.stderr

    no_model = _cli("evaluate", "--model_name_or_path", str(tmp_path / "none"), "--validation_file", "x.json")
    assert no_model.returncode == 2 and "no such model directory" in no_model.stderr


@pytest.mark.slow
def test_run_qa_script_runs_the_seed_command(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    """The seed README's command, verbatim but for local model and data paths."""
    out = tmp_path / "outputs_squad"
    cmd = [
        sys.executable, str(REPO / "examples" / "run_qa.py"),
        "--model_name_or_path", str(tiny_bert_dir),
        "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
        "--do_train", "--do_eval", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--max_train_samples", "16", "--learning_rate", "3e-5", "--num_train_epochs", "1",
        "--max_seq_length", "384", "--doc_stride", "128", "--output_dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == 810
    # No config given: the default INT8 QAT ran (quantizers in the saved model, FakeQuantize in the IR).
    from qacompress.compression.checkpoint import load_compression_state

    assert "quantizer_layout" in load_compression_state(out)
    assert (out / "openvino_model.xml").read_text().count('type="FakeQuantize"') >= 10
    assert "eval_openvino_f1" in results


def test_do_predict_writes_predictions_for_unlabelled_test_data(qat_run: Path, tmp_path: Path) -> None:
    context = "The Denver Broncos defeated the Carolina Panthers 24-10 to earn their third Super Bowl title."
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(json.dumps({"id": f"t{i}", "question": q, "context": context})
                              for i, q in enumerate(["Who won?", "Who lost?", "What was the score?"])))  # fmt: skip
    out = tmp_path / "predict"
    args = ["train", "--model_name_or_path", str(qat_run), "--do_predict", "--test_file", str(test),
            "--max_seq_length", "128", "--doc_stride", "48", "--output_dir", str(out), "--no_export_openvino"]  # fmt: skip
    assert main(args) == 0
    predictions = json.loads((out / "predict_predictions.json").read_text())
    assert sorted(predictions) == ["t0", "t1", "t2"] and all(p in context for p in predictions.values())
    results = json.loads((out / "predict_results.json").read_text())
    assert "predict_f1" not in results  # nothing to score against
