"""Which heads and neurons to keep: the most important set that fits a cost budget.

Both constraints qacompress offers are linear in the number of kept units: a head costs the same
in every layer, and so does a neuron (MACs exactly; OpenVINO latency as measured in
`qacompress.compression.latency`, which fits a per-head and a per-neuron slope). Kwon et al. 2022 observed the
same and solved the search exactly: for every total number of heads k, the remaining budget buys the
n most important neurons; the pair (k, n) with the largest kept importance wins. Heads and neurons
are ranked globally (across layers), so layers that matter keep more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qacompress.compression.fisher import Importance
from qacompress.core.errors import BudgetError
from qacompress.model.surgery import LayerKeep


@dataclass(frozen=True)
class UnitCosts:
    """Cost of one head and of one neuron, and of what does not depend on them (embeddings, ...)."""

    head: float
    neuron: float
    fixed: float = 0.0

    def total(self, heads: int, neurons: int) -> float:
        return self.fixed + heads * self.head + neurons * self.neuron


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
    """The chosen structure and what it costs and keeps."""

    keep: list[LayerKeep]
    cost: float
    budget: float
    full_cost: float
    importance_kept: float
    importance_total: float

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


def smallest_fraction(costs: UnitCosts, heads: int, neurons: int) -> float:
    """The least budget, as a fraction of keeping all `heads` and `neurons`, that `select_structure`
    accepts: the fixed cost's share, rounded up to three decimals (and up once more where float
    arithmetic would put that budget a hair below the fixed cost)."""
    full = costs.total(heads, neurons)
    smallest = math.ceil(costs.fixed / full * 1000) / 1000
    while smallest < 1 and smallest * full < costs.fixed:
        smallest = round(smallest + 0.001, 3)
    return min(smallest, 1.0)


def select_structure(importance: Importance, costs: UnitCosts, fraction: float) -> Selection:
    """The most important heads and neurons whose cost is at most `fraction` of keeping them all.

    What it guarantees (scores >= 0, as Fisher scores are): the kept heads are the k highest-scoring
    heads and the kept neurons the n highest-scoring neurons (ties: lower flat index first); their
    cost `costs.total(k, n)` is within `fraction` x `costs.total(all)`; and no other choice of heads
    and neurons within that budget keeps more importance. Raises `BudgetError` (a user error naming
    the smallest reachable fraction) when the budget does not even cover `costs.fixed`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    head_layer, head_unit, head_cum = _ranked(importance.heads)
    neuron_layer, neuron_unit, neuron_cum = _ranked(importance.neurons)
    total_heads, total_neurons = len(head_layer), len(neuron_layer)
    full = costs.total(total_heads, total_neurons)
    budget = fraction * full
    best: tuple[float, int, int] | None = None
    for k in range(total_heads + 1):
        left = budget - costs.total(k, 0)
        if left < 0:
            break
        n = min(total_neurons, math.floor(left / costs.neuron + 1e-9)) if costs.neuron > 0 else total_neurons
        score = float(head_cum[k] + neuron_cum[n])
        if best is None or score > best[0]:
            best = (score, k, n)
    if best is None:
        smallest = smallest_fraction(costs, total_heads, total_neurons)
        raise BudgetError(
            f"a budget of {fraction:g} x the full cost is below the fixed cost: the smallest reachable is "
            f"{smallest:.3f} x the full cost",
            fraction=fraction, smallest=smallest,
        )  # fmt: skip
    _, k, n = best
    layers = importance.heads.shape[0]
    keep = [LayerKeep() for _ in range(layers)]
    for layer, unit in zip(head_layer[:k].tolist(), head_unit[:k].tolist()):
        keep[layer].heads.append(unit)
    for layer, unit in zip(neuron_layer[:n].tolist(), neuron_unit[:n].tolist()):
        keep[layer].neurons.append(unit)
    for spec in keep:
        spec.heads.sort()
        spec.neurons.sort()
    return Selection(
        keep=keep,
        cost=costs.total(k, n),
        budget=budget,
        full_cost=full,
        importance_kept=best[0],
        importance_total=float(head_cum[-1] + neuron_cum[-1]),
    )
