"""Compression configs in NNCF's JSON format, read as users wrote them.

Users arrive with NNCF 2 configs (`--nncf_compression_config`): a list of algorithm sections or a
single one, with comments and trailing commas (NNCF read them leniently, so do we). This module turns
them into typed config objects that drive each transform (`QuantizationConfig` for QAT,
`MovementSparsityConfig` for movement pruning). Keys today's NNCF cannot honour are reported by name in
`CompressionConfig.warnings`, never silently dropped; malformed values raise `ConfigError` naming the
file and key.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from qacompress.core.errors import ConfigError, QACompressError
from qacompress.model.scopes import compile_check

#: What QAT uses when no config is given: the seed trainer's default, restated for NNCF 3. Mixed
#: preset (symmetric weights, asymmetric activations), a few hundred samples to initialise ranges,
#: and embeddings, residual adds and layer norms kept in float, where INT8 costs accuracy and buys
#: little speed.
DEFAULT_QUANTIZATION: dict[str, Any] = {
    "algorithm": "quantization",
    "preset": "mixed",
    "initializer": {"range": {"num_init_samples": 300, "type": "mean_min_max"}},
    "ignored_scopes": ["{re}.*NNCFEmbedding.*", "{re}.*__add___\\d+", "{re}.*layer_norm_\\d+"],
}

RANGE_TYPES = ("min_max", "mean_min_max", "percentile", "mean_percentile")
SPARSE_MODES = ("fine", "block", "per_dim")


@dataclass
class QuantizerParams:
    """Per-group (weights or activations) quantizer settings; None keeps NNCF's choice."""

    mode: str | None = None  # "symmetric" | "asymmetric"
    per_channel: bool | None = None
    signed: bool | None = None


@dataclass
class QuantizationConfig:
    """INT8 quantization-aware training with `nncf.quantize` (NNCF 3)."""

    preset: str = "mixed"
    num_init_samples: int = 300
    range_type: str = "mean_min_max"
    min_percentile: float = 0.1
    max_percentile: float = 99.9
    weights: QuantizerParams = field(default_factory=QuantizerParams)
    activations: QuantizerParams = field(default_factory=QuantizerParams)
    #: NNCF 2's default: 7-bit weights in every layer, so that u8 x s8 pair sums fit int16 on CPUs
    #: without VNNI (AVX2's `vpmaddubsw` saturates otherwise and the IR no longer computes what trained).
    overflow_fix: str = "enable"
    ignored_scopes: list[str] = field(default_factory=list)
    target_device: str = "ANY"
    #: qacompress's own key `int8_embeddings` (true | false): the INT8 IR stores the word-embedding
    #: table as INT8 weights (weights-only; the lookups stay float), and QAT holds the table on that
    #: grid from its first step (`qacompress.compression.wordtable`). false trains and ships it in float. A table
    #: the config has NNCF quantize (one not ignored) trains through its quantizer either way.
    int8_embeddings: bool = True


@dataclass
class SparseStructure:
    """One `sparse_structure_by_scopes` entry: how matching layers group weights into prunable units."""

    mode: str
    target_scopes: list[str]
    sparse_factors: tuple[int, int] | None = None
    axis: int | None = None


@dataclass
class MovementSparsityConfig:
    """Block movement pruning (Sanh et al. 2020; Lagunas et al. 2021) as NNCF 2 configured it."""

    warmup_start_epoch: int
    warmup_end_epoch: int
    importance_regularization_factor: float
    enable_structured_masking: bool = True
    init_importance_threshold: float | None = None
    final_importance_threshold: float = 0.0
    power: float = 3.0
    steps_per_epoch: int | None = None
    sparse_structure_by_scopes: list[SparseStructure] = field(default_factory=list)
    ignored_scopes: list[str] = field(default_factory=list)


def _flag(text: str) -> dict[str, str]:
    """Field metadata of a setting that is also a command-line flag (`qacompress.core.settings`)."""
    return {"help": text}


