"""README and docs/ claims that the end-to-end tests do not show by themselves, each checked on real
components: what `nncf.quantize` is told (SmoothQuant and bias correction off, `num_init_samples`,
range type, preset, quantizer mode/per_channel/signed), the movement schedule's end point and default
epoch length, BERT aliases for the other BERT-layout families, which checkpoint a re-run resumes
from, and `--overwrite_output_dir`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from test_movement import seed_like
from test_quantization import activation_ranges, quantizers
from test_scopes import SEED_ATTENTION, SEED_FFN_IN, SEED_FFN_OUT, selected_linears

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import CompressionConfig, MovementSparsityConfig, QuantizationConfig, QuantizerParams
from qacompress.compression.movement import attach_movement_pruning
from qacompress.compression.quantization import quantize_model
from qacompress.core.errors import ConfigError
from qacompress.model.architecture import find_layout
from qacompress.model.loading import load_tokenizer
from qacompress.model.surgery import LayerKeep, current_sizes, prune_
from qacompress.training.jpqd import plan_steps
from qacompress.training.phases import last_complete_checkpoint

WEIGHT_PORT = "__1.0"  # NNCF 3 hook names: port 1 of a linear is its weight
NO_EMBEDDINGS = ["{re}.*NNCFEmbedding.*"]  # keeps the 30522-row embedding quantizer (and its time) out


# --- quantization: what reaches NNCF -------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration(tiny_bert_dir, squad_dir):
    tok = load_tokenizer(str(tiny_bert_dir))
    data = json.loads((squad_dir / "v1.1" / "dev.json").read_text(encoding="utf-8"))
    pairs = [(q["question"], p["context"]) for a in data["data"] for p in a["paragraphs"] for q in p["qas"]][:6]
    return [dict(tok(q, c, truncation="only_second", max_length=64, return_tensors="pt")) for q, c in pairs]


def quantize(tiny_bert_dir, calibration, **settings):
    config = QuantizationConfig(ignored_scopes=NO_EMBEDDINGS, num_init_samples=len(calibration))
    for key, value in settings.items():
        setattr(config, key, value)
    return quantize_model(load_qa_model(str(tiny_bert_dir)), config, calibration).eval()


@pytest.fixture(scope="module")
def mixed(tiny_bert_dir, calibration):
    """The defaults of docs/configs.md: mixed preset, mean_min_max ranges."""
    return quantize(tiny_bert_dir, calibration)


def split(model) -> tuple[dict, dict]:
    qs = quantizers(model)
    return ({n: q for n, q in qs.items() if n.endswith(WEIGHT_PORT)}, {n: q for n, q in qs.items() if not n.endswith(WEIGHT_PORT)})


def test_smoothquant_and_bias_correction_leave_the_weights_alone(tiny_bert_dir, mixed):
    """SmoothQuant would rescale the linear weights (and add multiplier hooks), bias correction would
    shift the biases: every original parameter is bit-identical after `quantize_model`, except the
    word table, deliberately put on its INT8 grid (`qacompress.compression.wordtable`)."""
    from qacompress.compression.wordtable import int8_grid

    plain = load_qa_model(str(tiny_bert_dir)).state_dict()
    state = mixed.state_dict()
    assert set(plain) <= set(state)
    words = "bert.embeddings.word_embeddings.weight"
    plain[words] = int8_grid(plain[words])
    for name, value in plain.items():
        assert torch.equal(state[name], value), name
    from nncf.torch.function_hook.wrapper import get_hook_storage

    hooks = {type(module).__name__ for _, module in get_hook_storage(mixed).named_hooks()}
    assert hooks == {"SymmetricQuantizer", "AsymmetricQuantizer"}, hooks


def test_num_init_samples_limits_calibration(tiny_bert_dir, calibration, mixed):
    first_only = activation_ranges(quantize(tiny_bert_dir, calibration, num_init_samples=1))
    given_one = activation_ranges(quantize(tiny_bert_dir, calibration[:1], num_init_samples=300))
    assert first_only == given_one  # 1 of 6 samples used = only that sample given
    assert first_only != activation_ranges(mixed)  # and the other 5 would have changed the ranges


def test_mean_percentile_reaches_nncf(tiny_bert_dir, calibration, mixed):
    """Per-sample percentiles averaged (mean_percentile) differ from their median (percentile), and
    cannot exceed the averaged per-sample extremes (mean_min_max)."""
    mean_pct = activation_ranges(quantize(tiny_bert_dir, calibration, range_type="mean_percentile", max_percentile=99.0, min_percentile=1.0))
    median_pct = activation_ranges(quantize(tiny_bert_dir, calibration, range_type="percentile", max_percentile=99.0, min_percentile=1.0))
    min_max = activation_ranges(mixed)
    assert set(mean_pct) == set(median_pct) == set(min_max)
    assert mean_pct != median_pct
    for name in mean_pct:
        assert mean_pct[name] <= min_max[name] + 1e-6, name
    assert sum(mean_pct.values()) < sum(min_max.values())


def test_preset_and_per_channel_reach_nncf(tiny_bert_dir, calibration, mixed):
    weights, activations = split(mixed)
    assert {type(q).__name__ for q in weights.values()} == {"SymmetricQuantizer"}
    assert all(q.scale.numel() > 1 for q in weights.values())  # per output channel by default
    assert "AsymmetricQuantizer" in {type(q).__name__ for q in activations.values()}  # mixed: asymmetric activations
    performance = quantize(tiny_bert_dir, calibration, preset="performance", weights=QuantizerParams(per_channel=False))
    weights, activations = split(performance)
    assert {type(q).__name__ for q in activations.values()} == {"SymmetricQuantizer"}
    assert all(q.scale.numel() == 1 for q in weights.values())  # per_channel: false


def test_quantizer_mode_and_signed_reach_nncf(tiny_bert_dir, calibration):
    """`mode` and `signed` as the 2023-02 seed config sets them (activations symmetric under the mixed
    preset, weights symmetric and signed)."""
    settings = {"activations": QuantizerParams(mode="symmetric"), "weights": QuantizerParams(mode="symmetric", signed=True)}
    weights, activations = split(quantize(tiny_bert_dir, calibration, **settings))
    assert {type(q).__name__ for q in activations.values()} == {"SymmetricQuantizer"}
    assert {type(q).__name__ for q in weights.values()} == {"SymmetricQuantizer"} and all(q.signed for q in weights.values())


@pytest.mark.parametrize(
    "settings, key",
    [
        # NNCF 3's device configs do not let an activation's signedness be forced, either way
        ({"activations": QuantizerParams(signed=True)}, "quantization.activations"),
        ({"preset": "performance", "activations": QuantizerParams(signed=False)}, "quantization.activations"),
        ({"weights": QuantizerParams(mode="asymmetric")}, "quantization.weights"),  # the overflow fix needs symmetric weights
    ],
    ids=["signed activations", "unsigned activations", "asymmetric weights"],
)
def test_settings_nncf_refuses_are_a_config_error(tiny_bert_dir, calibration, settings, key):
    """They reach NNCF, which refuses them: one line naming the key instead of NNCF's traceback."""
    with pytest.raises(ConfigError) as caught:
        quantize(tiny_bert_dir, calibration, **settings)
    assert caught.value.key == key and "\n" not in str(caught.value)


