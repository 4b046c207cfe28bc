"""Saving and loading compressed torch QA models.

A compressed model is stored as transformers stores any model (`config.json`, `model.safetensors`,
loadable with `from_pretrained` on its own) plus `compression_state.pt`: the quantizer layout, and the
tensors of every compression module inside the model (NNCF's quantizer hooks, whose Q/K/V scales are
shared tensors that safetensors refuses; movement pruning's importance scores), plus whatever plain
state an algorithm adds (the movement schedule's position). Physically pruned models record their
per-layer shapes in `config.json` (`qacompress_pruning`), so that `load_qa_model` can rebuild the
smaller matrices before loading the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qacompress.compression.quantization import is_quantized, quantizer_layout, restore_quantization
from qacompress.compression.wordtable import freeze_word_table, holds_word_table
from qacompress.core.errors import ModelError
from qacompress.core.ondisk import (
    BIAS_SCORE,
    MOVEMENT_SCHEDULE,
    NNCF_HOOKS,
    QUANTIZER_LAYOUT,
    STATE_FILE,
    WEIGHT_SCORE,
    WORD_TABLE_HELD,
)
from qacompress.model.loading import load_plain_qa_model

FORMAT_VERSION = 1


def is_compression_key(key: str) -> bool:
    """Whether a state-dict entry belongs to compression (NNCF's quantizer hooks, movement scores)
    rather than to the model that `from_pretrained` builds."""
    return key.startswith(NNCF_HOOKS) or key.endswith((f".{WEIGHT_SCORE}", f".{BIAS_SCORE}"))


def split_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain model weights, compression tensors) of `state_dict` (default: the model's own): the first
    is what `from_pretrained` can load."""
    plain, compression = {}, {}
    for key, value in (model.state_dict() if state_dict is None else state_dict).items():
        (compression if is_compression_key(key) else plain)[key] = value
    return plain, compression


def save_compressed(
    model: nn.Module,
    directory: str | Path,
    *,
    extra_state: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write `model` (plain weights via `save_pretrained`, plus compression state if any) into `directory`.

    `state_dict` replaces the model's own, for weights gathered elsewhere: under FSDP or DeepSpeed ZeRO-3
    each process holds shards, and only the accelerator's gathered state dict has the whole tensors."""
    directory = Path(directory)
    plain, compression = split_state_dict(model, state_dict)
    # Trainer reloads model.safetensors non-strictly on resume; naming the compression keys here keeps
    # it from warning about them (they come from compression_state.pt).
    model._keys_to_ignore_on_save = list(compression) or None
    model.save_pretrained(directory, state_dict=plain)
    state: dict[str, Any] = {"format_version": FORMAT_VERSION, "tensors": compression}
    if is_quantized(model):
        state[QUANTIZER_LAYOUT] = quantizer_layout(model)
        state[WORD_TABLE_HELD] = holds_word_table(model)
    state.update(extra_state or {})
    if compression or extra_state:
        torch.save(state, directory / STATE_FILE)


def load_compression_state(directory: str | Path) -> dict[str, Any] | None:
    """The compression state saved beside a model, or None for a plain model."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(f"{path}: unreadable compression state ({type(exc).__name__}: {exc})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: unsupported compression state format {state.get('format_version')!r}")
    return state


def apply_compression_state(model: nn.Module, state: dict[str, Any] | None) -> nn.Module:
    """Re-attach the quantizers described by `state` and load every compression tensor.

    Modules other than quantizers (movement scores) must already be attached. A held word table
    (`qacompress.compression.wordtable`) is frozen again, so that a resumed run's optimizer sees the
    parameters it saved.
    """
    if not state:
        return model
    if QUANTIZER_LAYOUT in state:
        model = restore_quantization(model, state[QUANTIZER_LAYOUT])
    load_compression_tensors(model, state)
    if state.get(WORD_TABLE_HELD):
        freeze_word_table(model)
    return model


def load_compression_tensors(model: nn.Module, state: dict[str, Any]) -> None:
    """Load the compression tensors of `state` into a model that already carries the same modules
    (e.g. the best checkpoint's quantizer scales into the model that trained them)."""
    missing, unexpected = model.load_state_dict(state.get("tensors", {}), strict=False)
    missing = [k for k in missing if is_compression_key(k)]
    if missing or unexpected:
        raise ModelError(
            f"compression state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def load_qa_model(
    name_or_path: str,
    *,
    config: Any = None,
    cache_dir: str | None = None,
    revision: str = "main",
    restore_compression: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """A torch model for extractive QA, with its compression (quantizers, pruned shapes) restored.

    A plain encoder (like all-MiniLM-L6-v2) gets a freshly initialised QA head.
    """
    model = load_plain_qa_model(name_or_path, config=config, cache_dir=cache_dir, revision=revision, **kwargs)
    if restore_compression and Path(name_or_path).is_dir():
        state = load_compression_state(name_or_path)
        if state and MOVEMENT_SCHEDULE in state:
            raise ModelError(
                f"{name_or_path} is a checkpoint from a JPQD pruning warm-up (masks still in training): "
                "re-run the training command to resume it, or use the run's output_dir once it has finished"
            )
        model = apply_compression_state(model, state)
    return model
