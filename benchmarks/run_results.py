"""Keep a finished run's figures as a committed artefact: `runs/` is not in the repository, so every EM/F1,
size or wall time the README or docs/ quote from a `train` or `prune` run is copied here, with the command that
produced it and the CPU it ran on.

    python benchmarks/run_results.py runs/minilm-fp32 --name run_minilm_fp32 --command "qacompress train ..."

Writes `benchmarks/results/<name>.json` and `.md`: the metric files of the run directory and of its phase
subdirectories (`all_results.json`, `eval_results.json`, `prune_results.json`), the compression report,
the logged training losses and the evaluation entries of `trainer_state.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

METRIC_FILES = ("all_results.json", "eval_results.json", "prune_results.json")


def _phase_dirs(run: Path) -> list[Path]:
    """The run directory and its phase subdirectories (JPQD's warm-up, structured_pruning's `pruned`),
    never checkpoints."""
    subdirs = sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith("checkpoint-"))
    return [run] + [p for p in subdirs if any((p / f).is_file() for f in METRIC_FILES + ("trainer_state.json",))]


def _training_log(state_file: Path) -> dict[str, Any]:
    history = json.loads(state_file.read_text())["log_history"]
    return {
        "losses": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
        "evaluations": [h for h in history if any(k.startswith("eval_") for k in h)],
        "best_metric": json.loads(state_file.read_text()).get("best_metric"),
    }


def collect(run: Path) -> dict[str, Any]:
    """Everything the run directory says about its outcome, by phase (relative path; "." is the run)."""
    phases: dict[str, Any] = {}
    for directory in _phase_dirs(run):
        entry: dict[str, Any] = {}
        for name in METRIC_FILES:
            if (directory / name).is_file():
                entry[name.removesuffix(".json")] = json.loads((directory / name).read_text())
        if (directory / "trainer_state.json").is_file():
            entry["training_log"] = _training_log(directory / "trainer_state.json")
        if (directory / "compression_report.json").is_file():
            entry["compression_report"] = json.loads((directory / "compression_report.json").read_text())
        if entry:
            phases[str(directory.relative_to(run))] = entry
    if not phases:
        raise SystemExit(f"{run}: no metric files ({', '.join(METRIC_FILES)}): has the run finished?")
    return phases


def _markdown(name: str, command: str, phases: dict[str, Any]) -> str:
    lines = [f"Run `{name}`", "", "```bash", command, "```", "", "| phase | metric | value |", "|---|---|---|"]
    for phase, entry in phases.items():
        for source in ("all_results", "eval_results", "prune_results"):
            for key, value in entry.get(source, {}).items():
                if isinstance(value, (int, float)) and (key.endswith(("f1", "exact_match", "runtime")) or "prune" in key):
                    lines.append(f"| {phase} | {key} | {value:.4g} |")
    return "\n".join(dict.fromkeys(lines))  # all_results repeats eval_results: one row each


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run's output directory")
    parser.add_argument("--name", required=True, help="artefact name under benchmarks/results/")
    parser.add_argument("--command", required=True, help="the command line that produced the run")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise SystemExit(f"{args.run}: no such run directory")
    phases = collect(args.run)
    text = _markdown(args.name, args.command, phases)
    print(text)
    write_results(args.name, {"run": str(args.run), "command": args.command, "phases": phases}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
