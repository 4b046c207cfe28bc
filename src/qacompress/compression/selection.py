"""Which heads and neurons to keep: the most important set that fits a cost budget.

Both constraints qacompress offers are linear in the number of kept units: a head costs the same
in every layer, and so does a neuron (MACs exactly; OpenVINO latency as measured in
`qacompress.compression.latency`, which fits a per-head and a per-neuron slope). Kwon et al. 2022 observed the
same and solved the search exactly: for every total number of heads k, the remaining budget buys the
n most important neurons; the pair (k, n) with the largest kept importance wins. Heads and neurons
are ranked globally (across layers), so layers that matter keep more.

Where a layer costs something beyond its units (`UnitCosts.layer`, measured on the OpenVINO CPU plugin:
a tenth of MiniLM's INT8 latency on a 2-core EPYC by the latency table, more in a real cut), removing
whole layers frees budget for units elsewhere. With `remove_layers`, layers are removed greedily, one
at a time, as long as the search above keeps more importance with the layer gone (its units lost, its
cost freed) than with it kept, as CoFi (Xia et al. 2022) prunes whole sublayers beside heads and
neurons under one budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from qacompress.compression.fisher import Importance
from qacompress.core.errors import BudgetError
from qacompress.model.surgery import LayerKeep


@dataclass(frozen=True)
class UnitCosts:
    """Cost of one head and of one neuron, and of what does not depend on them (embeddings, ...).
    `layer` is the part of `fixed` that one encoder layer costs beyond its units (LayerNorms, residual
    adds, attention's reshapes): saved only where the whole layer is removed."""

    head: float
    neuron: float
    fixed: float = 0.0
    layer: float = 0.0

    def total(self, heads: int, neurons: int, removed_layers: int = 0) -> float:
        return self.fixed - removed_layers * self.layer + heads * self.head + neurons * self.neuron


def head_macs(hidden_size: int, head_size: int, seq_length: int) -> int:
    """Multiply-accumulates of one head on one sequence: Q, K and V projections and its share of the
    output projection (4 L D d), attention scores and context (2 L^2 d)."""
    return 4 * seq_length * hidden_size * head_size + 2 * seq_length * seq_length * head_size


def neuron_macs(hidden_size: int, seq_length: int) -> int:
    """Multiply-accumulates of one FFN neuron on one sequence: a row of the first linear, a column of
    the second (2 L D)."""
    return 2 * seq_length * hidden_size


def mac_costs(hidden_size: int, head_size: int, seq_length: int) -> UnitCosts:
    return UnitCosts(head=head_macs(hidden_size, head_size, seq_length), neuron=neuron_macs(hidden_size, seq_length))


def encoder_macs(sizes: list[dict[str, int]], hidden_size: int, head_size: int, seq_length: int) -> int:
    """Multiply-accumulates of the encoder's matrix products for one sequence of `seq_length` tokens."""
    costs = mac_costs(hidden_size, head_size, seq_length)
    return int(sum(costs.total(s["heads"], s["intermediate_size"]) for s in sizes))


@dataclass
class Selection:
    """The chosen structure and what it costs and keeps; `removed`: layers removed whole (their `keep`
    entries are empty)."""

    keep: list[LayerKeep]
    cost: float
    budget: float
    full_cost: float
    importance_kept: float
    importance_total: float
    removed: list[int] = field(default_factory=list)

    @property
    def heads(self) -> int:
        return sum(len(k.heads) for k in self.keep)

    @property
    def neurons(self) -> int:
        return sum(len(k.neurons) for k in self.keep)


def _ranked(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layer, unit) indices of existing units (score > -inf), most important first, and cumulative
    importance with a leading 0."""
    flat = scores.double().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    order = order[torch.isfinite(flat[order])]
    cumulative = torch.cat([flat.new_zeros(1), torch.cumsum(flat[order], 0)])
    width = scores.shape[1]
    return order // width, order % width, cumulative


def smallest_fraction(costs: UnitCosts, heads: int, neurons: int, removable_layers: int = 0) -> float:
    """The least budget, as a fraction of keeping all `heads` and `neurons`, that `select_structure`
    accepts: the share of the fixed cost left once `removable_layers` layers are removed, rounded up to
    three decimals (and up once more where float arithmetic would put that budget a hair below it)."""
    full = costs.total(heads, neurons)
    floor = costs.total(0, 0, removable_layers)
    smallest = math.ceil(floor / full * 1000) / 1000
    while smallest < 1 and smallest * full < floor:
        smallest = round(smallest + 0.001, 3)
    return min(smallest, 1.0)


@dataclass
class _Choice:
    """The best (k heads, n neurons) with some layers removed: kept importance and the rankings."""

    score: float
    heads: int
    neurons: int
    removed: frozenset[int]
    ranked_heads: tuple[torch.Tensor, torch.Tensor]
    ranked_neurons: tuple[torch.Tensor, torch.Tensor]


def _best_counts(importance: Importance, costs: UnitCosts, budget: float, removed: frozenset[int]) -> _Choice | None:
    """Kwon et al.'s search over the head count k, the rest of the budget buying the n best neurons, with
    the units of `removed` layers gone and their per-layer cost freed; None where nothing fits."""
    heads, neurons = importance.heads, importance.neurons
    if removed:
        gone = torch.tensor(sorted(removed))
        heads, neurons = heads.clone(), neurons.clone()
        heads[gone], neurons[gone] = float("-inf"), float("-inf")
    head_layer, head_unit, head_cum = _ranked(heads)
    neuron_layer, neuron_unit, neuron_cum = _ranked(neurons)
    best: tuple[float, int, int] | None = None
    for k in range(len(head_layer) + 1):
        left = budget - costs.total(k, 0, len(removed))
        if left < 0:
            break
        n = min(len(neuron_layer), math.floor(left / costs.neuron + 1e-9)) if costs.neuron > 0 else len(neuron_layer)
        score = float(head_cum[k] + neuron_cum[n])
        if best is None or score > best[0]:
            best = (score, k, n)
    if best is None:
        return None
    return _Choice(*best, removed, (head_layer, head_unit), (neuron_layer, neuron_unit))


def _layer_importance(importance: Importance) -> torch.Tensor:
    """Each layer's summed scores (of existing units): the order in which layers go while nothing fits."""
    return sum(s.double().nan_to_num(neginf=0.0).sum(1) for s in (importance.heads, importance.neurons))


def select_structure(
    importance: Importance, costs: UnitCosts, fraction: float, *, remove_layers: bool = False
) -> Selection:
    """The most important heads and neurons whose cost is at most `fraction` of keeping them all.

    What it guarantees (scores >= 0, as Fisher scores are): the kept heads are the k highest-scoring
    heads and the kept neurons the n highest-scoring neurons (ties: lower flat index first); their
    cost `costs.total(k, n)` is within `fraction` x `costs.total(all)`; and no other choice of heads
    and neurons within that budget keeps more importance. With `remove_layers` (and a per-layer cost),
    the same holds over the layers left after the greedy removal of the module docstring. Raises
    `BudgetError` (a user error naming the smallest reachable fraction) when the budget does not even
    cover `costs.fixed` (less what removing all layers but one would save, with `remove_layers`)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    total_heads = int(torch.isfinite(importance.heads).sum())
    total_neurons = int(torch.isfinite(importance.neurons).sum())
    layers = importance.heads.shape[0]
    full = costs.total(total_heads, total_neurons)
    budget = fraction * full
    choice = _best_counts(importance, costs, budget, frozenset())
    if remove_layers and costs.layer > 0:
        order = _layer_importance(importance).argsort().tolist()  # least important first
        removed: frozenset[int] = frozenset()
        while len(removed) < layers - 1:
            options = [_best_counts(importance, costs, budget, removed | {layer}) for layer in order
                       if layer not in removed]  # fmt: skip
            better = max((o for o in options if o is not None), key=lambda o: o.score, default=None)
            if better is not None and (choice is None or better.score > choice.score):
                choice, removed = better, better.removed
            elif choice is None:  # nothing fits with one more layer gone either: remove the least important
                removed = removed | {next(layer for layer in order if layer not in removed)}
            else:
                break
    if choice is None:
        smallest = smallest_fraction(costs, total_heads, total_neurons, layers - 1 if remove_layers else 0)
        raise BudgetError(
            f"a budget of {fraction:g} x the full cost is below the fixed cost: the smallest reachable is "
            f"{smallest:.3f} x the full cost",
            fraction=fraction, smallest=smallest, remove_layers=remove_layers,
        )  # fmt: skip
    keep = [LayerKeep() for _ in range(layers)]
    for ranking, count, attr in ((choice.ranked_heads, choice.heads, "heads"),
                                 (choice.ranked_neurons, choice.neurons, "neurons")):  # fmt: skip
        for layer, unit in zip(ranking[0][:count].tolist(), ranking[1][:count].tolist()):
            getattr(keep[layer], attr).append(unit)
    for spec in keep:
        spec.heads.sort()
        spec.neurons.sort()
    return Selection(
        keep=keep,
        cost=costs.total(choice.heads, choice.neurons, len(choice.removed)),
        budget=budget,
        full_cost=full,
        importance_kept=choice.score,
        importance_total=float(_layer_importance(importance).sum()),
        removed=sorted(choice.removed),
    )
