"""The speed/accuracy report: tables, target checks and the accuracy-vs-latency plot, from the results
the other benchmark scripts wrote. Updates docs/results.md between its `benchmarks:start/end` markers.
Usage: `python benchmarks/report.py`.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, write_results  # noqa: E402

from qacompress.core import atomic  # noqa: E402

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
SHAPE = "b1_s384"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def row(results: list[dict], suffix: str) -> dict | None:
    return next((r for r in results if r["name"].endswith(suffix)), None)


def latency(r: dict | None) -> float | None:
    return r["latency_ms"][SHAPE]["median"] if r and SHAPE in r["latency_ms"] else None


def check(label: str, value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return f"| {label} | not measured | {target} | - |"
    met = value >= target if higher_is_better else value <= target
    return f"| {label} | {value:.2f} | {'>=' if higher_is_better else '<='} {target} | {'met' if met else 'missed'} |"


def targets(speed: dict, cost: dict | None, share: dict | None) -> list[str]:
    lines = ["| target | measured | wanted | |", "|---|---|---|---|"]
    for family, results in speed["families"].items():
        fp32, ptq, qat, jpqd = (row(results, s) for s in ("torch FP32", "INT8 PTQ", "QAT IR", "JPQD IR"))
        base = latency(fp32)
        for name, r, goal in (("QAT IR", qat, 4.0), ("JPQD IR", jpqd, 7.0)):
            lat = latency(r)
            lines.append(check(f"{family}: {name} speed-up vs torch FP32 ({SHAPE})", base / lat if base and lat else None, goal))
        lat_q, lat_j = latency(qat), latency(jpqd)
        lines.append(check(f"{family}: JPQD IR speed-up vs QAT IR", lat_q / lat_j if lat_q and lat_j else None, 1.6))
        if qat and ptq and qat["metrics"] and ptq["metrics"]:
            lines.append(check(f"{family}: QAT F1 minus PTQ F1", qat["metrics"]["f1"] - ptq["metrics"]["f1"], 0.0))
    if cost:
        by_kind = {r["kind"]: r for r in cost["results"]}
        lines.append(check("QAT step / FP32 step", by_kind["qat"]["ratio_to_fp32"], 1.5, higher_is_better=False))
        for kind in ("jpqd_warmup", "jpqd_finetune"):
            lines.append(check(f"{kind} step (teacher incl.) / FP32 step", by_kind[kind]["ratio_to_fp32"], 2.0, False))
    if share:
        lines.append(check("post-processing share of evaluation (%)", 100 * share["postprocess_share"], 5.0, False))
    return lines


def plot(speed: dict) -> bytes:
    """F1 against batch-1 latency at seq 384, one point per model that has an accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for family, results in speed["families"].items():
        points = [(latency(r), r["metrics"]["f1"], r["name"].replace(family + " ", "")) for r in results if r["metrics"]]
        if not points:
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", label=family)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1, seq 384 (ms, log scale)")
    ax.set_ylabel("F1 on the SQuAD v1.1 dev slice")
    ax.set_title("Accuracy vs latency (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main() -> int:
    speed, cost, share = load("speed"), load("training_cost"), load("eval_share")
    if speed is None:
        print("run benchmarks/speed.py first", file=sys.stderr)
        return 2
    parts = [(RESULTS / "speed.md").read_text().strip()]
    if cost:
        parts.append((RESULTS / "training_cost.md").read_text().strip())
    if share:
        parts.append((RESULTS / "eval_share.md").read_text().strip())
    parts.append("\n".join(targets(speed, cost, share)))
    parts.append("![accuracy vs latency](benchmarks/results/accuracy_latency.png)")
    text = "\n\n".join(parts)
    atomic.write_bytes(RESULTS / "accuracy_latency.png", plot(speed))
    write_results("report", {"targets": targets(speed, cost, share)}, text)
    results_md = ROOT / "docs" / "results.md"
    content = results_md.read_text()
    if START in content and END in content:
        head, rest = content.split(START, 1)
        _, tail = rest.split(END, 1)
        block = text.replace("](benchmarks/results/", "](../benchmarks/results/")  # links relative to docs/
        atomic.write_bytes(results_md, f"{head}{START}\n{block}\n{END}{tail}".encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