# --- movement pruning schedule -------------------------------------------------------------------


def test_final_importance_threshold_is_where_the_threshold_ends(tiny_bert_dir):
    model = load_qa_model(str(tiny_bert_dir))
    pruner = attach_movement_pruning(model, seed_like(init_importance_threshold=-0.5, final_importance_threshold=0.25))
    pruner.set_step(20)  # half-way through warm-up steps 10..30: 1 - 0.5^3 = 0.875 of the way
    assert pruner.threshold == pytest.approx(-0.5 + 0.875 * 0.75)
    for step in (30, 45):
        pruner.set_step(step)
        assert pruner.threshold == pytest.approx(0.25)
    # Scores of 0.2 are below the final threshold: masked; one head's blocks at 0.3 survive.
    with torch.no_grad():
        for name, target in pruner.targets.items():
            pruner.scores[target.key].fill_(0.2)
            if target.key in pruner.bias_scores:
                pruner.bias_scores[target.key].fill_(0.2)
        pruner.scores["bert__encoder__layer__0__attention__self__query"][0].fill_(0.3)  # rows 0-7 = head 0
    keep, _ = pruner.resolve_structure(model, find_layout(model))
    assert [(k.heads, k.neurons) for k in keep] == [([0], []), ([], [])]


def test_default_steps_per_epoch_is_the_runs_real_epoch(tmp_path):
    from qacompress.training.arguments import QACompressTrainingArguments

    args = QACompressTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                                       gradient_accumulation_steps=2, num_train_epochs=5)  # fmt: skip
    movement = MovementSparsityConfig(warmup_start_epoch=1, warmup_end_epoch=4, importance_regularization_factor=0.1)
    # 100 features: 13 batches of 8, 7 optimizer steps with accumulation 2 (as the Trainer counts them)
    assert plan_steps(CompressionConfig(movement_sparsity=movement), args, 100) == (7, 4 * 7, 5 * 7)
    movement.steps_per_epoch = 3  # given: NNCF's unit for the warm-up epochs, the run keeps its length
    assert plan_steps(CompressionConfig(movement_sparsity=movement), args, 100) == (3, 4 * 3, 5 * 7)


# --- other BERT-layout families --------------------------------------------------------------------


