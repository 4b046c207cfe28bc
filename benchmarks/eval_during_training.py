"""What an evaluation during training costs, next to the final evaluation of the same data.

On the SQuAD v1.1 dev slice with MiniLM-L6 (the packaged encoder, or `--model DIR`), times in one
process, interleaved over `--repeats` rounds:
- `final`: the final scoring's call (`evaluate_runner` on the torch model, as `train.score_split`);
- `during training`: `QACompressTrainer.evaluate()`, which `Trainer` calls at every `--eval_steps`;
- `before (no EM/F1)`: what an evaluation inside training cost before qacompress scored it: plain
  `Trainer.evaluate()` on the unlabelled features (forward pass and logits gathered, no metric).
Reports medians of wall time and of this process's CPU time (less disturbed by other jobs on a shared
machine), and checks that `during training` and `final` give the same EM/F1. Writes
`benchmarks/results/eval_during_training.json` and `.md`.
Usage: `python benchmarks/eval_during_training.py [--seq 256] [--batch 32] [--repeats 3] [--model DIR]`
(on a machine shared with other jobs, `OMP_NUM_THREADS=1` keeps idle-spinning threads from dominating).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import SQUAD, WORK, write_results  # noqa: E402
from transformers import DataCollatorWithPadding, Trainer  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model
from qacompress.core.cpu import describe  # noqa: E402
from qacompress.data.features import prepare_eval_features  # noqa: E402
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import load_examples  # noqa: E402
from qacompress.inference.evaluation import evaluate_runner  # noqa: E402
from qacompress.inference.runners import TorchQAModel  # noqa: E402
from qacompress.model.loading import default_model_path, load_tokenizer  # noqa: E402
from qacompress.training.arguments import QACompressTrainingArguments  # noqa: E402
from qacompress.training.phases import model_inputs  # noqa: E402
from qacompress.training.trainer import QACompressTrainer  # noqa: E402


def timed(call) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    metrics = call()
    return time.perf_counter() - wall, time.process_time() - cpu, metrics


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="torch QA model dir (default: the packaged MiniLM-L6)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    path = args.model or default_model_path()
    tokenizer = load_tokenizer(path)
    model = load_qa_model(path)
    examples = load_examples(str(SQUAD / "dev.json"), split="validation")
    features = prepare_eval_features(examples, tokenizer, max_seq_length=args.seq, doc_stride=128)
    settings = DecodeSettings()
    training_args = QACompressTrainingArguments(
        output_dir=str(WORK / "eval_during_training"), per_device_eval_batch_size=args.batch,
        report_to="none", disable_tqdm=True,
    )  # fmt: skip
    during = QACompressTrainer(
        model=model, args=training_args, eval_dataset=features, eval_examples=examples,
        decode_settings=settings, processing_class=tokenizer,
    )  # fmt: skip
    before = Trainer(
        model=model, args=training_args, eval_dataset=model_inputs(features, False), processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=lambda _: {},  # as fit() passed it
    )  # fmt: skip
    calls = {
        "final": lambda: evaluate_runner(
            TorchQAModel(model), examples, features, settings, batch_size=args.batch,
            pad_token_id=tokenizer.pad_token_id or 0, progress=False,
        )[1],  # fmt: skip
        "during training": lambda: during.evaluate(),
        "before (no EM/F1)": lambda: before.evaluate(),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    scores: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, call in calls.items():
            wall, cpu, metrics = timed(call)
            times[name].append((wall, cpu))
            scores[name] = metrics
    final, inside = scores["final"], scores["during training"]
    if (inside["eval_f1"], inside["eval_exact_match"]) != (final["f1"], final["exact_match"]):
        raise SystemExit(f"evaluation during training disagrees with the final one: {inside} vs {final}")

    medians = {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}
    base_wall, base_cpu = medians["final"]
    cpu_name, threads = describe(), torch.get_num_threads()
    lines = [
        f"One evaluation of {Path(args.model).name if args.model else 'MiniLM-L6'} on {len(examples)} questions ({len(features)} features, seq {args.seq}, "
        f"batch {args.batch}), median of {args.repeats} interleaved rounds, {threads} torch thread(s); CPU: {cpu_name}",
        "",
        "| evaluation | wall s | CPU s | CPU x final | EM / F1 |",
        "|---|---|---|---|---|",
    ]
    em_f1 = {
        "final": f"{final['exact_match']:.2f} / {final['f1']:.2f}",
        "during training": f"{inside['eval_exact_match']:.2f} / {inside['eval_f1']:.2f}",
    }
    for name, (wall, cpu) in medians.items():
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / base_cpu:.2f} | {em_f1.get(name, '-')} |")
    text = "\n".join(lines)
    print(text)
    write_results(
        "eval_during_training",
        {"cpu": cpu_name, "torch_threads": threads, "seq": args.seq, "batch": args.batch, "model": str(path),
         "features": len(features), "seconds_wall_cpu": times, "medians": medians,
         "during_over_final_cpu": medians["during training"][1] / base_cpu,
         "during_over_final_wall": medians["during training"][0] / base_wall},
        text,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
