"""How reproducible a `--target_latency` selection is on this machine: the latency table of one model
timed again and again, one point after the other (1 round) and in interleaved rounds (the default),
on a quiet machine and under a background load that comes and goes (one busy process, on/off); each
table's fitted unit costs and the structure it selects at the target from one Fisher estimate.

    python benchmarks/latency_table.py runs/minilm-fp32 --name latency_table_minilm

The IRs are compiled once; every repeat re-times them, so the spread is the timing's alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SQUAD, write_results  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.fisher import fisher_importance  # noqa: E402
from qacompress.compression.latency import compile_layer_grid, time_layer_grid  # noqa: E402
from qacompress.compression.pruning import feature_batches  # noqa: E402
from qacompress.compression.selection import select_structure  # noqa: E402
from qacompress.data.features import prepare_eval_features  # noqa: E402
from qacompress.data.squad import load_examples  # noqa: E402
from qacompress.model.loading import load_tokenizer  # noqa: E402

BUSY = """
import time, sys
on, off = float(sys.argv[1]), float(sys.argv[2])
while True:
    end = time.perf_counter() + on
    while time.perf_counter() < end:
        pass
    time.sleep(off)
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a fine-tuned QA model directory")
    parser.add_argument("--name", default="latency_table")
    parser.add_argument("--train_file", type=Path, default=SQUAD / "train.json")
    parser.add_argument("--questions", type=int, default=256, help="calibration questions for the Fisher estimate")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--target", type=float, default=0.5, help="--target_latency of the selections")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the default mode")
    parser.add_argument("--seconds", type=float, default=1.0, help="timing per point, in both modes")
    parser.add_argument("--load", type=float, nargs=2, default=(1.0, 2.0), metavar=("ON", "OFF"),
                        help="seconds busy and idle of the background process")  # fmt: skip
    args = parser.parse_args(argv)

    model, tokenizer = load_qa_model(str(args.model)), load_tokenizer(str(args.model))
    examples = load_examples(str(args.train_file), split="train", require_answers=False,
                             version_2_with_negative=True, max_samples=args.questions)  # fmt: skip
    features = prepare_eval_features(examples, tokenizer, max_seq_length=args.max_seq_length,
                                     doc_stride=args.doc_stride, pad_to_max_length=False)  # fmt: skip
    importance = fisher_importance(model.eval(), feature_batches(features, tokenizer, 8), seed=42)
    grid = compile_layer_grid(model, args.max_seq_length, quantize=True)

    rows = []
    for condition in ("quiet", "load"):
        busy = None
        if condition == "load":
            busy = subprocess.Popen([sys.executable, "-c", BUSY, *map(str, args.load)])
        try:
            for repeat in range(args.repeats):
                for mode, rounds in (("one after the other", 1), ("interleaved", args.rounds)):
                    table = time_layer_grid(grid, rounds=rounds, min_seconds=args.seconds, progress=False)
                    chosen = select_structure(importance, table.costs, args.target)
                    rows.append({
                        "condition": condition, "mode": mode, "rounds": rounds, "repeat": repeat,
                        "head_ms": round(table.costs.head, 4), "neuron_us": round(1000 * table.costs.neuron, 3),
                        "fixed_ms": round(table.costs.fixed, 2), "full_model_ms": round(table.full_model_ms, 2),
                        "heads_kept": chosen.heads, "neurons_kept": chosen.neurons,
                    })  # fmt: skip
                    print(rows[-1], flush=True)
        finally:
            if busy is not None:
                busy.kill()

    summary = {}
    for condition in ("quiet", "load"):
        for mode in ("one after the other", "interleaved"):
            picked = [r for r in rows if r["condition"] == condition and r["mode"] == mode]
            heads = [r["head_ms"] for r in picked]
            summary[f"{condition}, {mode}"] = {
                "heads_kept": [min(r["heads_kept"] for r in picked), max(r["heads_kept"] for r in picked)],
                "neurons_kept": [min(r["neurons_kept"] for r in picked), max(r["neurons_kept"] for r in picked)],
                "head_ms_spread": round(max(heads) / min(heads), 3),
                "head_ms_median": round(statistics.median(heads), 4),
            }
    lines = [
        f"Latency table of `{args.model}` (INT8 IRs, b1 s{args.max_seq_length}, {args.seconds} s per point), "
        f"{args.repeats} repeats per mode; selection at --target_latency {args.target} from one Fisher "
        f"estimate; load = one busy process, {args.load[0]} s on / {args.load[1]} s off",
        "",
        "| condition, timing | heads kept (min-max) | neurons kept (min-max) | per-head ms (median) | max/min per-head |",
        "|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        lines.append(f"| {key} | {s['heads_kept'][0]}-{s['heads_kept'][1]} | {s['neurons_kept'][0]}-{s['neurons_kept'][1]} "
                     f"| {s['head_ms_median']} | {s['head_ms_spread']} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    write_results(args.name, {"model": str(args.model), "settings": vars(args) | {"model": str(args.model),
                  "train_file": str(args.train_file)}, "rows": rows, "summary": summary}, text)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
