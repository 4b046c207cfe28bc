"""Paths and helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path

from qacompress.core import atomic
from qacompress.model.surgery import LayerKeep

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"  # prepared models (ignored by git)
RESULTS = ROOT / "benchmarks" / "results"
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "v1.1"
RUNS = ROOT / "runs"  # models trained by the demo commands of docs/results.md
JPQD_REPORT = RUNS / "minilm-jpqd" / "compression_report.json"


def jpqd_keep(config) -> list[LayerKeep]:
    """Per layer, the share of heads and neurons the MiniLM JPQD run kept (50% if it has not run),
    applied to a model of `config`'s size: speed depends on the shapes, not on which units remain."""
    shares = [(0.5, 0.5)]
    if JPQD_REPORT.is_file():
        report = json.loads(JPQD_REPORT.read_text())
        shares = [(r["heads_kept"] / r["heads_total"], r["neurons_kept"] / r["neurons_total"]) for r in report["layers"]]
    layers = config.num_hidden_layers
    keep = []
    for i in range(layers):
        heads, neurons = shares[i * len(shares) // layers]
        keep.append(
            LayerKeep(
                heads=list(range(round(heads * config.num_attention_heads))),
                neurons=list(range(round(neurons * config.intermediate_size))),
            )
        )
    return keep


def write_results(name: str, data: dict, markdown: str) -> None:
    """`benchmarks/results/<name>.json` and `<name>.md`, both naming the CPU they were measured on
    (`qacompress.core.cpu`): figures from different CPUs must never be read as one series."""
    from qacompress.core.cpu import cpu_info, describe

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic.write_json(RESULTS / f"{name}.json", {"cpu": cpu_info(), **data})
    text = markdown.rstrip() if markdown.lstrip().startswith("CPU:") else f"CPU: {describe()}\n\n{markdown.rstrip()}"
    atomic.write_bytes(RESULTS / f"{name}.md", (text + "\n").encode("utf-8"))
