"""Keep a finished reference fine-tune in the repository: fp16 weights (half the bytes of FP32; every
consumer loads them back as FP32), config and tokenizer, and `provenance.json` beside them (the
command, the CPU, steps, wall time, the dev EM/F1 logged during training and at its end).

    python benchmarks/reference/pack.py runs/reference-minilm benchmarks/reference/minilm-squad12k \
        --command "$(cat benchmarks/reference/train.sh)"

A fresh clone then loads the reference with `qacompress.load_qa_model(DIR)` (or any `transformers`
QA loader) without retraining. The fp16-stored weights differ from the trained FP32 ones by that
rounding; `provenance.json` holds the trained model's scores, and `benchmarks/protocol.py` scores the
stored reference itself (its reference row), so comparisons are made against what is committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.core import atomic
from qacompress.core.cpu import cpu_info
from qacompress.model.loading import load_tokenizer


def training_history(run: Path, train_runtime_s: float | None = None) -> dict:
    """Steps, wall time and every dev evaluation of the run (from `trainer_state.json`/`train_results.json`;
    `train_runtime_s` where a resume after the last step overwrote the training's own wall time)."""
    state = json.loads((run / "trainer_state.json").read_text())
    evaluations = [
        {k: h[k] for k in ("step", "epoch", "eval_exact_match", "eval_f1") if k in h}
        for h in state["log_history"]
        if "eval_f1" in h
    ]
    train = json.loads((run / "train_results.json").read_text())
    return {
        "global_step": state["global_step"],
        "train_runtime_s": train_runtime_s if train_runtime_s is not None else train.get("train_runtime"),
        "train_loss": train.get("train_loss"),
        "evaluations": evaluations,
        "final": json.loads((run / "eval_results.json").read_text()),
    }


def pack(run: Path, out: Path, command: str, train_runtime_s: float | None = None, note: str = "") -> dict:
    """Write the fp16 copy and its provenance; return the provenance."""
    model = load_qa_model(str(run)).eval()
    tokenizer = load_tokenizer(str(run))
    staging = out.with_name(out.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    model.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    config = json.loads((staging / "config.json").read_text())
    config["dtype"] = "float32"  # what loaders should compute in: the fp16 storage is for size only
    atomic.write_json(staging / "config.json", config)
    tokenizer.save_pretrained(staging)
    provenance = {"source_run": str(run), "command": command, "cpu": cpu_info(), "note": note,
                  **training_history(run, train_runtime_s)}  # fmt: skip
    atomic.write_json(staging / "provenance.json", provenance)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return provenance


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the finished training run (output_dir of the command)")
    parser.add_argument("out", type=Path, help="where the packed reference goes, e.g. benchmarks/reference/minilm-squad12k")
    parser.add_argument("--command", required=True, help="the command line that trained the run")
    parser.add_argument("--train_runtime_s", type=float, help="the training's wall time, where a resume after "
                        "the last step overwrote train_results.json (read it from the first run's log)")
    parser.add_argument("--note", default="", help="anything the figures need said beside them")
    args = parser.parse_args(argv)
    provenance = pack(args.run, args.out, args.command, args.train_runtime_s, args.note)
    print(json.dumps({k: provenance[k] for k in ("global_step", "train_runtime_s", "evaluations")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
