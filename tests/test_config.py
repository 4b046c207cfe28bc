"""NNCF JSON compression configs: the seed configs users already have load as they are (trailing
commas, list and single-object forms) into typed values; keys NNCF 3 cannot honour are warned about by
name; every malformed config raises a `ConfigError` that names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qacompress.compression.config import (
    DEFAULT_QUANTIZATION,
    CompressionConfig,
    default_compression_config,
    load_compression_config,
    parse_compression_config,
)
from qacompress.core.errors import ConfigError, QACompressError

MOVEMENT_PARAMS = {"warmup_start_epoch": 1, "warmup_end_epoch": 4, "importance_regularization_factor": 0.02}
SEED_STRUCTURES = [
    ("block", ["{re}.*BertAttention.*"], (32, 32), None),
    ("per_dim", ["{re}.*BertIntermediate.*"], None, 0),
    ("per_dim", ["{re}.*BertOutput.*"], None, 1),
]
SEED_MOVEMENT_IGNORED = ["{re}.*NNCFEmbedding.*", "{re}.*qa_outputs.*", "{re}.*LayerNorm.*"]


def write(tmp_path: Path, obj, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def movement(params: dict | None = None, **section) -> dict:
    return {"algorithm": "movement_sparsity", "params": {**MOVEMENT_PARAMS, **(params or {})}, **section}


def structures(config: CompressionConfig) -> list[tuple]:
    return [(s.mode, s.target_scopes, s.sparse_factors, s.axis) for s in config.movement_sparsity.sparse_structure_by_scopes]


def config_error(tmp_path: Path, obj) -> ConfigError:
    path = write(tmp_path, obj)
    with pytest.raises(ConfigError) as info:
        load_compression_config(path)
    assert str(path) in str(info.value), "the message must name the file"
    assert info.value.file == str(path)
    return info.value


def assert_names_key(error: ConfigError, key: str) -> None:
    assert error.key == key
    assert f"key '{key}'" in str(error)


# --- the seed configs, as users have them -------------------------------------------------------


def test_seed_configs_are_not_plain_json_but_load(seed_configs_dir):
    """The JPQD files have trailing commas (plain `json` rejects them); all three load as they are."""
    for name in ("bert-base-jpqd.json", "bert-base-jpqd-2023-02.json"):
        with pytest.raises(json.JSONDecodeError):
            json.loads((seed_configs_dir / name).read_text(encoding="utf-8"))
    for name in ("bert-base-jpqd.json", "bert-base-jpqd-2023-02.json", "bert-base-movement-sparsity.json"):
        config = load_compression_config(seed_configs_dir / name)
        assert config.movement_sparsity is not None
        assert config.source == str(seed_configs_dir / name)
        assert not config.is_empty


def test_bert_base_jpqd_typed_values(seed_configs_dir):
    path = seed_configs_dir / "bert-base-jpqd.json"
    config = load_compression_config(path)

    ms = config.movement_sparsity
    assert (ms.warmup_start_epoch, ms.warmup_end_epoch) == (1, 4)
    assert ms.importance_regularization_factor == pytest.approx(0.02)
    assert ms.enable_structured_masking is True
    assert ms.init_importance_threshold is None and ms.steps_per_epoch is None
    assert structures(config) == SEED_STRUCTURES
    assert ms.ignored_scopes == SEED_MOVEMENT_IGNORED

    q = config.quantization
    assert q.preset == "mixed"
    assert q.overflow_fix == "enable"
    assert q.num_init_samples == 32
    assert q.range_type == "percentile"
    assert (q.min_percentile, q.max_percentile) == (pytest.approx(0.01), pytest.approx(99.99))
    assert q.ignored_scopes == ["{re}.*__add___[0-1]", "{re}.*layer_norm_0"]
    # Nothing per-group is configured: NNCF chooses.
    assert (q.weights.mode, q.weights.per_channel, q.weights.signed) == (None, None, None)
    assert q.activations.mode is None
    assert q.target_device == "ANY"

    # Keys NNCF 3 cannot honour are warned about by name (and by file), exactly these two.
    assert len(config.warnings) == 2
    overrides = [w for w in config.warnings if "'[1].scope_overrides'" in w]
    bn = [w for w in config.warnings if "'[1].initializer.batchnorm_adaptation'" in w]
    assert len(overrides) == 1 and len(bn) == 1
    assert all(str(path) in w for w in config.warnings)
    # The raw sections are kept as read.
    assert [s["algorithm"] for s in config.raw] == ["movement_sparsity", "quantization"]


def test_bert_base_jpqd_2023_02_typed_values(seed_configs_dir):
    config = load_compression_config(seed_configs_dir / "bert-base-jpqd-2023-02.json")
    q = config.quantization
    assert (q.weights.mode, q.weights.signed, q.weights.per_channel) == ("symmetric", True, False)
    assert (q.activations.mode, q.activations.per_channel, q.activations.signed) == ("symmetric", None, None)
    # No overflow_fix in the file: NNCF 2's default, 7-bit weights everywhere.
    assert q.preset == "mixed" and q.overflow_fix == "enable" and q.ignored_scopes == []
    assert q.range_type == "percentile" and q.num_init_samples == 32
    # The first published file spelled the attention pattern `BertAttention*` (a regex: "n" repeated).
    assert structures(config)[0] == ("block", ["{re}.*BertAttention*"], (32, 32), None)
    assert config.movement_sparsity.ignored_scopes == ["{re}.*NNCFEmbedding", "{re}.*qa_outputs*", "{re}.*LayerNorm.*"]
    assert len(config.warnings) == 1 and "batchnorm_adaptation" in config.warnings[0]
    assert not any("scope_overrides" in w for w in config.warnings)


def test_movement_only_seed_is_a_single_object(seed_configs_dir):
    path = seed_configs_dir / "bert-base-movement-sparsity.json"
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    config = load_compression_config(path)
    assert config.quantization is None
    ms = config.movement_sparsity
    assert ms.importance_regularization_factor == pytest.approx(0.01)
    assert (ms.warmup_start_epoch, ms.warmup_end_epoch) == (1, 4)
    assert structures(config) == SEED_STRUCTURES
    assert ms.ignored_scopes == SEED_MOVEMENT_IGNORED
    assert config.warnings == []


# --- the default, lenient syntax, wrappers, warnings ---------------------------------------------


def test_default_config_is_mixed_qat_that_keeps_embeddings_adds_and_norms_in_float():
    config = default_compression_config()
    assert config.movement_sparsity is None and config.warnings == []
    q = config.quantization
    assert q.preset == "mixed"
    assert q.num_init_samples == 300
    assert q.range_type == "mean_min_max"
    assert q.ignored_scopes == ["{re}.*NNCFEmbedding.*", "{re}.*__add___\\d+", "{re}.*layer_norm_\\d+"]
    assert q.int8_embeddings  # the word table is held on its INT8 grid during QAT (qacompress.compression.wordtable)
    # A fresh copy each time: changing one config must not change the default.
    q.ignored_scopes.append("x")
    config.raw[0]["preset"] = "performance"
    again = default_compression_config()
    assert "x" not in again.quantization.ignored_scopes
    assert DEFAULT_QUANTIZATION["preset"] == "mixed"


def test_readme_shows_the_default_config():
    """The "Default QAT config" block of docs/configs.md (linked from the README) is the default itself
    (users copy it to start a config)."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text(encoding="utf-8")
    block = readme.split("**Default QAT config**", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert json.loads(block) == DEFAULT_QUANTIZATION


def test_comments_and_trailing_commas_are_accepted(tmp_path):
    text = """
    // the user's notes
    [
        {
            "algorithm": "quantization", /* inline */
            "preset": "performance",
            "initializer": {"range": {"num_init_samples": 8, "type": "min_max",},},
        },
    ]
    """
    config = load_compression_config(write(tmp_path, text))
    assert config.quantization.preset == "performance"
    assert config.quantization.num_init_samples == 8
    assert config.quantization.range_type == "min_max"
    assert config.warnings == []


@pytest.mark.parametrize("body", [{"algorithm": "quantization"}, [{"algorithm": "quantization"}]])
def test_full_nncf_file_with_compression_wrapper(tmp_path, body):
    obj = {"input_info": {"sample_size": [1, 384]}, "compression": body}
    config = load_compression_config(write(tmp_path, obj))
    assert config.quantization is not None and config.movement_sparsity is None


def test_unknown_keys_warn_by_name_and_do_not_fail(tmp_path):
    obj = {
        "algorithm": "quantization",
        "favourite_colour": "blue",
        "initializer": {"range": {"num_init_samples": 4, "mystery": 1}},
        "weights": {"mode": "symmetric", "rounding": "up"},
    }
    path = write(tmp_path, obj)
    config = load_compression_config(path)
    assert config.quantization.num_init_samples == 4
    assert config.quantization.weights.mode == "symmetric"
    for key in ("favourite_colour", "initializer.range.mystery", "weights.rounding"):
        hits = [w for w in config.warnings if f"'{key}'" in w]
        assert len(hits) == 1, (key, config.warnings)
        assert str(path) in hits[0] and "unknown" in hits[0]
    assert len(config.warnings) == 3


def test_unknown_movement_param_warns_with_list_index(tmp_path):
    config = load_compression_config(write(tmp_path, [movement({"speed": 3})]))
    assert any("'[0].params.speed'" in w for w in config.warnings), config.warnings


def test_initial_importance_threshold_spellings(tmp_path):
    """NNCF's code read `init_importance_threshold`, its docs said `initial_...`: both work."""
    for key in ("init_importance_threshold", "initial_importance_threshold"):
        config = parse_compression_config(movement({key: -0.5}))
        assert config.movement_sparsity.init_importance_threshold == -0.5
        assert config.warnings == []


# --- malformed configs: ConfigError naming file and key ------------------------------------------


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, QACompressError)


