"""JPQD end to end on tiny models built in the tests: movement pruning warm-up with a teacher,
physical removal, QAT fine-tuning, export; and the seed configs as users wrote them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoConfig

from qacompress.architecture import require_layout
from qacompress.checkpoint import load_compression_state
from qacompress.cli import main
from qacompress.models import load_qa_model
from qacompress.runtime import OpenVINOQAModel

TINY_JPQD = [
    {
        "algorithm": "movement_sparsity",
        "params": {
            "warmup_start_epoch": 1,
            "warmup_end_epoch": 4,
            "importance_regularization_factor": 0.05,
            "steps_per_epoch": 3,
        },
        "sparse_structure_by_scopes": [
            {"mode": "block", "sparse_factors": [8, 8], "target_scopes": "{re}.*BertAttention.*"},
            {"mode": "per_dim", "axis": 0, "target_scopes": "{re}.*BertIntermediate.*"},
            {"mode": "per_dim", "axis": 1, "target_scopes": "{re}.*BertOutput.*"},
        ],
        "ignored_scopes": ["{re}.*NNCFEmbedding.*", "{re}.*qa_outputs.*", "{re}.*LayerNorm.*"],
    },
    {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 16}}},
]


def jpqd_args(model, squad_dir, out, config, *extra: str) -> list[str]:
    return [
        "train",
        "--model_name_or_path", str(model),
        "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
        "--do_train", "--do_eval",
        "--max_train_samples", "24", "--max_eval_samples", "24",
        "--max_seq_length", "96", "--doc_stride", "32",
        "--per_device_train_batch_size", "8", "--learning_rate", "5e-3",
        "--logging_steps", "2", "--save_steps", "4", "--seed", "3", "--disable_tqdm", "true",
        "--nncf_compression_config", str(config),
        "--output_dir", str(out),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def jpqd_run(tmp_path_factory, tiny_bert_dir, squad_dir) -> Path:
    root = tmp_path_factory.mktemp("jpqd")
    config = root / "jpqd.json"
    config.write_text(json.dumps(TINY_JPQD))
    out = root / "run"
    # 24 examples -> ~25 features -> 4 steps per real epoch; warm-up ends at step 12, QAT to step 16.
    args = jpqd_args(tiny_bert_dir, squad_dir, out, config, "--max_steps", "16",
                     "--teacher_model_name_or_path", str(tiny_bert_dir), "--distillation_weight", "0.5")  # fmt: skip
    assert main(args) == 0
    return out


def test_jpqd_prunes_and_removes_structure(jpqd_run: Path) -> None:
    report = json.loads((jpqd_run / "compression_report.json").read_text())
    assert (jpqd_run / "compression_report.png").stat().st_size > 1000
    assert 0 < report["encoder_linear_weights_removed_pct"] < 100
    assert report["heads_kept"] < report["heads_total"] and report["neurons_kept"] < report["neurons_total"]
    config = AutoConfig.from_pretrained(jpqd_run)  # config.json still loads with plain transformers
    sizes = config.qacompress_pruning["layers"]
    assert [s["intermediate_size"] for s in sizes] == [row["neurons_kept"] for row in report["layers"]]
    model = load_qa_model(str(jpqd_run))
    layer = model.bert.encoder.layer[0]
    assert layer.intermediate.dense.out_features == sizes[0]["intermediate_size"] < 64
    assert layer.attention.self.query.out_features == 8 * sizes[0]["heads"]
    # The IR's weights are smaller than those of the same model quantized without pruning.
    assert report["ir_weight_bytes_after"] < report["ir_weight_bytes_before"]


def test_jpqd_ir_runs_and_matches_torch(jpqd_run: Path) -> None:
    results = json.loads((jpqd_run / "eval_results.json").read_text())
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 0.5
    xml = (jpqd_run / "openvino_model.xml").read_text()
    assert 'type="FakeQuantize"' in xml
    runner = OpenVINOQAModel(jpqd_run)
    import numpy as np

    ids = np.array([[101, 2054, 2003, 102, 1996, 3437, 102]])
    start, end = runner({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    assert start.shape == end.shape == (1, 7) and np.isfinite(start).all()


def polynomial_threshold(step: int, init: float, *, start: int, end: int, final: float = 0.0, power: float = 3.0) -> float:
    """NNCF's warm-up schedule, written out here: -inf before `start`, then from `init` to `final` on
    the concave curve 1 - (1 - t)^power."""
    if step < start:
        return -math.inf
    t = min((step - start) / (end - start), 1.0)
    return init + (1 - (1 - t) ** power) * (final - init)


def test_jpqd_logs_losses_threshold_and_sparsity(jpqd_run: Path) -> None:
    logs = json.loads((jpqd_run / "trainer_state.json").read_text())["log_history"]
    warmup_logs = [entry for entry in logs if "importance_threshold" in entry]
    assert [entry["step"] for entry in warmup_logs] == [2, 4, 6, 8, 10, 12]  # --logging_steps 2 to the warm-up's end
    for key in ("task_loss", "distillation_loss", "compression_loss", "sparsity/all", "sparsity/query", "sparsity/ffn_in"):
        assert all(key in entry for entry in warmup_logs), key
    # The initial threshold is chosen from the scores when the warm-up starts (step 3 = epoch 1 of 3
    # steps); checkpoint-4 stores it.
    init = load_compression_state(jpqd_run / "checkpoint-4")["movement_schedule"]["init_threshold"]
    assert init < 0
    for entry in warmup_logs:
        # A step logged as `s` trained with the threshold set when optimizer step s - 1 began.
        step = entry["step"] - 1
        expected = polynomial_threshold(step, init, start=3, end=12)
        if step < 3:
            assert entry["importance_threshold"] == -math.inf and entry["importance_regularization_factor"] == 0.0
            assert entry["sparsity/all"] == 0.0  # nothing masked before the warm-up
            continue
        assert entry["importance_threshold"] == pytest.approx(expected, rel=1e-9), entry["step"]
        assert entry["importance_regularization_factor"] == pytest.approx(0.05 * (expected - init) / (0.0 - init))
    thresholds = [entry["importance_threshold"] for entry in warmup_logs[1:]]
    assert thresholds == sorted(thresholds) and len(set(thresholds)) == len(thresholds)  # rising every logged step
    sparsity = [entry["sparsity/all"] for entry in warmup_logs]
    # At the initial threshold only the lowest scores are masked (NNCF aims at 0.1% of weights; after
    # three Adam steps many block and row scores are equal, so ties make it a few percent); by the
    # end of the warm-up most weights are masked (0.74 when measured) and it never fell in between.
    assert 0 < sparsity[1] < 0.2 and sparsity[-1] > 0.5
    assert sparsity == sorted(sparsity)
    finetune = json.loads((jpqd_run / "finetune" / "trainer_state.json").read_text())
    assert finetune["global_step"] == 4  # steps 12..16 of the run: QAT on the pruned model


def test_one_learning_rate_schedule_spans_both_phases(jpqd_run: Path) -> None:
    """Linear decay from 5e-3 over all 16 steps: the fine-tuning phase continues where the warm-up
    stopped (a schedule per phase would restart at 5e-3 after step 12)."""
    warmup = json.loads((jpqd_run / "trainer_state.json").read_text())["log_history"]
    finetune = json.loads((jpqd_run / "finetune" / "trainer_state.json").read_text())["log_history"]
    logged = [(e["step"], e["learning_rate"]) for e in warmup if "learning_rate" in e]
    logged += [(12 + e["step"], e["learning_rate"]) for e in finetune if "learning_rate" in e]
    assert [step for step, _ in logged] == [2, 4, 6, 8, 10, 12, 14, 16]
    for step, rate in logged:  # the rate step `step` trained with: 1 - (step - 1) / 16 of the peak
        assert rate == pytest.approx(5e-3 * (16 - (step - 1)) / 16, rel=1e-6), step


def test_unstructured_masking_keeps_shapes_and_holds_the_zeros(tmp_path: Path, tiny_bert_dir: Path, squad_dir: Path) -> None:
    """`enable_structured_masking: false`: no head or neuron is cut out; the warm-up's masks become zeros
    in the full-size weights and stay zero while fine-tuning goes on."""
    import torch

    from qacompress.structured import current_sizes

    movement = json.loads(json.dumps(TINY_JPQD[0]))
    movement["params"]["enable_structured_masking"] = False
    config = tmp_path / "unstructured.json"
    config.write_text(json.dumps([movement]))
    out = tmp_path / "run"
    assert main(jpqd_args(tiny_bert_dir, squad_dir, out, config, "--max_steps", "14", "--no_export_openvino")) == 0
    model = load_qa_model(str(out))
    assert current_sizes(model) == [{"heads": 4, "intermediate_size": 64}] * 2
    masks = load_compression_state(out / "pruned")["frozen_masks"]
    assert {name.rsplit(".", 1)[0] for name in masks} == set(require_layout(model).roles())
    warmed = load_qa_model(str(out / "pruned"))
    masked = moved = 0
    for name, mask in masks.items():
        final = model.get_parameter(name)
        assert torch.all(final[mask == 0] == 0), name
        masked += int((mask == 0).sum())
        moved += int((final[mask == 1] != warmed.get_parameter(name)[mask == 1]).sum())
    total = sum(mask.numel() for mask in masks.values())
    assert 0 < masked < total and moved > 0  # some weights masked, the others trained on


def test_warmup_checkpoint_is_refused_by_evaluate_with_one_line(jpqd_run: Path, squad_dir: Path, capsys) -> None:
    checkpoint = jpqd_run / "checkpoint-8"  # saved mid warm-up: importance scores still in training
    assert (checkpoint / "compression_state.pt").is_file()
    args = ["evaluate", "--model_name_or_path", str(checkpoint), "--backend", "torch",
            "--validation_file", str(squad_dir / "v1.1" / "dev.json"), "--max_seq_length", "96"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(checkpoint) in err and "warm-up" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "config_name, model_fixture",
    [
        ("bert-base-jpqd.json", "tiny_bert_dir"),
        ("bert-base-jpqd-2023-02.json", "tiny_bert_dir"),
        ("bert-base-movement-sparsity.json", "tiny_distilbert_dir"),
    ],
)
def test_seed_configs_run_as_they_are(
    config_name: str, model_fixture: str, request, tmp_path: Path, squad_dir: Path, seed_configs_dir: Path
) -> None:
    """The users' files, unmodified: warm-up epochs 1..4, then fine-tuning to epoch 5. They give no
    `steps_per_epoch`, so an epoch is the run's real one (README: the default)."""
    model = request.getfixturevalue(model_fixture)
    out = tmp_path / "run"
    args = jpqd_args(model, squad_dir, out, seed_configs_dir / config_name, "--num_train_epochs", "5",
                     "--max_train_samples", "12", "--max_eval_samples", "8", "--per_device_train_batch_size", "8")  # fmt: skip
    assert main(args) == 0
    per_epoch = math.ceil(json.loads((out / "train_results.json").read_text())["train_samples"] / 8)
    warmup = json.loads((out / "trainer_state.json").read_text())
    assert warmup["global_step"] == 4 * per_epoch  # the warm-up ends with epoch 4 ...
    assert json.loads((out / "finetune" / "trainer_state.json").read_text())["global_step"] == per_epoch  # ... then 1 more
    thresholds = [e["importance_threshold"] for e in warmup["log_history"] if "importance_threshold" in e]
    # Logged every 2 steps; the threshold is -inf until epoch 1 begins, then rises.
    below = [t for t in thresholds if t == -math.inf]
    assert len(below) == per_epoch // 2 and thresholds[len(below):] == sorted(thresholds[len(below):])
    report = json.loads((out / "compression_report.json").read_text())
    assert report["heads_total"] == 8
    assert report["neurons_kept"] < report["neurons_total"] and report["encoder_linear_weights_removed_pct"] > 0
    sizes = AutoConfig.from_pretrained(out).qacompress_pruning["layers"]
    assert sum(layer["intermediate_size"] for layer in sizes) == report["neurons_kept"]
    xml = (out / "openvino_model.xml").read_text()
    quantized = "jpqd" in config_name  # the movement-only config has no quantization section
    assert ('type="FakeQuantize"' in xml) == quantized
    results = json.loads((out / "eval_results.json").read_text())
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 0.5
