"""Physical removal of pruned attention heads and FFN neurons.

Masking leaves the matrices their original size, so a masked model is no faster. Here the rows of
Q/K/V and the columns of the attention output projection that belong to removed heads, and the rows
of the first FFN linear and the columns of the second that belong to removed neurons, are cut out:
the model computes the same function with smaller matrices (heads per layer may then differ). The
per-layer sizes are recorded in `config.json` under `qacompress_pruning`, so the saved model loads
again (`qacompress.compression.checkpoint.load_qa_model`) and converts to an OpenVINO IR that is really smaller.

A layer whose heads (or neurons) are all removed keeps one unit whose output projection is zero:
the same function as an empty block, without zero-sized tensors that exporters reject. Whole layers
can go too (`remove_layers_`): what a layer costs beyond its units (LayerNorms, residual adds,
attention's reshapes) is then saved as well, and the saved config has fewer layers, which any loader
of the architecture builds as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from qacompress.core.ondisk import PRUNING_CONFIG_ATTR, SOURCE_LAYERS
from qacompress.model.architecture import EncoderLayout, require_layout

#: Attributes that hold a self-attention module's head count, per family.
_HEAD_COUNT_ATTRS = ("num_attention_heads", "n_heads")


@dataclass
class LayerKeep:
    """Indices (in the current model) of the heads and FFN neurons of one layer to keep."""

    heads: list[int] = field(default_factory=list)
    neurons: list[int] = field(default_factory=list)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int, zero: bool) -> nn.Linear:
    """A new Linear with only `index` rows (dim 0) or columns (dim 1); `zero` clears what is kept."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = None if linear.bias is None else linear.bias.detach()
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, index).clone()
    elif bias is not None:
        bias = bias.clone()
    if zero:
        weight.zero_()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    return new