def test_unknown_algorithm(tmp_path):
    error = config_error(tmp_path, {"algorithm": "magnitude_sparsity"})
    assert_names_key(error, "algorithm")
    assert "magnitude_sparsity" in str(error)
    error = config_error(tmp_path, [{"algorithm": "quantization"}, {"algorithm": "filter_pruning"}])
    assert_names_key(error, "[1].algorithm")


def test_algorithm_missing(tmp_path):
    assert_names_key(config_error(tmp_path, [{"preset": "mixed"}]), "[0].algorithm")


@pytest.mark.parametrize("algorithm", ["quantization", "movement_sparsity"])
def test_algorithm_given_twice(tmp_path, algorithm):
    section = {"algorithm": "quantization"} if algorithm == "quantization" else movement()
    error = config_error(tmp_path, [section, section])
    assert_names_key(error, "[1].algorithm")
    assert "twice" in str(error)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"warmup_start_epoch": "1"}, "params.warmup_start_epoch"),
        ({"warmup_end_epoch": 4.5}, "params.warmup_end_epoch"),
        ({"importance_regularization_factor": True}, "params.importance_regularization_factor"),
        ({"importance_regularization_factor": "0.02"}, "params.importance_regularization_factor"),
        ({"enable_structured_masking": 1}, "params.enable_structured_masking"),
        ({"warmup_start_epoch": True}, "params.warmup_start_epoch"),
    ],
)
def test_wrong_types(tmp_path, params, key):
    error = config_error(tmp_path, movement(params))
    assert_names_key(error, key)
    assert "expected" in str(error)


