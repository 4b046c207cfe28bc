"""Where evaluation time goes: tokenisation, the model, post-processing (n-best decoding) and the metric.

Evaluates an INT8 IR (the QAT demo model, else the QAT IR prepared by `speed.py`) on the whole SQuAD
v1.1 dev slice and reports each stage's wall time and share. Target: post-processing <= 5% of the total.
Writes `benchmarks/results/eval_share.json` and `.md`. Usage: `python benchmarks/eval_share.py [--seq 384]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RUNS, SQUAD, WORK, write_results  # noqa: E402

from qacompress.data.features import prepare_eval_features  # noqa: E402
from qacompress.data.metrics import squad_metrics  # noqa: E402
from qacompress.data.postprocess import postprocess_qa_predictions  # noqa: E402
from qacompress.data.squad import gold_answers, load_examples  # noqa: E402
from qacompress.inference.evaluation import run_features  # noqa: E402
from qacompress.ir.runtime import OpenVINOQAModel  # noqa: E402
from qacompress.model.loading import load_tokenizer  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="IR directory (default: runs/minilm-qat or the prepared QAT IR)")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    candidates = [args.model] if args.model else [RUNS / "minilm-qat", WORK / "MiniLM-L6" / "qat", WORK / "BERT-base" / "qat"]
    model_dir = next((Path(c) for c in candidates if (Path(c) / "openvino_model.xml").is_file()), None)
    if model_dir is None:
        print("no INT8 IR found: run the QAT demo or benchmarks/speed.py first", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(str(model_dir))
    runner = OpenVINOQAModel(model_dir)
    examples = load_examples(str(SQUAD / "dev.json"), split="validation")
    times = {}
    t0 = time.perf_counter()
    features = prepare_eval_features(examples, tokenizer, max_seq_length=args.seq, doc_stride=128, pad_to_max_length=False, load_from_cache_file=False)
    times["tokenisation"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    start, end = run_features(runner, features, batch_size=args.batch, pad_token_id=tokenizer.pad_token_id or 0, progress=False)
    times["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictions = postprocess_qa_predictions(examples, features, start, end)
    times["post-processing"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = squad_metrics(predictions.answers, gold_answers(examples))
    times["metric"] = time.perf_counter() - t0
    total = sum(times.values())
    lines = [
        f"Evaluation of {model_dir.name} on {len(examples)} questions ({len(features)} features, seq {args.seq}, "
        f"batch {args.batch}); F1 {metrics['f1']:.2f}",
        "",
        "| stage | seconds | share |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.1f}% |" for k, v in times.items()]
    text = "\n".join(lines)
    print(text)
    share = times["post-processing"] / total
    write_results(
        "eval_share",
        {"model": str(model_dir), "seconds": times, "postprocess_share": share, "features": len(features), "f1": metrics["f1"]},
        text,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
