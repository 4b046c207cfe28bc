"""Removing whole encoder layers (`remove_layers`): the selection removes a layer only where that keeps
more Fisher importance within the budget, and reaches budgets below what the layers' own costs allow
otherwise; a model without a layer computes the original with that layer skipped, saves, reloads (through
qacompress and through plain transformers) and converts to an IR that computes the same; the re-fit
pairs layers by their place in the unpruned model; and `train` selects, removes and fine-tunes with QAT
through it. On tiny real transformers built here; the costs are constructed (a tiny model's latency table
is timer noise, see test_prune.py)."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from test_prune import DEFAULT_QUANTIZATION, SEQ, calibration, distilled_train_args  # noqa: F401 (a fixture)
from test_structured import inputs, logits, model_inputs  # noqa: F401 (a fixture)

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import save_model_dir
from qacompress.compression.fisher import Importance
from qacompress.compression.latency import LatencyTable, fit_unit_costs
from qacompress.compression.pruning import cut_
from qacompress.compression.refit import reconstruction_errors, refit_
from qacompress.compression.selection import Selection, UnitCosts, select_structure, smallest_fraction
from qacompress.core.errors import BudgetError
from qacompress.model.architecture import require_layout
from qacompress.model.surgery import LayerKeep, current_sizes, prune_, remove_layers_, source_layers

# 3 layers x 4 heads, 3 x 8 neurons; layer 2 matters little. A layer's own cost is 2.5 of the fixed 9.
IMPORTANCE = Importance(
    heads=torch.tensor([[4.0, 3.0, 2.0, 1.0], [3.5, 2.5, 1.5, 0.5], [0.02, 0.01, 0.01, 0.01]]),
    neurons=torch.tensor([[1.0] * 8, [0.8] * 8, [0.01] * 8]),
)
COSTS = UnitCosts(head=1.0, neuron=0.25, fixed=9.0, layer=2.5)  # all units: 12 + 6, the full model 27


def best_over_removals(importance: Importance, costs: UnitCosts, fraction: float) -> tuple[float, tuple[int, ...]]:
    """Exhaustive: for every set of removed layers (one layer left at least), the best selection of the
    units left, its budget the same share of the full model, its fixed cost less the removed layers' own."""
    layers = importance.heads.shape[0]
    budget = fraction * costs.total(importance.heads.numel(), importance.neurons.numel())
    best = (-1.0, ())
    for r in range(layers):
        for gone in itertools.combinations(range(layers), r):
            heads, neurons = importance.heads.clone(), importance.neurons.clone()
            heads[list(gone)], neurons[list(gone)] = float("-inf"), float("-inf")
            left = UnitCosts(costs.head, costs.neuron, costs.fixed - len(gone) * costs.layer)
            full = left.total(int(torch.isfinite(heads).sum()), int(torch.isfinite(neurons).sum()))
            try:
                chosen = select_structure(Importance(heads, neurons), left, min(1.0, budget / full))
            except BudgetError:
                continue
            best = max(best, (chosen.importance_kept, gone))
    return best


@pytest.mark.parametrize("fraction", [0.5, 0.6, 0.8])
def test_a_layer_goes_only_where_that_keeps_more(fraction):
    plain = select_structure(IMPORTANCE, COSTS, fraction)
    chosen = select_structure(IMPORTANCE, COSTS, fraction, remove_layers=True)
    seen = f"removed {chosen.removed}, kept {chosen.importance_kept:.3f} against {plain.importance_kept:.3f}"
    assert plain.removed == [] and chosen.cost <= fraction * 27 + 1e-9, seen
    assert chosen.cost == pytest.approx(COSTS.total(chosen.heads, chosen.neurons, len(chosen.removed)))
    assert all(not chosen.keep[layer].heads and not chosen.keep[layer].neurons for layer in chosen.removed)
    # Never worse than keeping every layer; here as good as the best of all sets of removed layers.
    assert chosen.importance_kept >= plain.importance_kept, seen
    best, gone = best_over_removals(IMPORTANCE, COSTS, fraction)
    assert chosen.importance_kept == pytest.approx(best) and tuple(chosen.removed) == gone, (seen, best, gone)
    # Layer 2 is worth its 2.5 only where the budget is tight: at 0.5 and 0.6 it goes, at 0.8 it stays.
    assert chosen.removed == ([2] if fraction < 0.8 else []), seen
    # Without a layer cost (MACs) or without the flag, no layer is removed.
    assert select_structure(IMPORTANCE, UnitCosts(1.0, 0.25, 9.0), fraction, remove_layers=True).removed == []