def test_wrong_types_in_quantization(tmp_path):
    obj = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": True}}}
    assert_names_key(config_error(tmp_path, obj), "initializer.range.num_init_samples")
    obj = {"algorithm": "quantization", "initializer": {"range": {"params": {"min_percentile": False}}}}
    assert_names_key(config_error(tmp_path, obj), "initializer.range.params.min_percentile")
    obj = {"algorithm": "quantization", "ignored_scopes": ["{re}.*ok", 3]}
    assert_names_key(config_error(tmp_path, obj), "ignored_scopes[1]")
    obj = {"algorithm": "quantization", "weights": "symmetric"}
    assert_names_key(config_error(tmp_path, obj), "weights")


def test_section_must_be_an_object(tmp_path):
    error = config_error(tmp_path, [{"algorithm": "quantization"}, "movement_sparsity"])
    assert error.key == "[1]"


def test_required_movement_params(tmp_path):
    assert_names_key(config_error(tmp_path, {"algorithm": "movement_sparsity"}), "params")
    params = dict(MOVEMENT_PARAMS)
    del params["importance_regularization_factor"]
    error = config_error(tmp_path, {"algorithm": "movement_sparsity", "params": params})
    assert_names_key(error, "params.importance_regularization_factor")


@pytest.mark.parametrize(("start", "end"), [(4, 4), (4, 1), (-1, 2)])
def test_warmup_end_must_follow_start(tmp_path, start, end):
    error = config_error(tmp_path, movement({"warmup_start_epoch": start, "warmup_end_epoch": end}))
    assert_names_key(error, "params.warmup_end_epoch")


