"""Training cost: optimizer-step time and peak memory of FP32, QAT and JPQD steps, same batch and length.

Each configuration runs a few real `QACompressTrainer` steps of MiniLM-L6 in its own process (peak
memory is that process's): FP32 fine-tuning; QAT (NNCF quantizers; the default config holds the word
table on its INT8 grid, untrained); QAT training the word table in float (`ir_embeddings: float`); JPQD warm-up (movement masks +
teacher forward); JPQD fine-tuning (the pruned model + quantizers + teacher). Median step time over the
steps after warm-up. Writes `benchmarks/results/training_cost.json` and `.md`.
JPQD fine-tuning steps use the heads/neurons kept by the MiniLM JPQD run (50% if it has not run).
Usage: `python benchmarks/training_cost.py [--steps N] [--batch 8] [--seq 384] [--name training_cost]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SQUAD, jpqd_keep, write_results  # noqa: E402

JPQD_CONFIG = ROOT / "configs" / "minilm-jpqd.json"
KINDS = ("fp32", "qat", "qat_float_table", "jpqd_warmup", "jpqd_finetune")


def build(kind: str, features):
    """(student, teacher or None, callbacks) for one kind of step."""
    from qacompress.compression.checkpoint import load_qa_model
    from qacompress.compression.config import default_compression_config, load_compression_config
    from qacompress.compression.movement import attach_movement_pruning
    from qacompress.compression.quantization import quantize_model
    from qacompress.model.loading import default_model_path
    from qacompress.model.surgery import prune_
    from qacompress.training.phases import calibration_samples
    from qacompress.training.trainer import MovementScheduleCallback

    path = default_model_path()
    model = load_qa_model(path)
    teacher = load_qa_model(path) if kind.startswith("jpqd") else None
    callbacks = []
    if kind == "jpqd_warmup":
        # Masks live from the first step (threshold rising), as in the middle of a warm-up.
        movement = dataclasses.replace(
            load_compression_config(JPQD_CONFIG).movement_sparsity,
            warmup_start_epoch=0, warmup_end_epoch=10**6, init_importance_threshold=-0.01, steps_per_epoch=1,
        )  # fmt: skip
        callbacks.append(MovementScheduleCallback(attach_movement_pruning(model, movement)))
    if kind == "jpqd_finetune":
        prune_(model, jpqd_keep(model.config))
    if kind in ("qat", "qat_float_table", "jpqd_finetune"):
        samples = calibration_samples(features, 32, 0)
        config = default_compression_config().quantization
        model = quantize_model(model, dataclasses.replace(config, int8_embeddings=kind != "qat_float_table"), samples)
    return model, teacher, callbacks


def run_steps(kind: str, steps: int, batch: int, seq: int, queue) -> None:
    """Child process: `steps` optimizer steps of one kind; reports step times and peak RSS."""
    import torch
    from transformers import TrainerCallback, default_data_collator

    from qacompress.data.features import prepare_train_features
    from qacompress.data.squad import load_examples
    from qacompress.measure.benchmark import peak_rss_mb
    from qacompress.model.loading import default_model_path, load_tokenizer
    from qacompress.training.arguments import QACompressTrainingArguments
    from qacompress.training.phases import model_inputs
    from qacompress.training.trainer import QACompressTrainer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(default_model_path())
    examples = load_examples(str(SQUAD / "train.json"), max_samples=batch * (steps + 2))
    features = prepare_train_features(examples, tokenizer, max_seq_length=seq, doc_stride=128)
    model, teacher, callbacks = build(kind, features)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = QACompressTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps, save_strategy="no",
            report_to="none", disable_tqdm=True, logging_strategy="no", use_cpu=True, learning_rate=3e-5,
        )  # fmt: skip
        trainer = QACompressTrainer(
            model=model, args=args, train_dataset=model_inputs(features, True), data_collator=default_data_collator,
            teacher=teacher, callbacks=[*callbacks, Timer()],
        )  # fmt: skip
        trainer.train()
    timed = times[2:] or times
    queue.put(
        {
            "kind": kind,
            "step_seconds_median": round(statistics.median(timed), 3),
            "steps_timed": len(timed),
            "peak_rss_mb": peak_rss_mb(),
        }
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--name", default="training_cost", help="artefact name under benchmarks/results/")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    results = []
    for kind in KINDS:
        print(f"timing {kind} ...", flush=True)
        queue = ctx.Queue()
        proc = ctx.Process(target=run_steps, args=(kind, args.steps, args.batch, args.seq, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    base = results[0]["step_seconds_median"]
    lines = [
        f"Training step, MiniLM-L6, batch {args.batch}, seq {args.seq} (median of {results[0]['steps_timed']} steps)",
        "",
        "| step | seconds | x FP32 | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for r in results:
        r["ratio_to_fp32"] = round(r["step_seconds_median"] / base, 2)
        lines.append(f"| {r['kind']} | {r['step_seconds_median']:.2f} | {r['ratio_to_fp32']:.2f} | {r['peak_rss_mb']:.0f} |")
    text = "\n".join(lines)
    print(text)
    write_results(args.name, {"settings": vars(args), "results": results}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