def test_a_budget_below_the_layers_fixed_cost_is_reached_by_removing_layers():
    """9 of 27 is fixed: 0.3 is refused with every layer kept (smallest 0.334) and reached by removing
    layers; with all but one removed the floor is (9 - 2 x 2.5) / 27 = 0.148, so 0.1 is refused naming 0.149."""
    with pytest.raises(BudgetError) as info:
        select_structure(IMPORTANCE, COSTS, 0.3)
    assert info.value.smallest == 0.334
    assert "per-layer overheads stay unless --remove_layers" in info.value.what_stays, info.value.what_stays
    chosen = select_structure(IMPORTANCE, COSTS, 0.3, remove_layers=True)
    assert chosen.removed and chosen.cost <= 0.3 * 27 + 1e-9, chosen
    assert 2 in chosen.removed, chosen.removed  # the least important layer goes first
    assert smallest_fraction(COSTS, 12, 24, removable_layers=2) == 0.149
    with pytest.raises(BudgetError) as info:
        select_structure(IMPORTANCE, COSTS, 0.1, remove_layers=True)
    assert info.value.smallest == 0.149, str(info.value)
    assert "the last layer's overheads stay" in info.value.what_stays, info.value.what_stays  # no flag to name


def test_the_latency_fit_gives_a_layer_its_own_cost():
    """One-layer points at 0.3 ms + 0.05 per head + 0.002 per neuron, the model without layers at 0.1 ms:
    a layer costs 0.2 ms beyond its units; capped at the fixed cost's share of each layer."""
    points = [{"heads": h, "neurons": n, "ms": 0.3 + 0.05 * h + 0.002 * n} for h, n in
              [(1, 64), (2, 64), (4, 64), (4, 1), (4, 32)]]  # fmt: skip
    sizes = [{"heads": 4, "intermediate_size": 64}] * 2
    assert fit_unit_costs(points, 1.5, sizes, no_layer_ms=0.1).layer == pytest.approx(0.2)
    assert fit_unit_costs(points, 1.5, sizes).layer == 0.0
    capped = fit_unit_costs(points, 0.8, sizes, no_layer_ms=0.0)  # fixed 0.8 - 0.656 = 0.144
    assert capped.layer == pytest.approx(capped.fixed / 2)


