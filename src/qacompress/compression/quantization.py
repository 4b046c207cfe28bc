"""INT8 quantization-aware training: NNCF 3 fake quantizers inside a torch model.

`quantize_model(model, config, calibration)` inserts quantizers with `nncf.quantize` (ranges initialised
on calibration features, `ModelType.TRANSFORMER`), after which the model trains as usual: the
quantizers' scales are parameters and the weights learn to live on the INT8 grid. The quantizer
layout is described by a JSON-serialisable config (`nncf.torch.get_config`) so that checkpoints and
exported directories can rebuild it on a fresh model (`restore_quantization`) and reload the exact
values. `strip` turns the model into what `openvino.convert_model` maps to INT8 FakeQuantize ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from qacompress.compression.config import QuantizationConfig
from qacompress.compression.wordtable import hold_word_table
from qacompress.core.errors import ConfigError
from qacompress.core.extensions import ensure_quantizer_extension, import_nncf
from qacompress.model.scopes import matches, matches_any, op_scopes

logger = logging.getLogger(__name__)

@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class _StreamedSamples:
    """Calibration samples that hand freed heap memory back to the OS after each one.

    NNCF 3.4's range statistics are small (one reduced value per quantizer and sample), yet with its
    statistic hooks in the forward pass the resident memory of calibration grew by ~13 MB per sample on
    MiniLM-L6 at length 256, with live torch tensors and Python allocations constant: glibc keeps the
    freed activation buffers, fragmented by the hooks' small allocations, in its heap. `malloc_trim(0)`
    after each sample keeps the peak flat (measured: 3 samples 738 MB, 10 samples 737 MB; without it
    4 samples 773 MB, 24 samples 1036 MB).
    """

    def __init__(self, samples: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        trim = _malloc_trim()
        for sample in self.samples:
            yield sample
            if trim is not None:
                trim(0)


def _prepare_kernels(model: nn.Module) -> None:
    """Build NNCF's quantizer kernels for the model's device before its first quantizer runs."""
    param = next(model.parameters(), None)
    ensure_quantizer_extension("cuda" if param is not None and param.device.type == "cuda" else "cpu")


#: Where accelerate keeps a model's own forward while `--fp16`/`--bf16` training wraps it in autocast.
AUTOCAST_ORIGINAL_FORWARD = "_original_forward"


def is_quantized(model: nn.Module) -> bool:
    """True when NNCF hooks (quantizers) are attached to `model`.

    NNCF recognises its models by their forward; under mixed-precision training accelerate replaces
    that forward with an autocast wrapper and keeps NNCF's aside, where this looks too (checkpoints
    saved during an `--fp16`/`--bf16` run must still record the quantizer layout)."""
    from nncf.torch.function_hook.wrapper import ForwardWithHooks

    forward = model.__dict__.get(AUTOCAST_ORIGINAL_FORWARD, model.forward)
    return isinstance(forward, ForwardWithHooks)


def resolve_ignored_scope(
    model: nn.Module, patterns: Sequence[str], example_input: Mapping[str, torch.Tensor], source: str = "config"
) -> list[str]:
    """NNCF 3 node names selected by NNCF 2 `ignored_scopes` patterns; a pattern matching nothing is an error."""
    if not patterns:
        return []
    scopes = op_scopes(model, example_input)
    names: list[str] = []
    for pattern in patterns:
        hits = [node for node, old in scopes.items() if matches(node, [pattern]) or matches_any(old, [pattern])]
        if not hits:
            raise ConfigError(
                f"pattern {pattern!r} matches no operation of {type(model).__name__} "
                "(scopes are matched in NNCF 2 form, e.g. '.../BertSelfOutput[output]/__add___0', and NNCF 3 form)",
                file=source,
                key="quantization.ignored_scopes",
            )
        names.extend(h for h in hits if h not in names)
    return names


def _range_estimator(config: QuantizationConfig) -> Any:
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if config.range_type == "min_max":
        return RangeEstimatorParametersSet.MINMAX
    if config.range_type == "mean_min_max":
        return RangeEstimatorParametersSet.MEAN_MINMAX
    # NNCF 2 percentiles are in percent; NNCF 3 wants the outlier probability of each side.
    aggregator = AggregatorType.MEAN if config.range_type == "mean_percentile" else AggregatorType.MEDIAN
    return RangeEstimatorParameters(
        min=StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE,
            aggregator_type=aggregator,
            quantile_outlier_prob=config.min_percentile / 100.0,
        ),
        max=StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE,
            aggregator_type=aggregator,
            quantile_outlier_prob=(100.0 - config.max_percentile) / 100.0,
        ),
    )


def _quantizer_params(params: Any) -> Any:
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import QuantizationParameters

    if params.mode is None and params.per_channel is None and params.signed is None:
        return None
    mode = None if params.mode is None else QuantizationScheme(params.mode)
    return QuantizationParameters(mode=mode, per_channel=params.per_channel, signedness_to_force=params.signed)


def quantize_model(
    model: nn.Module,
    config: QuantizationConfig,
    calibration: Sequence[Mapping[str, torch.Tensor]],
    *,
    source: str = "config",
) -> nn.Module:
    """A copy of `model` with INT8 fake quantizers, ranges initialised on `calibration`.

    `calibration` holds model-input dicts (batch size 1 each); the first `num_init_samples` are used.
    Every process of a distributed run must pass the same samples so the ranges agree. SmoothQuant is
    off: it would fold activation scales into the weights and leave `model.safetensors` unusable
    without qacompress, and QAT learns what it would fix. Bias correction is off too, as in NNCF 2's
    QAT (range init only): training learns the biases, and NNCF 3's torch bias correction keeps every
    layer's inputs for every sample (17 MB per sample on MiniLM-L6 at length 256, about 8x that on
    BERT-base: 300 samples no longer fit in 24 GiB).
    """
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    if not calibration:
        raise ConfigError("quantization needs at least one calibration sample", file=source)
    samples = list(calibration[: config.num_init_samples])
    _prepare_kernels(model)
    example = samples[0]
    ignored = resolve_ignored_scope(model, config.ignored_scopes, example, source)
    advanced = AdvancedQuantizationParameters(
        overflow_fix=OverflowFix(config.overflow_fix),
        activations_quantization_params=_quantizer_params(config.activations),
        weights_quantization_params=_quantizer_params(config.weights),
        activations_range_estimator_params=_range_estimator(config),
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1),
        disable_bias_correction=True,
    )
    was_training = model.training
    model.eval()
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(_StreamedSamples(samples)),
            preset=nncf.QuantizationPreset(config.preset),
            target_device=nncf.TargetDevice[config.target_device],
            subset_size=len(samples),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
            advanced_parameters=advanced,
        )
    except (ValueError, nncf.ValidationError) as exc:
        raise _settings_error(config, exc, source) from exc
    quantized.train(was_training)
    if config.int8_embeddings and not quantizes_word_table(quantized):
        hold_word_table(quantized)
    return quantized


def quantizes_word_table(model: nn.Module) -> bool:
    """Whether NNCF put a quantizer on the word-embedding table (configs that do not ignore embeddings)."""
    from nncf.torch.function_hook.wrapper import get_hook_storage

    name = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
    table_input = "pre_hooks." + name.replace(".", "/") + "/embedding/"
    return any(hook.startswith(table_input) for hook, _ in get_hook_storage(model).named_hooks())


def _settings_error(config: QuantizationConfig, exc: Exception, source: str) -> Exception:
    """NNCF refuses some weights/activations settings (e.g. signed asymmetric activations on the 'ANY'
    device, asymmetric weights with the overflow fix); name the keys the user set, in one line."""
    keys = [f"quantization.{group}" for group in ("weights", "activations") if _quantizer_params(getattr(config, group))]
    if not keys:
        return exc  # not a settings problem: let the bug show
    reason = " ".join(str(exc).split())
    return ConfigError(
        f"NNCF 3 cannot quantize with these settings (preset {config.preset}, overflow_fix {config.overflow_fix}, "
        f"target_device {config.target_device}): {reason}",
        file=source,
        key=", ".join(keys),
    )


def quantizer_layout(model: nn.Module) -> str:
    """JSON description of the quantizers in `model` (not their values), safe to store and reload.

    NNCF's config holds enum members (e.g. `QuantizationScheme.SYMMETRIC`); they are written as
    `{"__enum__": "module.Class", "value": ...}` so that no pickle is needed to read them back.
    """
    from nncf.torch import get_config

    def encode(obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            cls = type(obj)
            return {"__enum__": f"{cls.__module__}.{cls.__qualname__}", "value": obj.value}
        raise TypeError(f"cannot serialise {type(obj).__name__} in a quantizer layout")

    return json.dumps(get_config(model), default=encode)


def restore_quantization(model: nn.Module, layout: str) -> nn.Module:
    """Attach the quantizers described by `layout` to a fresh `model`; load values with `load_state_dict`."""
    import_nncf()
    _prepare_kernels(model)
    from nncf.torch import load_from_config

    def decode(obj: dict[str, Any]) -> Any:
        if set(obj) == {"__enum__", "value"}:
            module_name, _, name = obj["__enum__"].rpartition(".")
            if not module_name.startswith("nncf."):
                raise ValueError(f"unexpected enum {obj['__enum__']} in a quantizer layout")
            return getattr(importlib.import_module(module_name), name)(obj["value"])
        return obj

    return load_from_config(model, json.loads(layout, object_hook=decode))


def strip(model: nn.Module, example_input: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose quantizers are plain fake-quantize ops, ready for OpenVINO conversion."""
    nncf = import_nncf()
    return nncf.strip(model, do_copy=True, example_input=dict(example_input))
