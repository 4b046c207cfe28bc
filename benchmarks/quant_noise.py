"""How far a fake-quantized model's F1 moves under float rounding alone: the noise floor of "torch vs IR".

A QAT model rounds every activation to an 8-bit grid, so a change in the last float bit of one value
can move it across a rounding boundary, and the step it gains travels through every later layer.
OpenVINO's INT8 kernels and torch's fake-quantize ops accumulate in different orders, so their logits
differ by that much even when the export is exact. This script measures the same effect inside torch:
it scales the embedding output by (1 + eps * noise) with eps = 1e-6 (a few float32 ulps) for a few
seeds, and reports the F1 spread next to the torch and IR figures of each trained model.
Writes `benchmarks/results/quant_noise.json` and `.md`. Usage: `python benchmarks/quant_noise.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, SQUAD, write_results  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model
from qacompress.data.postprocess import DecodeSettings
from qacompress.inference.evaluation import eval_data, evaluate_runner  # noqa: E402
from qacompress.inference.runners import TorchQAModel  # noqa: E402
from qacompress.ir.runtime import OpenVINOQAModel
from qacompress.model.loading import load_tokenizer  # noqa: E402

EPS = 1e-6
SEEDS = (0, 1, 2)


def f1_of(runner, examples, features, pad_id: int) -> float:
    _, metrics = evaluate_runner(runner, examples, features, DecodeSettings(), batch_size=32, pad_token_id=pad_id, progress=False)
    return metrics["f1"]


def main() -> int:
    rows, data = [], {}
    for name in ("minilm-qat", "minilm-jpqd"):
        directory = RUNS / name
        if not (directory / "openvino_model.xml").is_file():
            print(f"skipping {name}: not trained", file=sys.stderr)
            continue
        tokenizer = load_tokenizer(str(directory))
        examples, features = eval_data(SQUAD / "dev.json", tokenizer, max_seq_length=256, doc_stride=128, pad_to_max_length=False)
        pad_id = tokenizer.pad_token_id or 0
        model = load_qa_model(str(directory))
        runner = TorchQAModel(model)  # the jitter hooks below act on this same model
        torch_f1 = f1_of(runner, examples, features, pad_id)
        ir_f1 = f1_of(OpenVINOQAModel(directory), examples, features, pad_id)
        perturbed = []
        for seed in SEEDS:
            generator = torch.Generator().manual_seed(seed)

            def jitter(module, args, out, generator=generator):
                return out * (1 + EPS * torch.randn(out.shape, generator=generator))

            hook = model.get_input_embeddings().register_forward_hook(jitter)
            perturbed.append(f1_of(runner, examples, features, pad_id))
            hook.remove()
        spread = max(abs(f - torch_f1) for f in perturbed)
        data[name] = {"torch_f1": torch_f1, "ir_f1": ir_f1, "perturbed_f1": perturbed, "eps": EPS, "max_shift": spread}
        rows.append(
            f"| {name} | {torch_f1:.2f} | {ir_f1:.2f} ({ir_f1 - torch_f1:+.2f}) | "
            + ", ".join(f"{f:.2f}" for f in perturbed)
            + f" | {spread:.2f} |"
        )
    text = "\n".join(
        [
            f"F1 on the SQuAD v1.1 dev slice; perturbed = torch model with its embedding output scaled by (1 + {EPS:g}·N(0,1)), seeds {list(SEEDS)}",
            "",
            "| model | torch F1 | IR F1 (vs torch) | perturbed torch F1 | largest shift from rounding |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    write_results("quant_noise", data, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
