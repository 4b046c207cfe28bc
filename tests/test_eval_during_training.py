"""SQuAD EM/F1 at every evaluation during training (FP32, QAT, both JPQD phases), and
`--load_best_model_at_end --metric_for_best_model f1` restoring the best checkpoint with its
compression state; tiny models, a few steps each."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_jpqd import TINY_JPQD, TINY_QUANTIZATION, assert_holds_word_table

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def run_args(model, squad_dir: Path, out: Path, *extra: str, version: str = "v1.1") -> list[str]:
    return [
        "train",
        "--model_name_or_path", str(model),
        "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--validation_file", str(squad_dir / version / "dev.json"),
        "--do_train", "--do_eval",
        "--max_train_samples", "24", "--max_eval_samples", "16",
        "--max_seq_length", "96", "--doc_stride", "32",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
        "--learning_rate", "5e-3", "--logging_steps", "2", "--seed", "3",
        "--disable_tqdm", "true", "--no_export_openvino",
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


def evaluations(directory: Path) -> list[dict]:
    state = json.loads((directory / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "eval_f1" in entry]


def best_state(directory: Path) -> dict:
    return json.loads((directory / "trainer_state.json").read_text())


def first_best(evals: list[dict]) -> dict:
    """The evaluation Trainer keeps as best: the first with the highest F1 (it needs a strict gain)."""
    top = max(e["eval_f1"] for e in evals)
    return next(e for e in evals if e["eval_f1"] == top)


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def fp32_steps_run(tmp_path_factory, tiny_bert_dir, squad_dir) -> Path:
    out = tmp_path_factory.mktemp("eval-steps") / "run"
    extra = ["--report_to", "tensorboard"] if HAS_TENSORBOARD else []
    args = run_args(tiny_bert_dir, squad_dir, out, "--compression", "none", "--max_steps", "6",
                    "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "6", *extra)  # fmt: skip
    assert main(args) == 0
    return out


def test_every_evaluation_logs_em_and_f1(fp32_steps_run: Path) -> None:
    evals = evaluations(fp32_steps_run)
    assert [e["step"] for e in evals] == [2, 4, 6]
    for entry in evals:
        assert {"eval_exact_match", "eval_f1", "eval_samples", "eval_runtime", "eval_model_runtime"} <= set(entry)
        assert entry["eval_samples"] == 16
    # Step 6 is the last step: the final scoring sees the same weights, through the same code.
    final = json.loads((fp32_steps_run / "eval_results.json").read_text())
    assert evals[-1]["eval_f1"] == final["eval_f1"]
    assert evals[-1]["eval_exact_match"] == final["eval_exact_match"]


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is an optional extra (pip install -e '.[tensorboard]')")
def test_evaluations_reach_tensorboard(fp32_steps_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (logdir,) = {p.parent for p in fp32_steps_run.glob("runs/*/events.out.tfevents.*")}
    events = EventAccumulator(str(logdir))
    events.Reload()
    f1 = events.Scalars("eval/f1")
    assert [e.step for e in f1] == [2, 4, 6]
    assert [e.value for e in f1] == pytest.approx([e["eval_f1"] for e in evaluations(fp32_steps_run)])
    assert len(events.Scalars("eval/exact_match")) == 3


def test_epoch_strategy_logs_squad_v2_fields(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    out = tmp_path / "v2"
    args = run_args(tiny_bert_dir, squad_dir, out, "--compression", "none", "--num_train_epochs", "2",
                    "--eval_strategy", "epoch", "--save_strategy", "no", "--version_2_with_negative",
                    version="v2.0")  # fmt: skip
    assert main(args) == 0
    evals = evaluations(out)
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    v2_keys = ("eval_exact_match", "eval_f1", "eval_HasAns_f1", "eval_NoAns_f1", "eval_best_f1", "eval_best_f1_thresh")
    for key in v2_keys:
        assert key in evals[-1], key
    final = json.loads((out / "eval_results.json").read_text())
    assert evals[-1]["eval_best_f1"] == final["eval_best_f1"] and evals[-1]["eval_f1"] == final["eval_f1"]


def test_qat_best_model_is_restored_with_its_quantizers(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    out = tmp_path / "qat"
    config = tmp_path / "q.json"
    # The default's (and the shipped configs') quantization section: the word table is held on its grid.
    config.write_text(json.dumps({**TINY_QUANTIZATION, "initializer": {"range": {"num_init_samples": 8}}}))
    args = run_args(tiny_bert_dir, squad_dir, out, "--nncf_compression_config", str(config), "--max_steps", "8",
                    "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2",
                    "--load_best_model_at_end", "--metric_for_best_model", "f1")  # fmt: skip
    assert main(args) == 0
    evals = evaluations(out)
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    best = first_best(evals)
    state = best_state(out)
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best['step']}"
    assert state["best_metric"] == best["eval_f1"]
    # The final model is the best checkpoint, quantizer scales included, and scores as logged.
    final = json.loads((out / "eval_results.json").read_text())
    assert final["eval_f1"] == best["eval_f1"] and final["eval_exact_match"] == best["eval_exact_match"]
    restored = load_qa_model(str(out))
    assert_same_model(restored, load_qa_model(str(out / f"checkpoint-{best['step']}")))
    assert_holds_word_table(out, tiny_bert_dir)  # still held, on the grid of the table QAT started from
    if best["step"] != 8:  # then the last step's quantizers differ, and must not have been kept
        last = load_qa_model(str(out / "checkpoint-8")).state_dict()
        scales = [k for k in last if k.startswith("__nncf_hooks.")]
        assert scales and any(not torch.equal(last[k], restored.state_dict()[k]) for k in scales)


def test_jpqd_logs_both_phases_and_picks_best_in_finetuning(
    tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path
) -> None:
    sections = copy.deepcopy(TINY_JPQD)
    sections[0]["params"]["steps_per_epoch"] = 2
    config = tmp_path / "jpqd.json"
    config.write_text(json.dumps(sections))
    out = tmp_path / "jpqd"
    # Warm-up epochs 1..4 of 2 steps: warm-up to step 8, then QAT on the pruned model to step 12.
    args = run_args(tiny_bert_dir, squad_dir, out, "--nncf_compression_config", str(config), "--max_steps", "12",
                    "--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2",
                    "--load_best_model_at_end", "--metric_for_best_model", "f1")  # fmt: skip
    assert main(args) == 0
    warmup = evaluations(out)
    assert [e["step"] for e in warmup] == [2, 4, 6, 8]
    assert best_state(out)["best_model_checkpoint"] is None  # warm-up evaluations are not eligible
    finetune = evaluations(out / "finetune")
    assert [e["step"] for e in finetune] == [2, 4]
    best = first_best(finetune)
    assert Path(best_state(out / "finetune")["best_model_checkpoint"]).name == f"checkpoint-{best['step']}"
    final = json.loads((out / "eval_results.json").read_text())
    assert final["eval_f1"] == best["eval_f1"]
    assert_same_model(load_qa_model(str(out)), load_qa_model(str(out / "finetune" / f"checkpoint-{best['step']}")))
    assert_holds_word_table(out, out / "pruned")  # QAT started from the pruned model's table


def test_best_metric_must_be_one_evaluations_report(
    tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path, capsys
) -> None:
    # Without --metric_for_best_model, Trainer picks eval_loss, which unlabelled SQuAD features cannot give.
    args = run_args(tiny_bert_dir, squad_dir, tmp_path / "o", "--eval_strategy", "steps", "--eval_steps", "2",
                    "--save_steps", "2", "--load_best_model_at_end")  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--metric_for_best_model loss" in err and "f1" in err and "Traceback" not in err
