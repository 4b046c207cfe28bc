"""JPQD end to end on tiny models built in the tests: movement pruning warm-up with a teacher,
physical removal, QAT fine-tuning, export; and the seed configs as users wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

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
    assert report["heads_kept"] <= report["heads_total"] and report["neurons_kept"] < report["neurons_total"]
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


def test_jpqd_logs_losses_threshold_and_sparsity(jpqd_run: Path) -> None:
    logs = json.loads((jpqd_run / "trainer_state.json").read_text())["log_history"]
    warmup_logs = [entry for entry in logs if "importance_threshold" in entry]
    assert warmup_logs, "the warm-up phase logs the threshold"
    last = warmup_logs[-1]
    for key in ("task_loss", "distillation_loss", "compression_loss", "sparsity/all", "sparsity/query", "sparsity/ffn_in"):
        assert key in last, key
    assert warmup_logs[0]["importance_threshold"] < last["importance_threshold"] or warmup_logs[0][
        "importance_threshold"
    ] == float("-inf")
    finetune = json.loads((jpqd_run / "finetune" / "trainer_state.json").read_text())
    assert finetune["global_step"] == 4  # steps 12..16 of the run: QAT on the pruned model


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
    """The users' files, unmodified: warm-up epochs 1..4 of 2 steps each, then fine-tuning to epoch 5."""
    model = request.getfixturevalue(model_fixture)
    out = tmp_path / "run"
    args = jpqd_args(model, squad_dir, out, seed_configs_dir / config_name, "--num_train_epochs", "5",
                     "--max_train_samples", "12", "--max_eval_samples", "8", "--per_device_train_batch_size", "8")  # fmt: skip
    assert main(args) == 0
    report = json.loads((out / "compression_report.json").read_text())
    assert report["heads_total"] == 8
    assert (out / "openvino_model.xml").is_file()
    results = json.loads((out / "eval_results.json").read_text())
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 0.5