def tiny_family_model(family: str):
    import transformers

    config_class, model_class, prefix = {
        "roberta": ("RobertaConfig", "RobertaForQuestionAnswering", "roberta"),
        "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForQuestionAnswering", "roberta"),
        "electra": ("ElectraConfig", "ElectraForQuestionAnswering", "electra"),
        "camembert": ("CamembertConfig", "CamembertForQuestionAnswering", "roberta"),
    }[family]
    config = getattr(transformers, config_class)(vocab_size=100, hidden_size=32, embedding_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config), prefix


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra", "camembert"])
def test_bert_layout_families_take_the_seed_configs(family):
    """The seed configs' BERT class names select the same roles, movement pruning attaches with the
    configured modes, and heads and neurons can be cut out."""
    model, prefix = tiny_family_model(family)
    layer = prefix + ".encoder.layer.{i}."
    attention = {layer.format(i=i) + m for i in range(2) for m in ("attention.self.query", "attention.self.key",
                                                                    "attention.self.value", "attention.output.dense")}  # fmt: skip
    assert selected_linears(model, SEED_ATTENTION) == attention
    assert selected_linears(model, SEED_FFN_IN) == {layer.format(i=i) + "intermediate.dense" for i in range(2)}
    assert selected_linears(model, SEED_FFN_OUT) == {layer.format(i=i) + "output.dense" for i in range(2)}
    assert find_layout(model).family == "bert"
    pruner = attach_movement_pruning(model, seed_like())
    modes = {name[len(layer.format(i=0)) :]: (t.mode, t.factors) for name, t in pruner.targets.items() if name.startswith(layer.format(i=0))}
    assert modes == {
        "attention.self.query": ("block", (8, 8)), "attention.self.key": ("block", (8, 8)),
        "attention.self.value": ("block", (8, 8)), "attention.output.dense": ("block", (8, 8)),
        "intermediate.dense": ("per_dim", (1, 32)), "output.dense": ("per_dim", (32, 1)),
    }  # fmt: skip
    from qacompress.compression.movement import detach_movement_pruning

    detach_movement_pruning(model)
    prune_(model, [LayerKeep(heads=[1, 3], neurons=list(range(10))), LayerKeep(heads=[0], neurons=[5])])
    assert current_sizes(model) == [{"heads": 2, "intermediate_size": 10}, {"heads": 1, "intermediate_size": 1}]
    ids = torch.tensor([[0, 5, 6, 2, 2, 7, 8, 9, 2]])
    with torch.no_grad():
        assert model(input_ids=ids).start_logits.shape == (1, 9)


# --- checkpoints and output directories --------------------------------------------------------------


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"x")
        if complete:  # the Trainer writes trainer_state.json last
            (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_overwrite_output_dir_trains_afresh_in_a_non_empty_directory(tmp_path, tiny_bert_dir, squad_dir, caplog):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["train", "--model_name_or_path", str(tiny_bert_dir), "--train_file", str(squad_dir / "v1.1" / "train.json"),
            "--do_train", "--max_train_samples", "8", "--max_seq_length", "64", "--doc_stride", "16",
            "--per_device_train_batch_size", "4", "--max_steps", "2", "--save_steps", "1", "--compression", "none",
            "--no_export_openvino", "--disable_tqdm", "true", "--logging_steps", "1", "--output_dir", str(out)]  # fmt: skip
    assert main(args + ["--overwrite_output_dir"]) == 0  # refused without the flag (test_train_cli)
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint-2" / "trainer_state.json").is_file()
    with caplog.at_level(logging.INFO, logger="qacompress"):
        assert main(args) == 0  # now there is a checkpoint: resumed, nothing left to train
        assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
        caplog.clear()
        assert main(args + ["--overwrite_output_dir"]) == 0  # the flag starts afresh even so
        assert "resuming from" not in caplog.text
    losses = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2]  # both steps trained again


# --- OpenVINO inference precision ----------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (read here, not through qacompress)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def test_inference_precision_reaches_openvino(tmp_path, tiny_bert_dir, squad_dir):
    """`--inference_precision bf16` evaluates the IR in bf16 on CPUs with AVX-512 (natively with AVX-512
    BF16 or AMX, emulated on the others) and in f32 on AVX2-only CPUs, as docs/training.md says; `auto` leaves
    OpenVINO's own default; the precision used is in eval_results.json. (Seen: bf16 on an AMX Xeon and
    on an AVX-512 VNNI Xeon without BF16, f32 on an AVX2-only EPYC.)"""
    import openvino as ov

    from qacompress.ir.runtime import OpenVINOQAModel

    out = tmp_path / "run"
    args = ["train", "--model_name_or_path", str(tiny_bert_dir), "--compression", "none", "--do_train", "--do_eval",
            "--train_file", str(squad_dir / "v1.1" / "train.json"), "--validation_file", str(squad_dir / "v1.1" / "dev.json"),
            "--max_train_samples", "4", "--max_eval_samples", "4", "--max_seq_length", "64", "--doc_stride", "16",
            "--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--inference_precision", "bf16",
            "--output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "eval_results.json").read_text())
    flags = cpu_flags()
    expected = "bf16" if "avx512f" in flags else "f32"
    assert results["eval_openvino_precision"] == expected and "eval_openvino_f1" in results, (
        results.get("eval_openvino_precision"), expected, sorted(f for f in flags if f.startswith(("avx", "amx"))))
    assert OpenVINOQAModel(out, precision="f32").precision == "f32"
    default = ov.Core().compile_model(str(out / "openvino_model.xml"), "CPU").get_property("INFERENCE_PRECISION_HINT")
    assert OpenVINOQAModel(out, precision="auto").precision == default.get_type_name()