@dataclass
class PruneConfig:
    """How Fisher pruning chooses and cuts heads and neurons (`qacompress.compression.pruning`). One object
    for the Python API, `qacompress prune`'s flags (every field with a help text is one) and a config
    file's `structured_pruning` section. Exactly one of `target_macs` / `target_latency`, each in (0, 1]."""

    target_macs: float | None = field(default=None, metadata=_flag("Fraction of the encoder's MACs to keep, in (0, 1]"))
    target_latency: float | None = field(
        default=None, metadata=_flag("Fraction of the OpenVINO latency (batch 1, max_seq_length) to keep, in (0, 1]")
    )
    remove_layers: bool = field(
        default=False,
        metadata=_flag("Under --target_latency, remove whole encoder layers where that keeps more Fisher information "
                       "(a layer's own measured cost is then saved too)"),
    )
    label_samples: int = field(default=1, metadata=_flag("Labels drawn per feature for the Fisher estimate"))
    refit: bool = field(default=True, metadata=_flag("Least-squares re-fit of each pruned layer"))
    refit_samples: int = field(
        default=128, metadata=_flag("Calibration features of the re-fit (a few hundred tokens per unknown suffice)")
    )
    latency_points: int = field(default=5, metadata=_flag("Head and neuron counts timed for --target_latency"))
    latency_seconds: float = field(default=1.0, metadata=_flag("Seconds of timing per latency table point"))
    latency_rounds: int = field(default=5, metadata=_flag("Interleaved rounds the latency timing is split into"))
    batch_size: int = field(default=8, metadata=_flag("Features per forward pass"))
    seed: int = field(default=42, metadata=_flag("Seed of the label draws"))
    # Set by the job, not flags of their own: the data's --max_seq_length, the output's precision.
    seq_length: int = 384
    quantized_latency: bool = True  # time INT8 IRs for the latency table (as the output will be)
    latency_precision: str = "f32"  # ... in the run's --inference_precision (as the output will run)
    ridge: float = 1e-4
    progress: bool = True

    def __post_init__(self) -> None:
        problem = prune_problem(self)
        if problem:
            raise QACompressError(f"{problem[0]}: {problem[1]}")

    @property
    def constraint(self) -> tuple[str, float]:
        return ("macs", self.target_macs) if self.target_macs is not None else ("latency", self.target_latency)


@dataclass
class StructuredPruningConfig(PruneConfig):
    """qacompress's own config section (not NNCF's): Fisher selection of heads and neurons at the start of
    training (Kwon et al. 2022), on `num_samples` training features, then fine-tuning of the pruned model."""

    criterion: str = "fisher"
    num_samples: int = 256


def prune_problem(settings: Any) -> tuple[str, str] | None:
    """The first (setting, what is wrong) of a `PruneConfig`'s values, or None: the one range check of
    the flags, the config section and the Python API."""
    given = [n for n in ("target_macs", "target_latency") if getattr(settings, n) is not None]
    if len(given) != 1:
        return "target_macs", "give exactly one of target_macs and target_latency (each a fraction in (0, 1])"
    value = getattr(settings, given[0])
    if not 0 < value <= 1:
        return given[0], f"must be in (0, 1] (the fraction kept), got {value}"
    for name in ("label_samples", "refit_samples", "batch_size", "latency_rounds", "num_samples"):
        if getattr(settings, name, 1) < 1:
            return name, f"must be >= 1, got {getattr(settings, name)}"
    if settings.latency_points < 2:
        return "latency_points", f"must be >= 2, got {settings.latency_points}"
    return None


@dataclass
class CompressionConfig:
    """All algorithms of one config file, plus the names of keys that could not be honoured."""

    quantization: QuantizationConfig | None = None
    movement_sparsity: MovementSparsityConfig | None = None
    structured_pruning: StructuredPruningConfig | None = None
    source: str = "<config>"
    warnings: list[str] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return self.quantization is None and self.movement_sparsity is None and self.structured_pruning is None


def load_compression_config(path: str | Path) -> CompressionConfig:
    """Read an NNCF JSON config file (comments and trailing commas allowed)."""
    import json5

    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not valid UTF-8 (byte {exc.start})", file=str(path)) from None
    if not text.strip():
        raise ConfigError("file is empty", file=str(path))
    try:
        obj = json5.loads(text)
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}", file=str(path)) from None
    return parse_compression_config(obj, source=str(path))


def default_compression_config() -> CompressionConfig:
    """The config QAT uses when the user gives none."""
    return parse_compression_config(copy.deepcopy(DEFAULT_QUANTIZATION), source="<default QAT config>")


