"""The latency table's one-layer fit against a fit on uniformly pruned full-size copies, judged on the
2x selections of the evidence rows.

    python benchmarks/latency_fit.py --name latency_fit_minilm_epyc_genoa

`--target_latency` prices heads and neurons with a table timed on one-layer copies of the model
(`qacompress.compression.latency`); on a Zen 4 EPYC it predicted 0.532 for a selection that ran at
0.584 (`layer_cost.py`). The alternative timed here: copies of the whole model with every layer cut
to the same head and neuron counts (and with fewer layers), fitted as
ms = fixed + layers * layer + head * heads + neuron * neurons. All IRs (INT8, batch 1, f32) are
compiled first and timed in one set of interleaved rounds, the table's one-layer copies among them;
each fit then predicts every probe and each selection as a share of the unpruned model. Only the
selections are out of sample for the in-place fit. Timing figures hold for the CPU named in the
artefact only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, write_results  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model  # noqa: E402
from qacompress.compression.latency import IRCall, compile_layer_grid, fit_unit_costs  # noqa: E402
from qacompress.compression.selection import UnitCosts  # noqa: E402
from qacompress.core.timing import interleaved  # noqa: E402
from qacompress.model.surgery import LayerKeep, current_sizes, prune_, remove_layers_  # noqa: E402

SELECTIONS = ("recipe-b-4-epochs-grouped-batches-seed-42", "recipe-b-2-epochs-grouped-batches-remove-layers-seed-42",
              "recipe-b-2-epochs-grouped-batches-seed-43")  # fmt: skip
#: (heads, neurons, layers) of the uniform copies, as shares of the full model's per-layer counts.
UNIFORM = ((1, 1, 1), (2 / 3, 1, 1), (1 / 3, 1, 1), (1, 2 / 3, 1), (1, 1 / 3, 1), (1 / 3, 1 / 3, 1), (1 / 2, 1 / 2, 1),
           (1, 1, 1 / 2), (1 / 2, 1 / 2, 1 / 2))  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "benchmarks" / "reference" / "minilm-squad12k")
    parser.add_argument("--name", default="latency_fit")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="timing of each IR, all rounds")
    args = parser.parse_args(argv)
    seq = args.max_seq_length

    model = load_qa_model(str(args.model)).eval()
    sizes = current_sizes(model)
    layers, heads, neurons = len(sizes), sizes[0]["heads"], sizes[0]["intermediate_size"]

    def cut(keep: list[LayerKeep], removed: list[int]) -> IRCall:
        pruned = copy.deepcopy(model)
        prune_(pruned, keep)
        remove_layers_(pruned, removed)
        return IRCall(pruned, seq, True, "f32")

    shapes = [(round(h * heads), round(n * neurons), round(n_layers * layers)) for h, n, n_layers in UNIFORM]
    probes = {f"{h} heads, {n} neurons, {n_layers} layers":
              cut([LayerKeep(heads=list(range(h)), neurons=list(range(n)))] * layers, list(range(n_layers, layers)))
              for h, n, n_layers in shapes}  # fmt: skip
    selections = {}
    for name in SELECTIONS:
        kept = json.loads((RESULTS / "evidence_runs" / name / "compression_report.json").read_text())["pruning"]["kept"]
        removed = [i for i, k in enumerate(kept) if k.get("removed")]
        units = [(len(k["heads"]), len(k["neurons"])) for i, k in enumerate(kept) if i not in removed]
        selections[name] = (sum(h for h, _ in units), sum(n for _, n in units), layers - len(removed))
        probes[name] = cut([LayerKeep(heads=list(k["heads"]), neurons=list(k["neurons"])) for k in kept], removed)
    grid = compile_layer_grid(model, seq, quantize=True, precision="f32")
    medians = interleaved([*grid.calls, *probes.values()], args.rounds, args.seconds, progress=True, desc="timing")
    ms = [float(np.median(times)) for times in medians]
    points = [{"heads": h, "neurons": n, "ms": m} for (h, n), m in zip(grid.grid, ms)]
    table = fit_unit_costs(points, ms[len(points) + 1], sizes, ms[len(points)])
    measured = dict(zip(probes, ms[len(points) + 2 :]))

    design = np.array([[1.0, n_layers, n_layers * h, n_layers * n] for h, n, n_layers in shapes])
    uniform_ms = np.array([measured[key] for key in list(probes)[: len(shapes)]])
    (fixed, layer, head, neuron), *_ = np.linalg.lstsq(design, uniform_ms, rcond=None)
    # In the table's form: the full model's fixed part holds every layer's own cost, a removed layer saves one.
    in_place = UnitCosts(head=float(head), neuron=float(neuron), fixed=float(fixed + layers * layer),
                         layer=float(layer))  # fmt: skip
    counts = {**{key: (n_layers * h, n_layers * n, n_layers) for key, (h, n, n_layers) in zip(probes, shapes)},
              **selections}  # fmt: skip
    full_key = next(iter(probes))

    def share(costs: UnitCosts, h: int, n: int, n_layers: int) -> float:
        return round(costs.total(h, n, layers - n_layers) / costs.total(*counts[full_key][:2]), 3)

    rows = {key: {"heads": h, "neurons": n, "layers": n_layers, "ms": round(measured[key], 3),
                  "measured": round(measured[key] / measured[full_key], 3),
                  "table_predicts": share(table, h, n, n_layers), "in_place_predicts": share(in_place, h, n, n_layers)}
            for key, (h, n, n_layers) in counts.items()}  # fmt: skip
    data = {
        "model": str(args.model.relative_to(ROOT)), "seq_length": seq, "precision": "f32", "rounds": args.rounds,
        "table": {"head_ms": round(table.head, 4), "neuron_ms": round(table.neuron, 6),
                  "layer_ms": round(table.layer, 3), "fixed_ms": round(table.fixed, 3),
                  "full_model_ms": round(ms[len(points) + 1], 3)},
        "in_place": {"head_ms": round(float(head), 4), "neuron_ms": round(float(neuron), 6),
                     "layer_ms": round(float(layer), 3), "fixed_ms": round(float(fixed), 3)},
        "probes": rows,
    }  # fmt: skip
    t, p = data["table"], data["in_place"]
    lines = [
        f"`{data['model']}`, INT8 IRs at batch 1, length {seq}, f32, timed in {args.rounds} interleaved rounds.",
        f"One-layer table: head {t['head_ms']} ms, neuron {t['neuron_ms']} ms, layer {t['layer_ms']} ms, fixed "
        f"{t['fixed_ms']} ms. In place: head {p['head_ms']} ms, neuron {p['neuron_ms']} ms, layer {p['layer_ms']} ms, "
        f"fixed {p['fixed_ms']} ms.",
        "",
        "| IR | heads | neurons | layers | ms | x unpruned | table predicts | in-place fit predicts |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {k} | {r['heads']} | {r['neurons']} | {r['layers']} | {r['ms']} | {r['measured']} "
          f"| {r['table_predicts']} | {r['in_place_predicts']} |" for k, r in rows.items()),
    ]  # fmt: skip
    write_results(args.name, data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