def _head_index(heads: Sequence[int], head_size: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([h * head_size + i for h in heads for i in range(head_size)], dtype=torch.long, device=device)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def current_sizes(model: nn.Module, layout: EncoderLayout | None = None) -> list[dict[str, int]]:
    """Heads and FFN neurons per layer, read off the weight shapes."""
    layout = layout or require_layout(model)
    return [
        {
            "heads": model.get_submodule(layer.query).out_features // layout.head_size,
            "intermediate_size": model.get_submodule(layer.ffn_in).out_features,
        }
        for layer in layout.layers
    ]


def kept_sizes(model: nn.Module, layout: EncoderLayout | None = None) -> list[dict[str, int]]:
    """Heads and FFN neurons per layer that compute something: `current_sizes`, with 0 where a sublayer
    was emptied and only its zeroed stand-in unit is left (output projection all zeros, see `prune_`)."""
    layout = layout or require_layout(model)
    sizes = current_sizes(model, layout)
    for size, layer in zip(sizes, layout.layers):
        if not model.get_submodule(layer.attention_output).weight.detach().any():
            size["heads"] = 0
        if not model.get_submodule(layer.ffn_out).weight.detach().any():
            size["intermediate_size"] = 0
    return sizes


def prune_(model: nn.Module, keep: Sequence[LayerKeep]) -> dict[str, torch.Tensor]:
    """Cut the heads and neurons not listed in `keep` out of `model`, in place.

    Returns parameter masks (`{"<module>.weight": mask}`) that keep the zeroed stand-in unit of an
    emptied layer at zero if the model is trained further.
    """
    frozen: dict[str, torch.Tensor] = {}
    layout = require_layout(model)
    if len(keep) != len(layout.layers):
        raise ValueError(f"expected {len(layout.layers)} LayerKeep entries, got {len(keep)}")
    for layer, spec in zip(layout.layers, keep):
        device = model.get_submodule(layer.query).weight.device
        heads = sorted(set(spec.heads)) or [0]
        head_idx = _head_index(heads, layout.head_size, device)
        empty = not spec.heads
        for role in ("query", "key", "value"):
            name = getattr(layer, role)
            _set(model, name, _slice_linear(model.get_submodule(name), head_idx, 0, zero=False))
        out = layer.attention_output
        _set(model, out, _slice_linear(model.get_submodule(out), head_idx, 1, zero=empty))
        if empty:
            frozen[f"{out}.weight"] = torch.zeros_like(model.get_submodule(out).weight)
        holder = model.get_submodule(layer.heads_module)
        for attr in _HEAD_COUNT_ATTRS:
            if hasattr(holder, attr):
                setattr(holder, attr, len(heads))
        if hasattr(holder, "all_head_size"):
            holder.all_head_size = len(heads) * layout.head_size

        neurons = sorted(set(spec.neurons)) or [0]
        neuron_idx = torch.tensor(neurons, dtype=torch.long, device=device)
        _set(model, layer.ffn_in, _slice_linear(model.get_submodule(layer.ffn_in), neuron_idx, 0, zero=False))
        _set(
            model,
            layer.ffn_out,
            _slice_linear(model.get_submodule(layer.ffn_out), neuron_idx, 1, zero=not spec.neurons),
        )
        if not spec.neurons:
            frozen[f"{layer.ffn_out}.weight"] = torch.zeros_like(model.get_submodule(layer.ffn_out).weight)
    record_pruning(model)
    return frozen


def source_layers(model: nn.Module) -> list[int]:
    """The index of each encoder layer of `model` in the architecture it was cut from (removed layers
    leave gaps), as recorded in its config."""
    spec = getattr(model.config, PRUNING_CONFIG_ATTR, None) or {}
    return list(spec.get(SOURCE_LAYERS) or range(len(require_layout(model).layers)))


def remove_layers_(model: nn.Module, indices: Sequence[int]) -> None:
    """Delete the encoder layers at `indices` (of the current model) in place; at least one stays. The
    config's layer count and the recorded sizes and source layers follow, so the model saves and loads."""
    if not indices:
        return
    layout = require_layout(model)
    count = len(layout.layers)
    gone = set(indices)
    if not gone <= set(range(count)) or len(gone) >= count:
        raise ValueError(f"cannot remove layers {sorted(gone)} of a {count}-layer encoder (one must stay)")
    sources = source_layers(model)
    list_name = layout.layers[0].module.rpartition(".")[0]
    old = model.get_submodule(list_name)
    kept = [i for i in range(count) if i not in gone]
    _set(model, list_name, nn.ModuleList([old[i] for i in kept]))
    model.config.num_hidden_layers = len(kept)  # DistilBERT's `n_layers` through its attribute map
    record_pruning(model, [sources[i] for i in kept])


def record_pruning(model: nn.Module, sources: Sequence[int] | None = None) -> None:
    """Store the per-layer sizes in `model.config` so that the saved model can be rebuilt, and where
    layers were removed, which layers of the original architecture are left (`sources`)."""
    earlier = getattr(model.config, PRUNING_CONFIG_ATTR, None) or {}
    sources = earlier.get(SOURCE_LAYERS) if sources is None else list(sources)
    spec: dict = {"layers": current_sizes(model)}
    if sources is not None:  # kept once recorded: [0, 1, 2] of a 4-layer model says its last layer went
        spec[SOURCE_LAYERS] = sources
    setattr(model.config, PRUNING_CONFIG_ATTR, spec)


def shrink_from_config(model: nn.Module, spec: dict) -> None:
    """Give a freshly built full-size model the layer sizes recorded in `spec` (weights loaded after)."""
    layers = spec["layers"]
    prune_(
        model,
        [LayerKeep(heads=list(range(s["heads"])), neurons=list(range(s["intermediate_size"]))) for s in layers],
    )


def linear_weight_count(model: nn.Module) -> int:
    """Number of weights in the encoder's prunable linears (the denominator of "% removed")."""
    layout = require_layout(model)
    return sum(model.get_submodule(name).weight.numel() for name in layout.roles())