def parse_compression_config(obj: Any, *, source: str = "<config>") -> CompressionConfig:
    """Validate an NNCF config (a dict, a list of dicts, or `{"compression": ...}`)."""
    if isinstance(obj, dict) and "compression" in obj and "algorithm" not in obj:
        obj = obj["compression"]  # a full NNCF config file with input_info etc.
    sections = [obj] if isinstance(obj, dict) else obj
    if not isinstance(sections, list) or not sections:
        raise ConfigError("expected an algorithm object or a non-empty list of them", file=source)
    config = CompressionConfig(source=source, raw=copy.deepcopy(sections))
    for i, section in enumerate(sections):
        where = f"[{i}]" if isinstance(obj, list) else ""
        reader = _Reader(section, source, where, config.warnings)
        algorithm = reader.get("algorithm", str, required=True)
        if algorithm == "quantization":
            if config.quantization is not None:
                raise ConfigError("quantization is given twice", file=source, key=reader.key("algorithm"))
            config.quantization = _parse_quantization(reader)
        elif algorithm == "movement_sparsity":
            if config.movement_sparsity is not None:
                raise ConfigError("movement_sparsity is given twice", file=source, key=reader.key("algorithm"))
            config.movement_sparsity = _parse_movement(reader)
        elif algorithm == "structured_pruning":
            if config.structured_pruning is not None:
                raise ConfigError("structured_pruning is given twice", file=source, key=reader.key("algorithm"))
            config.structured_pruning = _parse_structured(reader)
        else:
            raise ConfigError(
                f"unknown algorithm {algorithm!r}; qacompress supports 'quantization', 'movement_sparsity' "
                "and 'structured_pruning'",
                file=source,
                key=reader.key("algorithm"),
            )
        reader.warn_unread()
    if config.structured_pruning is not None and config.movement_sparsity is not None:
        raise ConfigError(
            "structured_pruning and movement_sparsity both choose what to prune; use one of them", file=source
        )
    return config


