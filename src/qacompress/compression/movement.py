"""Movement pruning with learned importance scores (Sanh et al. 2020), by blocks, rows or columns
(Lagunas et al. 2021), configured and scheduled as NNCF 2's `movement_sparsity` was.

Each targeted `nn.Linear` becomes a `MaskedLinear` with an importance score per unit (a weight, a block
of `sparse_factors`, a row or a column). Its forward pass uses `W * mask`, with `mask = score > threshold`
and a straight-through gradient, so a score grows while its weights move away from zero and shrinks while
they move towards it. A regulariser on `sigmoid(score)` pushes scores down; both it and the threshold
rise on a concave polynomial schedule through the warm-up epochs. At the end of warm-up
`resolve_structure` turns the masks into whole attention heads and FFN neurons: a head survives if any
of its Q/K/V rows or output-projection columns survived, a neuron if its FFN row or column did, and the
weights inside surviving units are restored ("rewound", as NNCF did), ready for physical removal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qacompress.compression.config import MovementSparsityConfig, SparseStructure
from qacompress.core.errors import ConfigError
from qacompress.core.ondisk import MOVEMENT_ATTR
from qacompress.model.architecture import EncoderLayout, find_layout, require_layout
from qacompress.model.scopes import matches, matches_any, module_scopes
from qacompress.model.surgery import LayerKeep, prune_

#: NNCF weighted each layer's regulariser by this factor; kept so that configs mean the same.
LAYERWISE_LAMBDA = 0.5


@dataclass
class Target:
    """One pruned linear: where its scores live and how a score expands to weights."""

    module_name: str
    key: str  # the module name without dots (the key of `MovementPruner.scores`)
    mode: str
    factors: tuple[int, int]  # weights per score along (rows, columns)
    prune_bias: bool


def polynomial_scale(progress: float, power: float) -> float:
    """Concave warm-up curve from 0 to 1: fast at first, flat at the end."""
    progress = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - progress) ** power


class _StraightThrough(torch.autograd.Function):
    """Binary mask forward, identity gradient backward."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:  # type: ignore[override]
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def _expand(small: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """One score per unit -> one value per weight (a unit is `factors` rows x columns)."""
    r, c = factors
    if r > 1:
        small = small.repeat_interleave(r, dim=0)
    if c > 1 and small.dim() == 2:
        small = small.repeat_interleave(c, dim=1)
    return small


class MaskedLinear(nn.Linear):
    """An `nn.Linear` that computes with `W * mask` (and `b * bias_mask`), `mask = score > threshold`
    with a straight-through gradient; one score per unit of `factors` weights.

    A real module (after nn_pruning's `MaskedLinear`): it owns its scores, so `copy.deepcopy`,
    DataParallel/DDP replicas (each on its own device) and `print(model)` see it. `from_linear` and
    `to_linear` swap it in and out around the same weight and bias parameters, so the optimizer and
    the weights are untouched. The threshold is set by the `MovementPruner` at every step.
    """

    def __init__(self, in_features: int, out_features: int, factors: tuple[int, int], prune_bias: bool,
                 bias: bool = True, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.factors = tuple(factors)
        self.threshold = -math.inf
        self._new_scores(prune_bias, device)

    def _new_scores(self, prune_bias: bool, device) -> None:
        """Zero scores on `device`, float32 whatever the weights' dtype: they accumulate small updates."""
        rows, cols = self.out_features // self.factors[0], self.in_features // self.factors[1]
        self.weight_score = nn.Parameter(torch.zeros(rows, cols, device=device))
        self.bias_score = nn.Parameter(torch.zeros(rows, device=device)) if prune_bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, factors: tuple[int, int], prune_bias: bool) -> MaskedLinear:
        """A masked twin of `linear` around its own weight and bias parameters (scores start at 0)."""
        masked = cls(linear.in_features, linear.out_features, factors, prune_bias, bias=linear.bias is not None,
                     device="meta")  # fmt: skip
        masked.weight, masked.bias = linear.weight, linear.bias
        masked._new_scores(prune_bias, linear.weight.device)
        return masked

    def to_linear(self) -> nn.Linear:
        """The plain `nn.Linear` around the same weight and bias (scores dropped, no mask applied)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def masks(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias masks at the current threshold (straight-through gradient to the scores)."""
        weight = _expand(_StraightThrough.apply(self.weight_score, self.threshold), self.factors)
        bias = None
        if self.bias_score is not None:
            bias = _expand(_StraightThrough.apply(self.bias_score, self.threshold), self.factors)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_mask, bias_mask = self.masks()
        bias = self.bias if bias_mask is None or self.bias is None else self.bias * bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight * weight_mask.to(self.weight.dtype), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factors={self.factors}, prune_bias={self.bias_score is not None}"


class MovementPruner(nn.Module):
    """Schedule, regulariser and structure resolution for the `MaskedLinear` targets of one model.

    Registered in the model (`qacompress_movement`) so that the trainer finds it; it holds no
    parameters itself: each target's scores live in its `MaskedLinear`.
    """

    def __init__(self, config: MovementSparsityConfig, targets: list[Target], linears: dict[str, MaskedLinear]):
        super().__init__()
        self.config = config
        self.targets = {t.module_name: t for t in targets}
        self.linears = dict(linears)  # a plain dict: the modules belong to the model, not to the pruner
        self._threshold = -math.inf
        self.regularization_factor = 0.0
        self.init_threshold = config.init_importance_threshold
        self.steps_per_epoch = config.steps_per_epoch
        self.step = 0

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = value
        for linear in self.linears.values():
            linear.threshold = value

    @property
    def scores(self) -> dict[str, nn.Parameter]:
        """Weight scores by target key."""
        return {t.key: self.linears[name].weight_score for name, t in self.targets.items()}

    @property
    def bias_scores(self) -> dict[str, nn.Parameter]:
        """Bias scores by target key, for targets that prune biases."""
        return {t.key: self.linears[name].bias_score for name, t in self.targets.items() if t.prune_bias}

    # ---- masks -------------------------------------------------------------------------------------
    def masks(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias masks of one linear at the current threshold (straight-through gradient)."""
        return self.linears[module_name].masks()

    def regularization(self) -> torch.Tensor:
        """Mean over layers of NNCF's per-layer L1 of sigmoid(scores), times the scheduled factor."""
        device = next(iter(self.linears.values())).weight_score.device
        if self.regularization_factor == 0.0:
            return torch.zeros((), device=device)
        losses = []
        for t in self.targets.values():
            linear = self.linears[t.module_name]
            loss = torch.sigmoid(linear.weight_score).mean() * math.prod(t.factors)
            if t.prune_bias:
                loss = loss + torch.sigmoid(linear.bias_score).mean() * t.factors[0]
            losses.append(loss * LAYERWISE_LAMBDA)
        return torch.stack(losses).mean() * self.regularization_factor

    # ---- schedule ----------------------------------------------------------------------------------
    def warmup_bounds(self) -> tuple[int, int]:
        spe = self.steps_per_epoch or 0
        return int(self.config.warmup_start_epoch * spe), int(self.config.warmup_end_epoch * spe)

    def set_step(self, step: int) -> None:
        """Move the threshold and regularisation factor to optimizer step `step`."""
        if self.steps_per_epoch is None:
            raise RuntimeError("steps_per_epoch must be set before training")
        self.step = step
        start, end = self.warmup_bounds()
        if step < start:
            self.threshold, self.regularization_factor = -math.inf, 0.0
            return
        if self.init_threshold is None:
            self.init_threshold = self._adaptive_init_threshold()
        scale = 1.0 if step >= end else polynomial_scale((step - start) / max(end - start, 1), self.config.power)
        final = self.config.final_importance_threshold
        self.threshold = self.init_threshold + scale * (final - self.init_threshold)
        # After warm-up the masks are final and NNCF dropped the regulariser; so do we.
        self.regularization_factor = 0.0 if step >= end else scale * self.config.importance_regularization_factor

    @torch.no_grad()
    def _adaptive_init_threshold(self, target_sparsity: float = 0.001) -> float:
        """The score below which ~0.1% of weights fall, so warm-up starts almost dense (NNCF's rule)."""
        values = []
        for t in self.targets.values():
            linear = self.linears[t.module_name]
            values.append(_expand(linear.weight_score.detach(), t.factors).flatten().cpu())
            if t.prune_bias:
                values.append(_expand(linear.bias_score.detach(), t.factors).flatten().cpu())
        flat = torch.cat(values)
        k = min(flat.numel(), int(flat.numel() * target_sparsity) + 1)
        return float(flat.kthvalue(k).values)

    # ---- statistics --------------------------------------------------------------------------------
    @torch.no_grad()
    def sparsity(self, model: nn.Module) -> dict[str, float]:
        """Share of masked weights, per layer role (query ... ffn_out) and over all targets."""
        layout = find_layout(model)
        roles = layout.roles() if layout else {}
        zeros: dict[str, float] = {}
        totals: dict[str, float] = {}
        for name in self.targets:
            weight_mask, _ = self.masks(name)
            role = roles[name][1] if name in roles else "other"
            for key in (role, "all"):
                zeros[key] = zeros.get(key, 0.0) + float((weight_mask == 0).sum())
                totals[key] = totals.get(key, 0.0) + weight_mask.numel()
        return {k: zeros[k] / totals[k] for k in totals}

    # ---- state -------------------------------------------------------------------------------------
    def schedule_state(self) -> dict:
        return {"step": self.step, "init_threshold": self.init_threshold, "steps_per_epoch": self.steps_per_epoch}

    def load_schedule_state(self, state: dict) -> None:
        self.init_threshold = state["init_threshold"]
        self.steps_per_epoch = state["steps_per_epoch"]
        self.step = state["step"]

    # ---- structure ---------------------------------------------------------------------------------
    @torch.no_grad()
    def convert(self, model: nn.Module, *, structured: bool = True) -> tuple[list[LayerKeep], dict[str, torch.Tensor]]:
        """End movement pruning on `model`: masks at the final threshold become whole heads and neurons
        (`resolve_structure`), the scores leave the model, and with `structured` the removed units are
        cut out (`qacompress.model.surgery.prune_`). Returns what each layer kept and the parameter masks
        to keep at zero if training goes on (`qacompress.training.pruned.freeze_zeros`): the fine-grained masks without
        `structured`, else those of linears outside heads/FFN and of emptied layers' stand-in units."""
        self.threshold, self.regularization_factor = self.config.final_importance_threshold, 0.0
        keep, frozen = self.resolve_structure(model, require_layout(model))
        if not structured:
            frozen = self.parameter_masks(list(self.targets))
        detach_movement_pruning(model)
        if structured:
            frozen.update(prune_(model, keep))
        return keep, frozen

    @torch.no_grad()
    def resolve_structure(
        self, model: nn.Module, layout: EncoderLayout
    ) -> tuple[list[LayerKeep], dict[str, torch.Tensor]]:
        """Heads and neurons to keep per layer, and the parameter masks left for linears outside heads/FFN.

        A unit survives if any of its weights survived in any linear of its group (logical OR, as in
        NNCF's structured masking); surviving units are kept whole.
        """
        keep = []
        for layer in layout.layers:
            heads = self._alive_units(layer.query, 0, layout.head_size, model)
            for name, dim in ((layer.key, 0), (layer.value, 0), (layer.attention_output, 1)):
                heads |= self._alive_units(name, dim, layout.head_size, model)
            neurons = self._alive_units(layer.ffn_in, 0, 1, model) | self._alive_units(layer.ffn_out, 1, 1, model)
            keep.append(
                LayerKeep(heads=heads.nonzero().flatten().tolist(), neurons=neurons.nonzero().flatten().tolist())
            )
        in_layout = set(layout.roles())
        return keep, self.parameter_masks([name for name in self.targets if name not in in_layout])

    @torch.no_grad()
    def parameter_masks(self, module_names: list[str]) -> dict[str, torch.Tensor]:
        """`{"<module>.weight": mask, "<module>.bias": mask}` of the given targets at the current threshold."""
        masks = {}
        for name in module_names:
            weight_mask, bias_mask = self.masks(name)
            masks[f"{name}.weight"] = weight_mask.detach().clone()
            if bias_mask is not None:
                masks[f"{name}.bias"] = bias_mask.detach().clone()
        return masks

    def _alive_units(self, module_name: str, dim: int, unit: int, model: nn.Module) -> torch.Tensor:
        """Bool per unit (rows if dim 0, columns if dim 1, grouped by `unit`) that has a surviving weight."""
        size = model.get_submodule(module_name).weight.shape[dim]
        if module_name not in self.targets:
            return torch.ones(size // unit, dtype=torch.bool)
        weight_mask, bias_mask = self.masks(module_name)
        alive = weight_mask.amax(dim=1 - dim) > 0
        if bias_mask is not None and dim == 0:
            alive |= bias_mask > 0
        return alive.view(size // unit, unit).any(dim=1).cpu()


def _structure_for(scopes: tuple[str, ...], config: MovementSparsityConfig) -> SparseStructure | None:
    for structure in config.sparse_structure_by_scopes:
        if any(matches(s, structure.target_scopes) for s in scopes):
            return structure
    return None


def attach_movement_pruning(model: nn.Module, config: MovementSparsityConfig, source: str = "config") -> MovementPruner:
    """Swap every targeted linear of `model` for a `MaskedLinear` (scores at 0); returns the pruner.

    Targets are the `nn.Linear` layers not matched by `ignored_scopes`; each takes the first
    `sparse_structure_by_scopes` entry whose `target_scopes` match it, else fine-grained scores (NNCF's
    rule). Patterns that match nothing, and blocks that do not divide a weight, are config errors.
    """
    scopes = module_scopes(model)
    all_scopes = [s for names in scopes.values() for s in names]
    for key, patterns in [("movement_sparsity.ignored_scopes", config.ignored_scopes)] + [
        (f"movement_sparsity.sparse_structure_by_scopes[{i}].target_scopes", s.target_scopes)
        for i, s in enumerate(config.sparse_structure_by_scopes)
    ]:
        for pattern in patterns:
            if not any(matches(s, [pattern]) for s in all_scopes):
                raise ConfigError(
                    f"scope {pattern!r} matches no module of {type(model).__name__} "
                    f"(module scopes look like {scopes[next(iter(scopes))][0]!r}/...; see the README)",
                    file=source,
                    key=key,
                )
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or matches_any(scopes[name], config.ignored_scopes):
            continue
        structure = _structure_for(scopes[name], config)
        rows, cols = module.weight.shape
        if structure is None or structure.mode == "fine":
            mode, factors = "fine", (1, 1)
        elif structure.mode == "block":
            mode, factors = "block", structure.sparse_factors
            if rows % factors[0] or cols % factors[1]:
                i = config.sparse_structure_by_scopes.index(structure)
                raise ConfigError(
                    f"block {list(factors)} does not divide the {rows}x{cols} weight of {name}",
                    file=source,
                    key=f"movement_sparsity.sparse_structure_by_scopes[{i}].sparse_factors",
                )
        else:
            mode, factors = "per_dim", ((1, cols) if structure.axis == 0 else (rows, 1))
        prune_bias = module.bias is not None and factors[0] < rows  # a bias entry per row group
        targets.append(Target(name, name.replace(".", "__"), mode, tuple(factors), prune_bias))
    if not targets:
        raise ConfigError("no nn.Linear layer is left to prune after ignored_scopes", file=source, key="movement_sparsity")
    linears = {}
    for t in targets:
        masked = MaskedLinear.from_linear(model.get_submodule(t.module_name), t.factors, t.prune_bias)
        model.set_submodule(t.module_name, masked)
        linears[t.module_name] = masked
    pruner = MovementPruner(config, targets, linears)
    model.add_module(MOVEMENT_ATTR, pruner)  # so that the trainer finds it (it holds no tensors)
    return pruner


def detach_movement_pruning(model: nn.Module) -> None:
    """Swap every `MaskedLinear` back to a plain `nn.Linear` (same weights, scores dropped)."""
    pruner = getattr(model, MOVEMENT_ATTR, None)
    if pruner is None:
        return
    for name, linear in pruner.linears.items():
        model.set_submodule(name, linear.to_linear())
    delattr(model, MOVEMENT_ATTR)