def test_warmup_valid_edge(tmp_path):
    config = load_compression_config(write(tmp_path, movement({"warmup_start_epoch": 0, "warmup_end_epoch": 1})))
    assert (config.movement_sparsity.warmup_start_epoch, config.movement_sparsity.warmup_end_epoch) == (0, 1)


def test_negative_factor(tmp_path):
    error = config_error(tmp_path, movement({"importance_regularization_factor": -0.01}))
    assert_names_key(error, "params.importance_regularization_factor")
    # zero is allowed (no regularisation), and an int is a number
    config = parse_compression_config(movement({"importance_regularization_factor": 0}))
    assert config.movement_sparsity.importance_regularization_factor == 0.0


def test_non_finite_number(tmp_path):
    error = config_error(tmp_path, '{"algorithm": "movement_sparsity", "params": {"warmup_start_epoch": 1, '
                         '"warmup_end_epoch": 4, "importance_regularization_factor": NaN}}')
    assert_names_key(error, "params.importance_regularization_factor")


def test_block_mode_needs_sparse_factors(tmp_path):
    obj = movement(sparse_structure_by_scopes=[{"mode": "block", "target_scopes": "{re}.*BertAttention.*"}])
    error = config_error(tmp_path, obj)
    assert_names_key(error, "sparse_structure_by_scopes[0].sparse_factors")


@pytest.mark.parametrize("factors", [[32], [32, 32, 1], [32, 0], [-1, 32], [32.0, 32], [True, 32], ["32", "32"]])
def test_sparse_factors_two_positive_ints(tmp_path, factors):
    entries = [
        {"mode": "per_dim", "axis": 0, "target_scopes": "{re}.*BertIntermediate.*"},
        {"mode": "block", "sparse_factors": factors, "target_scopes": "{re}.*BertAttention.*"},
    ]
    error = config_error(tmp_path, [movement(sparse_structure_by_scopes=entries)])
    assert_names_key(error, "[0].sparse_structure_by_scopes[1].sparse_factors")


def test_sparse_factors_only_in_block_mode(tmp_path):
    entry = {"mode": "per_dim", "axis": 0, "sparse_factors": [1, 32], "target_scopes": "{re}.*x"}
    error = config_error(tmp_path, movement(sparse_structure_by_scopes=[entry]))
    assert_names_key(error, "sparse_structure_by_scopes[0].sparse_factors")


@pytest.mark.parametrize("axis", [None, 2, -1, True])
def test_per_dim_needs_axis_0_or_1(tmp_path, axis):
    entry = {"mode": "per_dim", "target_scopes": "{re}.*BertOutput.*"}
    if axis is not None:
        entry["axis"] = axis
    error = config_error(tmp_path, movement(sparse_structure_by_scopes=[entry]))
    assert_names_key(error, "sparse_structure_by_scopes[0].axis")


def test_unknown_sparse_mode_and_missing_targets(tmp_path):
    entry = {"mode": "diagonal", "target_scopes": "{re}.*"}
    assert_names_key(config_error(tmp_path, movement(sparse_structure_by_scopes=[entry])),
                     "sparse_structure_by_scopes[0].mode")
    entry = {"mode": "block", "sparse_factors": [4, 4]}
    assert_names_key(config_error(tmp_path, movement(sparse_structure_by_scopes=[entry])),
                     "sparse_structure_by_scopes[0].target_scopes")


