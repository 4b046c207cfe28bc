"""JPQD end to end on tiny models built in the tests: movement pruning warm-up with a teacher,
physical removal, QAT fine-tuning, export; and the seed configs as users wrote them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_quantization import compile_ir, ir_logits
from transformers import AutoConfig

from qacompress.cli import main
from qacompress.compression.checkpoint import load_compression_state, load_qa_model
from qacompress.compression.config import DEFAULT_QUANTIZATION
from qacompress.compression.wordtable import holds_word_table, int8_grid
from qacompress.inference.evaluation import eval_data, run_features
from qacompress.inference.runners import TorchQAModel
from qacompress.ir.runtime import OpenVINOQAModel
from qacompress.model.architecture import require_layout
from qacompress.model.loading import load_tokenizer

#: The quantization section of the default and of the shipped configs (configs/minilm-jpqd.json):
#: embeddings, residual adds and layer norms ignored, so QAT holds the word table on its INT8 grid
#: (`int8_embeddings: true` implied). Calibrated on 16 samples here instead of 300.
TINY_QUANTIZATION = {**json.loads(json.dumps(DEFAULT_QUANTIZATION)), "initializer": {"range": {"num_init_samples": 16}}}

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
    TINY_QUANTIZATION,
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


WORD_TABLE = "bert.embeddings.word_embeddings.weight"
TRAINED = ("bert.embeddings.position_embeddings.weight", "qa_outputs.weight")


def assert_holds_word_table(directory: Path, start: Path) -> None:
    """The model saved in `directory` holds its word table (docs/concepts.md, "INT8 embeddings"): loaded,
    the table is not trained (`holds_word_table`), and it is the table of `start`, the model QAT began
    from, rounded to its INT8 grid, bit for bit: no step moved it. The position table and the QA head did
    train, so the learning rate moved what it could. Rounding changes `start`'s table, so a table
    that trained in float or through a quantizer, or that was never rounded, fails."""
    from safetensors.torch import load_file

    assert holds_word_table(load_qa_model(str(directory))), f"{directory}: the word table is trained"
    begin, end = (load_file(str(d / "model.safetensors")) for d in (start, directory))
    held = int8_grid(begin[WORD_TABLE])
    assert not torch.equal(held, begin[WORD_TABLE])
    off = float((end[WORD_TABLE] - held).abs().max())
    assert torch.equal(end[WORD_TABLE], held), f"{directory}: word table off the grid of {start} by up to {off:.3g}"
    for name in TRAINED:
        assert not torch.equal(end[name], begin[name]), f"{directory}: {name} did not train"


class EmulatedIR:
    """A model directory's IR with FakeQuantize emulated in f32 (`test_quantization.compile_ir`): what the
    IR says, apart from how this CPU's INT8 kernels execute it."""

    def __init__(self, directory: Path) -> None:
        self.compiled = compile_ir(directory, emulate=True)
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return ir_logits(self.compiled, inputs)


def dev_features(directory: Path, squad_dir: Path, max_samples: int):
    """The features a run of `jpqd_args` evaluates on: the first dev questions, length 96, stride 32."""
    dev = squad_dir / "v1.1" / "dev.json"
    return eval_data(dev, load_tokenizer(str(directory)), max_seq_length=96, doc_stride=32, max_samples=max_samples)[1]


def logits(runner, features) -> np.ndarray:
    """Start and end logits of every feature, shape (2, features, 96)."""
    return np.stack(run_features(runner, features, progress=False))


def assert_ir_computes_the_torch_model(directory: Path, features) -> np.ndarray:
    """The IR in `directory` computes what its torch model computes on `features`: the same start and end
    argmax on every feature (the tokens answers come from), and the same logits up to summation order
    (1e-5, the bound of test_quantization's exactness tests) at all but a few tokens (at most 1 in
    200). Those are tokens where one activation landed within summation-order distance of an 8-bit
    rounding boundary and went to the neighbouring level: measured, 5 of 6,912 tokens on the JPQD run
    (their logits 5e-4 to 1.2e-3 off) and 1 of 2,304 with a seed config (8.8e-3), one token each; the
    bound on them is 2% of the largest logit, a few such steps. A mis-scaled or missing quantizer, or
    an IR of other weights, moves nearly every logit (fine-tuning moved every one by more than 1e-5).
    Returns the torch logits."""
    ir, pt = logits(EmulatedIR(directory), features), logits(TorchQAModel(load_qa_model(str(directory))), features)
    differ = np.argwhere(ir.argmax(-1) != pt.argmax(-1))
    assert not len(differ), f"{directory}: IR and torch argmax differ at (start/end, feature) {differ.tolist()}"
    gap = np.abs(ir - pt)
    off = np.argwhere(gap.max(0) > 1e-5)  # (feature, token)
    seen = f"{len(off)} of {gap[0].size} tokens off by more than 1e-5, up to {gap.max():.3g}"
    seen += f", at (feature, token) {off[:10].tolist()}"
    assert len(off) <= gap[0].size / 200, f"{directory}: {seen}"
    assert gap.max() <= 0.02 * np.abs(pt).max(), f"{directory}: {seen}; largest logit {np.abs(pt).max():.3g}"
    return pt


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_jpqd_ir_runs_and_matches_torch(jpqd_run: Path, squad_dir: Path) -> None:
    """The pruned, quantized IR computes what the fine-tuned torch model computes, on the features of the
    24 questions the run evaluated (test_quantization checks this on a model that was neither pruned
    nor trained). Fine-tuning and quantization moved every logit of the pruned float model by more
    than the 1e-5 tolerance, so an IR exported from another state of the run would not pass."""
    results = json.loads((jpqd_run / "eval_results.json").read_text())
    assert "eval_openvino_f1" in results  # the run evaluated its IR
    xml = (jpqd_run / "openvino_model.xml").read_text()
    assert 'type="FakeQuantize"' in xml
    features = dev_features(jpqd_run, squad_dir, 24)
    trained = assert_ir_computes_the_torch_model(jpqd_run, features)
    moved = np.abs(trained - logits(TorchQAModel(load_qa_model(str(jpqd_run / "pruned"))), features))
    assert (moved > 1e-5).mean() > 0.99, f"only {(moved > 1e-5).mean():.1%} of the logits moved by more than 1e-5"
    runner = OpenVINOQAModel(jpqd_run)
    ids = np.array([[101, 2054, 2003, 102, 1996, 3437, 102]])
    start, end = runner({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    assert start.shape == end.shape == (1, 7) and np.isfinite(start).all()


def test_jpqd_finetuning_holds_the_word_table(jpqd_run: Path, tiny_bert_dir: Path) -> None:
    """The shipped configs' quantization section holds the word table through JPQD: the warm-up trains it
    in float, QAT starts from the pruned model's table rounded to its INT8 grid and never moves it
    (the resume tests in test_reliability check a run resumed from a fine-tuning checkpoint)."""
    from safetensors.torch import load_file

    start, warmed = (load_file(str(d / "model.safetensors")) for d in (tiny_bert_dir, jpqd_run / "pruned"))
    assert not torch.equal(warmed[WORD_TABLE], start[WORD_TABLE])  # trained in float by the warm-up
    assert_holds_word_table(jpqd_run, jpqd_run / "pruned")


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

    from qacompress.model.surgery import current_sizes

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


@pytest.mark.slow
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
    `steps_per_epoch`, so an epoch is the run's real one (docs/configs.md: the default)."""
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
    # The IR the run ends with computes what it trained (the quantized configs also quantize the tables).
    assert_ir_computes_the_torch_model(out, dev_features(out, squad_dir, 8))
