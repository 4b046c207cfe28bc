"""What an encoder layer costs on this CPU beyond its heads and neurons, and what removing one saves.

    python benchmarks/layer_cost.py --name layer_cost_minilm_epyc_vnni

1. The latency table `--target_latency` selects with (one-layer IRs over a grid of head and neuron
   counts, the model without layers, the full model; INT8 IRs), timed in interleaved rounds: the fitted
   cost of a head, of a neuron, of a layer beyond its units, and the fixed cost.
2. A selection of a committed compression report (by default the 2x recipe-b selection of the reference
   model that the 4-epoch evidence row recovered) cut from the model: its INT8 IR, the same with its
   least-kept layer emptied (the zeroed stand-in unit `prune_` leaves) and with that layer removed whole,
   timed against the unpruned INT8 IR in interleaved rounds, beside what the table predicts for each.

Timing figures hold for the CPU named in the artefact only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, write_results  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model  # noqa: E402
from qacompress.compression.latency import IRCall, measure_latency_table  # noqa: E402
from qacompress.core.timing import interleaved_medians  # noqa: E402
from qacompress.model.surgery import LayerKeep, current_sizes, prune_, remove_layers_  # noqa: E402

SELECTION = RESULTS / "evidence_runs" / "recipe-b-4-epochs-grouped-batches-seed-42" / "compression_report.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "benchmarks" / "reference" / "minilm-squad12k")
    parser.add_argument("--selection", type=Path, default=SELECTION, help="a compression report with pruning.kept")
    parser.add_argument("--name", default="layer_cost")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="timing of the selection's IRs, all rounds")
    args = parser.parse_args(argv)

    model = load_qa_model(str(args.model)).eval()
    table_sizes = current_sizes(model)
    table = measure_latency_table(model, args.max_seq_length, quantize=True, rounds=5, min_seconds=1.0)
    kept = json.loads(args.selection.read_text())["pruning"]["kept"]
    keep = [LayerKeep(heads=list(k["heads"]), neurons=list(k["neurons"])) for k in kept]
    least = min(range(len(keep)), key=lambda i: table.costs.total(len(keep[i].heads), len(keep[i].neurons)))

    def cut(emptied: bool = False, removed: bool = False) -> IRCall:
        pruned = copy.deepcopy(model)
        layers = [LayerKeep() if emptied and i == least else k for i, k in enumerate(keep)]
        if removed:
            remove_layers_(pruned, [least])
            layers = [k for i, k in enumerate(layers) if i != least]
        prune_(pruned, layers)
        return IRCall(pruned, args.max_seq_length, True, "f32")

    calls = {"unpruned": IRCall(model, args.max_seq_length, True, "f32"), "selection": cut(),
             "least-kept layer emptied": cut(emptied=True), "least-kept layer removed": cut(removed=True)}  # fmt: skip
    ms = interleaved_medians(calls, args.rounds, args.seconds)
    costs = table.costs
    # What the table predicts for each IR, as a share of the unpruned model (as the selection budgets it).
    units = [(len(k.heads), len(k.neurons)) for k in keep]
    emptied = [(0, 0) if i == least else u for i, u in enumerate(units)]  # the stand-in is not counted
    full = costs.total(sum(s["heads"] for s in table_sizes), sum(s["intermediate_size"] for s in table_sizes))

    def share(layers: list[tuple[int, int]], removed: int = 0) -> float:
        return round(costs.total(sum(h for h, _ in layers), sum(n for _, n in layers), removed) / full, 3)

    predicted = {"unpruned": 1.0, "selection": share(units), "least-kept layer emptied": share(emptied),
                 "least-kept layer removed": share(emptied, 1)}  # fmt: skip
    data = {
        "model": str(args.model.relative_to(ROOT)), "selection": str(args.selection.relative_to(ROOT)),
        "seq_length": args.max_seq_length, "precision": table.precision,
        "table": {"head_ms": round(costs.head, 4), "neuron_ms": round(costs.neuron, 6), "layer_ms": round(costs.layer, 3),
                  "fixed_ms": round(costs.fixed, 3), "no_layer_ms": round(table.no_layer_ms, 3),
                  "full_model_ms": round(table.full_model_ms, 3),
                  "layer_ms_share": round(costs.layer * len(keep) / table.full_model_ms, 3)},
        "least_kept_layer": least,
        "least_kept_layer_units": {"heads": len(keep[least].heads), "neurons": len(keep[least].neurons)},
        "ir_ms": {name: round(value, 3) for name, value in ms.items()},
        "fraction_of_unpruned": {name: round(value / ms["unpruned"], 3) for name, value in ms.items()},
        "table_predicts": predicted,
    }  # fmt: skip
    table_ms = data["table"]
    lines = [
        f"`{data['model']}`, INT8 IRs at batch 1, length {args.max_seq_length}, computed in {table.precision}. "
        f"Latency table: a head {table_ms['head_ms']} ms, a neuron {table_ms['neuron_ms']} ms, a layer beyond its "
        f"units {table_ms['layer_ms']} ms ({len(keep)} layers: {table_ms['layer_ms_share']:.0%} of the full "
        f"model's {table_ms['full_model_ms']} ms), fixed {table_ms['fixed_ms']} ms, no layer {table_ms['no_layer_ms']} ms.",
        "",
        f"Selection of `{data['selection']}`; its least-kept layer is layer {least} "
        f"({len(keep[least].heads)} heads, {len(keep[least].neurons)} neurons). IRs timed in {args.rounds} interleaved rounds:",
        "",
        "| IR | ms | x unpruned | table predicts |",
        "|---|---|---|---|",
        *(f"| {name} | {data['ir_ms'][name]} | {data['fraction_of_unpruned'][name]} | {predicted[name]} |" for name in ms),
    ]  # fmt: skip
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