@pytest.mark.parametrize(
    ("obj", "key"),
    [
        ({"algorithm": "quantization", "ignored_scopes": ["{re}.*ok", "{re}.*(unclosed"]}, "ignored_scopes[1]"),
        ({"algorithm": "quantization", "ignored_scopes": "{re}[z-a]"}, "ignored_scopes[0]"),
        (
            movement(sparse_structure_by_scopes=[{"mode": "fine", "target_scopes": ["{re}.*BertOutput(["]}]),
            "sparse_structure_by_scopes[0].target_scopes[0]",
        ),
        (movement(ignored_scopes=["{re}*LayerNorm"]), "ignored_scopes[0]"),
    ],
)
def test_invalid_regex(tmp_path, obj, key):
    error = config_error(tmp_path, obj)
    assert_names_key(error, key)
    assert "regular expression" in str(error)


def test_plain_scope_strings_are_not_compiled(tmp_path):
    """Without `{re}` a scope is an exact name, so regex metacharacters in it are fine."""
    obj = {"algorithm": "quantization", "ignored_scopes": ["BertForQuestionAnswering/NNCFLinear[qa_outputs]/linear_0("]}
    config = load_compression_config(write(tmp_path, obj))
    assert config.quantization.ignored_scopes == obj["ignored_scopes"]


@pytest.mark.parametrize("group", ["weights", "activations"])
@pytest.mark.parametrize("bits", [4, 16])
def test_bits_other_than_8(tmp_path, group, bits):
    error = config_error(tmp_path, {"algorithm": "quantization", group: {"bits": bits}})
    assert_names_key(error, f"{group}.bits")
    config = parse_compression_config({"algorithm": "quantization", group: {"bits": 8}})
    assert config.warnings == []


def test_unknown_preset_mode_range_type_overflow_fix(tmp_path):
    assert_names_key(config_error(tmp_path, {"algorithm": "quantization", "preset": "fast"}), "preset")
    assert_names_key(config_error(tmp_path, {"algorithm": "quantization", "weights": {"mode": "asym"}}),
                     "weights.mode")
    obj = {"algorithm": "quantization", "initializer": {"range": {"type": "threesigma"}}}
    assert_names_key(config_error(tmp_path, obj), "initializer.range.type")
    assert_names_key(config_error(tmp_path, {"algorithm": "quantization", "overflow_fix": "yes"}), "overflow_fix")
    assert_names_key(config_error(tmp_path, {"algorithm": "quantization", "target_device": "TPU"}), "target_device")


def test_percentiles_must_be_ordered(tmp_path):
    obj = {
        "algorithm": "quantization",
        "initializer": {"range": {"type": "percentile", "params": {"min_percentile": 99, "max_percentile": 1}}},
    }
    assert_names_key(config_error(tmp_path, obj), "initializer.range.params.min_percentile")


def test_num_init_samples_positive(tmp_path):
    obj = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0}}}
    assert_names_key(config_error(tmp_path, obj), "initializer.range.num_init_samples")


@pytest.mark.parametrize("text", ["", "  \n\t\n"])
def test_empty_file(tmp_path, text):
    error = config_error(tmp_path, text)
    assert "empty" in str(error)


@pytest.mark.parametrize("text", ['[{"algorithm": "quantization", ', '{"algorithm": "quantization"'])
def test_truncated_json(tmp_path, text):
    error = config_error(tmp_path, text)
    assert "not valid JSON" in str(error)


def test_empty_list_and_wrong_top_level(tmp_path):
    assert "non-empty list" in str(config_error(tmp_path, []))
    assert "non-empty list" in str(config_error(tmp_path, '"quantization"'))


def test_file_not_found(tmp_path):
    path = tmp_path / "missing" / "nncf.json"
    with pytest.raises(ConfigError) as info:
        load_compression_config(path)
    assert str(path) in str(info.value) and "not found" in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_compression_config(tmp_path)  # a directory is not a config file


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"algorithm": "quantization", "ignored_scopes": ["caf\u00e9"]}'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_compression_config(path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)
