"""Peak resident memory of QAT calibration (`quantize_model`, default config) against the number of
calibration samples, each count in a fresh process. Random weights (memory does not depend on them).

    python benchmarks/calibration_memory.py --samples 3 12 --seq_length 256 --hidden 384 --layers 6   # MiniLM-L6 shape
    python benchmarks/calibration_memory.py --samples 30 300 --seq_length 384 --hidden 768 --layers 12  # BERT-base shape
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

CHILD = """
import json, sys, torch
from transformers import BertConfig, BertForQuestionAnswering
from qacompress.measure.benchmark import peak_rss_mb
from qacompress.compression.config import default_compression_config
from qacompress.compression.quantization import quantize_model
n, length, hidden, layers = map(int, sys.argv[1:5])
torch.manual_seed(0)
model = BertForQuestionAnswering(BertConfig(hidden_size=hidden, num_hidden_layers=layers,
    num_attention_heads=hidden // 64, intermediate_size=4 * hidden)).eval()
samples = [{"input_ids": torch.randint(1000, 20000, (1, length)), "attention_mask": torch.ones(1, length, dtype=torch.long),
            "token_type_ids": torch.zeros(1, length, dtype=torch.long)} for _ in range(n)]
before = peak_rss_mb()
config = default_compression_config().quantization
quantize_model(model, config, samples)
print(json.dumps({"samples": n, "peak_before_mb": before, "peak_mb": peak_rss_mb()}))
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", nargs="+", type=int, default=[30, 300])
    parser.add_argument("--seq_length", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--name", default="calibration_memory")
    args = parser.parse_args(argv)
    rows = []
    for n in args.samples:
        print(f"calibrating on {n} samples ...", flush=True)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(args.seq_length), str(args.hidden), str(args.layers)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    shape = f"hidden {args.hidden}, {args.layers} layers, length {args.seq_length}, random weights"
    lines = [f"Calibration peak RSS ({shape})", "", "| samples | peak RSS MB |", "|---|---|"]
    lines += [f"| {r['samples']} | {r['peak_mb']:.0f} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    write_results(args.name, {"shape": vars(args), "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