class _Reader:
    """Typed access to one config section that remembers which keys were read."""

    def __init__(self, section: Any, source: str, prefix: str, warnings: list[str]) -> None:
        if not isinstance(section, dict):
            raise ConfigError(f"expected an object, got {type(section).__name__}", file=source, key=prefix or None)
        self.section, self.source, self.prefix, self.warnings = section, source, prefix, warnings
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}".lstrip(".")

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.source, key=self.key(name))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        self.read.add(name)
        if name not in self.section:
            if required:
                raise self.fail(name, "is required")
            return default
        value = self.section[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass in Python, but `true` is not a number in a config.
        bad_bool = isinstance(value, bool) and bool not in kinds
        if bad_bool or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(name, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def number(self, name: str, default: float | None = None, *, required: bool = False) -> float | None:
        value = self.get(name, (int, float), default, required=required)
        if value is not None and not math.isfinite(value):
            raise self.fail(name, f"must be finite, got {value!r}")
        return value

    def sub(self, name: str) -> _Reader | None:
        value = self.get(name, dict)
        return None if value is None else _Reader(value, self.source, self.key(name), self.warnings)

    def ignore(self, name: str, why: str) -> None:
        self.read.add(name)
        if name in self.section:
            self.warnings.append(f"{self.source}: key '{self.key(name)}' is not honoured: {why}")

    def warn_unread(self) -> None:
        for name in self.section:
            if name not in self.read:
                self.warnings.append(f"{self.source}: key '{self.key(name)}' is unknown to qacompress and ignored")


def _scopes(reader: _Reader, name: str) -> list[str]:
    value = reader.get(name, (str, list), [])
    scopes = [value] if isinstance(value, str) else value
    for i, scope in enumerate(scopes):
        if not isinstance(scope, str):
            raise reader.fail(f"{name}[{i}]", f"expected a scope string, got {type(scope).__name__}")
        error = compile_check(scope)
        if error:
            raise reader.fail(f"{name}[{i}]", f"invalid regular expression {scope!r}: {error}")
    return list(scopes)


def _parse_quantizer_params(reader: _Reader | None) -> QuantizerParams:
    if reader is None:
        return QuantizerParams()
    mode = reader.get("mode", str)
    if mode not in (None, "symmetric", "asymmetric"):
        raise reader.fail("mode", f"expected 'symmetric' or 'asymmetric', got {mode!r}")
    bits = reader.get("bits", int, 8)
    if bits != 8:
        raise reader.fail("bits", f"only 8-bit quantization is supported, got {bits}")
    params = QuantizerParams(mode=mode, per_channel=reader.get("per_channel", bool), signed=reader.get("signed", bool))
    reader.ignore("logarithm_scale", "NNCF 3 has no log-scale quantizers")
    reader.ignore("target_scopes", "NNCF 3 quantizes every supported op outside ignored_scopes")
    reader.ignore("ignored_scopes", "per-group ignored scopes have no NNCF 3 equivalent; use the top-level key")
    reader.warn_unread()
    return params


def _parse_quantization(reader: _Reader) -> QuantizationConfig:
    preset = reader.get("preset", str, "mixed")
    if preset not in ("mixed", "performance"):
        raise reader.fail("preset", f"expected 'mixed' or 'performance', got {preset!r}")
    config = QuantizationConfig(preset=preset)
    overflow = reader.get("overflow_fix", str, config.overflow_fix)
    if overflow not in ("enable", "disable", "first_layer_only"):
        raise reader.fail("overflow_fix", f"expected 'enable', 'disable' or 'first_layer_only', got {overflow!r}")
    config.overflow_fix = overflow
    device = reader.get("target_device", str, "ANY")
    if device.upper() not in ("ANY", "CPU", "CPU_SPR", "GPU", "NPU"):
        raise reader.fail("target_device", f"unknown target device {device!r}")
    config.target_device = device.upper()
    config.weights = _parse_quantizer_params(reader.sub("weights"))
    config.activations = _parse_quantizer_params(reader.sub("activations"))
    config.ignored_scopes = _scopes(reader, "ignored_scopes")
    config.int8_embeddings = reader.get("int8_embeddings", bool, True)
    legacy = reader.get("ir_embeddings", str)  # its earlier spelling ("int8" | "float"), still read
    if legacy is not None:
        if legacy not in ("int8", "float"):
            raise reader.fail("ir_embeddings", f"expected 'int8' or 'float', got {legacy!r}")
        config.int8_embeddings = legacy == "int8"
        reader.warnings.append(
            f"{reader.source}: key '{reader.key('ir_embeddings')}' is now spelled "
            f"'int8_embeddings': {str(config.int8_embeddings).lower()}"
        )

    initializer = reader.sub("initializer")
    if initializer is not None:
        rng = initializer.sub("range")
        if rng is not None:
            samples = rng.get("num_init_samples", int, config.num_init_samples)
            if samples < 1:
                raise rng.fail("num_init_samples", f"must be >= 1, got {samples}")
            config.num_init_samples = samples
            kind = rng.get("type", str, config.range_type)
            if kind not in RANGE_TYPES:
                raise rng.fail("type", f"expected one of {', '.join(RANGE_TYPES)}; got {kind!r}")
            config.range_type = kind
            params = rng.sub("params")
            if params is not None:
                config.min_percentile = params.number("min_percentile", config.min_percentile)
                config.max_percentile = params.number("max_percentile", config.max_percentile)
                if not 0 <= config.min_percentile < config.max_percentile <= 100:
                    raise params.fail("min_percentile", "need 0 <= min_percentile < max_percentile <= 100")
                params.warn_unread()
            rng.warn_unread()
        initializer.ignore("batchnorm_adaptation", "transformers have no BatchNorm to adapt")
        initializer.ignore("precision", "mixed-precision (HAWQ) bit-width search has no NNCF 3 equivalent")
        initializer.warn_unread()

    reader.ignore(
        "scope_overrides",
        "NNCF 3 has no per-scope quantizer overrides; the matching layers use the global weights/activations settings",
    )
    reader.ignore("export_to_onnx_standard_ops", "export goes to OpenVINO IR, not ONNX")
    reader.ignore("quantize_inputs", "NNCF 3 places input quantizers itself")
    reader.ignore("quantize_outputs", "NNCF 3 does not quantize model outputs for transformers")
    reader.ignore("compression_lr_multiplier", "quantizer parameters train at the model's learning rate")
    return config


def _parse_structure(reader: _Reader) -> SparseStructure:
    mode = reader.get("mode", str, "fine")
    if mode not in SPARSE_MODES:
        raise reader.fail("mode", f"expected one of {', '.join(SPARSE_MODES)}; got {mode!r}")
    targets = _scopes(reader, "target_scopes")
    if not targets:
        raise reader.fail("target_scopes", "is required and must name at least one scope")
    structure = SparseStructure(mode=mode, target_scopes=targets)
    factors = reader.get("sparse_factors", list)
    axis = reader.get("axis", int)
    if mode == "block":
        if factors is None:
            raise reader.fail("sparse_factors", "block mode needs sparse_factors [rows, columns]")
        if len(factors) != 2 or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in factors):
            raise reader.fail("sparse_factors", f"expected two positive integers, got {factors!r}")
        structure.sparse_factors = (factors[0], factors[1])
    elif factors is not None and not (mode == "fine" and list(factors) == [1, 1]):
        raise reader.fail("sparse_factors", f"only block mode takes sparse_factors (mode is {mode!r})")
    if mode == "per_dim":
        if axis not in (0, 1):
            raise reader.fail("axis", f"per_dim mode needs axis 0 (rows) or 1 (columns), got {axis!r}")
        structure.axis = axis
    elif axis is not None:
        raise reader.fail("axis", f"only per_dim mode takes axis (mode is {mode!r})")
    reader.warn_unread()
    return structure


def _parse_movement(reader: _Reader) -> MovementSparsityConfig:
    params = reader.sub("params")
    if params is None:
        raise reader.fail("params", "is required (warmup_start_epoch, warmup_end_epoch, importance_regularization_factor)")
    start = params.get("warmup_start_epoch", int, required=True)
    end = params.get("warmup_end_epoch", int, required=True)
    if not 0 <= start < end:
        raise params.fail("warmup_end_epoch", f"need 0 <= warmup_start_epoch < warmup_end_epoch, got {start} and {end}")
    factor = params.number("importance_regularization_factor", required=True)
    if factor < 0:
        raise params.fail("importance_regularization_factor", f"must be >= 0, got {factor}")
    # NNCF's code read `init_importance_threshold`; its documentation says `initial_...`. Take both.
    init = params.number("init_importance_threshold")
    init = params.number("initial_importance_threshold", init)
    steps = params.get("steps_per_epoch", int)
    if steps is not None and steps < 1:
        raise params.fail("steps_per_epoch", f"must be >= 1, got {steps}")
    power = params.number("power", 3.0)
    if power <= 0:
        raise params.fail("power", f"must be > 0, got {power}")
    config = MovementSparsityConfig(
        warmup_start_epoch=start,
        warmup_end_epoch=end,
        importance_regularization_factor=float(factor),
        enable_structured_masking=params.get("enable_structured_masking", bool, True),
        init_importance_threshold=init,
        final_importance_threshold=float(params.number("final_importance_threshold", 0.0)),
        power=float(power),
        steps_per_epoch=steps,
    )
    params.ignore("compression_lr_multiplier", "importance scores train at the model's learning rate")
    params.warn_unread()
    entries = reader.get("sparse_structure_by_scopes", list, [])
    config.sparse_structure_by_scopes = [
        _parse_structure(_Reader(entry, reader.source, reader.key(f"sparse_structure_by_scopes[{i}]"), reader.warnings))
        for i, entry in enumerate(entries)
    ]
    config.ignored_scopes = _scopes(reader, "ignored_scopes")
    return config


#: Keys of a `structured_pruning` section: the `PruneConfig` settings that are not the training run's own
#: (batch size and seed come from its flags, sequence length from its data).
STRUCTURED_KEYS = ("target_macs", "target_latency", "remove_layers", "label_samples", "refit", "refit_samples",
                   "latency_points", "latency_seconds", "latency_rounds", "num_samples")  # fmt: skip


def _parse_structured(reader: _Reader) -> StructuredPruningConfig:
    criterion = reader.get("criterion", str, "fisher")
    if criterion != "fisher":
        raise reader.fail("criterion", f"only 'fisher' is supported, got {criterion!r}")
    defaults = StructuredPruningConfig.__dataclass_fields__
    values: dict[str, Any] = {}
    for name in STRUCTURED_KEYS:
        default = defaults[name].default
        if default is None or isinstance(default, float):
            values[name] = reader.number(name, default)
        else:
            values[name] = reader.get(name, type(default), default)
    problem = prune_problem(SimpleNamespace(**{**{n: f.default for n, f in defaults.items()}, **values}))
    if problem:
        raise reader.fail(*problem)
    return StructuredPruningConfig(criterion=criterion, **values)