def skipping(model, index: int):
    """A copy of `model` whose layer `index` hands its input on unchanged."""
    copy_ = copy.deepcopy(model)

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else next(iter(kwargs.values()))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    copy_.get_submodule(require_layout(copy_).layers[index].module).register_forward_hook(identity, with_kwargs=True)
    return copy_


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_distilbert_dir"])
def test_a_model_without_a_layer_saves_reloads_and_converts(
    request, fixture, inputs, tokenizer, tmp_path  # noqa: F811
):
    from transformers import AutoModelForQuestionAnswering

    from qacompress.ir.runtime import OpenVINOQAModel

    model = load_qa_model(str(request.getfixturevalue(fixture))).eval()
    cut = copy.deepcopy(model)
    remove_layers_(cut, [0])
    layout = require_layout(cut)
    assert len(layout.layers) == 1 and cut.config.num_hidden_layers == 1 and source_layers(cut) == [1]
    assert torch.equal(cut.get_submodule(layout.layers[0].query).weight,
                       model.get_submodule(require_layout(model).layers[1].query).weight)  # fmt: skip
    expected = logits(cut, inputs)
    for got, want in zip(expected, logits(skipping(model, 0), inputs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="one must stay"):
        remove_layers_(copy.deepcopy(cut), [0])
    last = copy.deepcopy(model)
    remove_layers_(last, [1])  # the last layer: the config says so, though [0] is also where a 1-layer model starts
    prune_(last, [LayerKeep(heads=[0], neurons=[0, 1])])  # pruning again keeps the record
    assert last.config.qacompress_pruning["source_layers"] == [0], last.config.qacompress_pruning

    directory = save_model_dir(cut, tokenizer, tmp_path / "cut", export_ir=True)
    saved = json.loads((directory / "config.json").read_text())
    assert saved["qacompress_pruning"]["source_layers"] == [1], saved["qacompress_pruning"]
    for reloaded in (load_qa_model(str(directory)), AutoModelForQuestionAnswering.from_pretrained(directory)):
        for got, want in zip(logits(reloaded, inputs), expected):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert source_layers(load_qa_model(str(directory))) == [1]
    ov_start, ov_end = OpenVINOQAModel(directory)({k: v.numpy() for k, v in model_inputs(cut, inputs).items()})
    np.testing.assert_allclose(ov_start, expected[0].numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ov_end, expected[1].numpy(), atol=1e-5, rtol=1e-4)


def test_the_refit_pairs_layers_by_their_place_in_the_unpruned_model(tiny_bert_dir, calibration):  # noqa: F811
    """Layer 0 removed, layer 1 pruned: only layer 1 is re-fitted (numbered 1), against the unpruned
    stream that went through layer 0, and its error on held-out features falls."""
    model = load_qa_model(str(tiny_bert_dir)).eval()
    keep = [LayerKeep(), LayerKeep(heads=[0, 2], neurons=list(range(0, 64, 2)))]
    selection = Selection(keep, cost=0.0, budget=0.0, full_cost=1.0, importance_kept=0.0, importance_total=0.0,
                          removed=[0])  # fmt: skip
    pruned = copy.deepcopy(model)
    cut_(pruned, selection)
    assert source_layers(pruned) == [1] and current_sizes(pruned) == [{"heads": 2, "intermediate_size": 32}]
    before = reconstruction_errors(model, pruned, calibration[1])
    errors = refit_(model, pruned, calibration[0], progress=False)
    after = reconstruction_errors(model, pruned, calibration[1])
    assert [(e.layer, e.sublayer) for e in errors] == [(1, "attention"), (1, "ffn")], errors
    assert [(e.layer, e.sublayer) for e in after] == [(1, "attention"), (1, "ffn")], after
    print("held-out errors before/after the re-fit:", [(b.before, a.before) for a, b in zip(after, before)])
    assert all(a.before < b.before for a, b in zip(after, before)), (before, after)


def test_the_compress_summary_names_removed_layers():
    """The table `compress` prints ends its kept-units line with the layers removed whole, if any (on a
    committed report of a real run, with and without a removed layer)."""
    from conftest import REPO_ROOT

    from qacompress.jobs.compress import format_report

    path = REPO_ROOT / "benchmarks/results/evidence_runs/recipe-b-4-epochs-grouped-batches-seed-42/compress_report.json"
    report = json.loads(path.read_text())
    assert "layers removed" not in format_report(report)
    report["kept"]["removed_layers"] = [5]
    assert "layers removed whole: 5" in format_report(report).splitlines(), format_report(report)


# A table whose layers cost 1.0 ms each beyond their units (of a fixed 1.52): removing one pays.
LATENCY_POINTS = [{"heads": h, "neurons": n, "ms": 1.3 + 0.25 * h + 0.01 * n, "round_ms": [1.3 + 0.25 * h + 0.01 * n]}
                  for h, n in [(1, 64), (2, 64), (4, 64), (4, 1), (4, 32)]]  # fmt: skip


def layer_costly_table(*args, **kwargs) -> LatencyTable:
    table = LatencyTable(seq_length=SEQ, quantized=True, points=LATENCY_POINTS, full_model_ms=6.8, no_layer_ms=0.3)
    table.costs = fit_unit_costs(LATENCY_POINTS, 6.8, [{"heads": 4, "intermediate_size": 64}] * 2, 0.3)
    return table


@pytest.mark.slow
def test_train_removes_a_layer_then_finetunes_with_qat(tiny_bert_dir, squad_dir, tmp_path, monkeypatch):
    """A `structured_pruning` section with `remove_layers` under a latency target (the table above; the
    chosen model is still timed for real): the pruned model has fewer layers, trains with quantizers,
    reports the removed layer, reloads and is scored in torch and as an IR."""
    monkeypatch.setattr("qacompress.compression.latency.measure_latency_table", layer_costly_table)
    # One timing of the chosen model, kept whatever it measures: on a tiny model it is op overhead, and a
    # second selection at a budget moved by it could keep both layers.
    monkeypatch.setattr("qacompress.compression.pruning.LATENCY_CHECKS", 1)
    assert layer_costly_table().costs.layer == pytest.approx(1.0)
    config = tmp_path / "remove.json"
    config.write_text(json.dumps([
        {"algorithm": "structured_pruning", "target_latency": 0.45, "remove_layers": True, "num_samples": 16,
         "refit_samples": 16, "latency_rounds": 2, "latency_seconds": 0.2},
        {**DEFAULT_QUANTIZATION, "initializer": {"range": {"num_init_samples": 8, "type": "mean_min_max"}}},
    ]))  # fmt: skip
    out = tmp_path / "run"
    assert main(distilled_train_args(tiny_bert_dir, squad_dir, config, out, "--save_steps", "2")) == 0
    report = json.loads((out / "compression_report.json").read_text())
    removed = report["pruning"]["removed_layers"]
    print("removed layers:", removed, "checks:", report["pruning"]["latency_checks"])
    assert len(removed) == 1, report["pruning"]
    assert [row.get("removed", False) for row in report["layers"]] == [i in removed for i in range(2)], report["layers"]
    assert report["layers"][removed[0]]["heads_kept"] == report["layers"][removed[0]]["neurons_kept"] == 0
    from qacompress.compression.quantization import is_quantized

    model = load_qa_model(str(out))
    assert is_quantized(model) and model.config.num_hidden_layers == 1
    assert source_layers(model) == [1 - removed[0]]
    assert json.loads((out / "finetune" / "trainer_state.json").read_text())["global_step"] == 3
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_f1" in results and "eval_openvino_f1" in results
