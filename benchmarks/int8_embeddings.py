"""What storing the embedding tables as INT8 costs: each model's IR exported twice, with INT8 tables
(per-row weights-only INT8, the default of QAT and JPQD IRs) and with float tables, each IR's size,
its EM/F1 on the dev slice at each `--lengths` (each length gives other windows, so another draw of
the rounding noise), and how many questions get the same answer text from both IRs. A float (FP32)
model beside the QAT one shows the tables' own effect, without the 8-bit activation rounding that
amplifies any perturbation in a fake-quantized model. A model whose word table QAT held on its INT8
grid (the default since 2026-11) or quantized (a config that lets NNCF quantize embeddings) has one
IR only, its table stored as trained ("int8 (trained)").

    python benchmarks/int8_embeddings.py runs/minilm-qat150 runs/minilm-fp32 --name int8_embeddings_minilm_qat
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SQUAD, write_results  # noqa: E402

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import to_openvino  # noqa: E402
from qacompress.compression.quantization import is_quantized, quantizes_word_table  # noqa: E402
from qacompress.compression.wordtable import holds_word_table  # noqa: E402
from qacompress.core.ondisk import IR_FILE
from qacompress.inference.evaluation import evaluate  # noqa: E402
from qacompress.ir.convert import example_inputs
from qacompress.ir.ptq import save_ir_dir
from qacompress.ir.weights import compress_weights
from qacompress.model.loading import load_tokenizer  # noqa: E402


def ir_mb(directory: Path) -> float:
    xml = directory / IR_FILE
    return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6, 2)


def table_variants(model_dir: Path, out: Path) -> dict[str, Path]:
    """The model's IR (INT8 for a QAT model, else FP32) with INT8 and with float embedding tables, or
    the one IR of a model that trained with its INT8 table (held or quantized by NNCF)."""
    model, tokenizer = load_qa_model(str(model_dir)), load_tokenizer(str(model_dir))
    ov_model = to_openvino(model, example_inputs(tokenizer), int8_embeddings=False)
    if holds_word_table(model) or (is_quantized(model) and quantizes_word_table(model)):
        trained = compress_weights(ov_model, embeddings_only=True)  # exact for a held table, a no-op for NNCF's
        return {"int8 (trained)": save_ir_dir(trained, model_dir, out / "trained")}
    dirs = {"float": save_ir_dir(ov_model, model_dir, out / "float")}
    dirs["int8"] = save_ir_dir(compress_weights(ov_model, embeddings_only=True), model_dir, out / "int8")
    return dirs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="trained model directories (QAT, JPQD or FP32)")
    parser.add_argument("--name", default="int8_embeddings")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 384], help="max_seq_length values")
    parser.add_argument("--doc_stride", type=int, default=128)
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    summary: list[str] = []
    lines = ["Embedding tables of each model's IR (dev slice, padded, batch 32)", "",
             "| model | length | tables | IR MB | EM | F1 | same answer text as the other IR |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for model_dir in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            dirs = table_variants(model_dir, Path(tmp))
            sizes = {tables: ir_mb(out) for tables, out in dirs.items()}
            by_length = {}
            for length in args.lengths:
                rows, answers = {}, {}
                for tables, out in dirs.items():
                    scores = evaluate(out, SQUAD / "dev.json", max_seq_length=length, doc_stride=args.doc_stride,
                                      batch_size=32, progress=False, output_dir=out)  # fmt: skip
                    answers[tables] = json.loads((out / "eval_predictions.json").read_text())
                    rows[tables] = {"ir_mb": sizes[tables], "exact_match": scores["exact_match"], "f1": scores["f1"]}
                questions = len(next(iter(answers.values())))
                same = sum(answers["int8"][q] == answers["float"][q] for q in answers["int8"]) if len(dirs) == 2 else None
                by_length[length] = {"rows": rows, "same_answer": same, "questions": questions}
                agree = "-" if same is None else f"{same} of {questions}"
                lines += [f"| `{model_dir}` | {length} | {k} | {r['ir_mb']:.1f} | {r['exact_match']:.2f} | {r['f1']:.2f} "
                          f"| {agree} |" for k, r in rows.items()]  # fmt: skip
        means = {k: round(statistics.mean(by_length[n]["rows"][k]["f1"] for n in args.lengths), 2) for k in dirs}
        results[str(model_dir)] = {"ir_mb": sizes, "lengths": by_length, "mean_f1": means}
        summary.append(f"| `{model_dir}` | " + ", ".join(f"{k} {f:.2f}" for k, f in means.items()) + " |")
    lines += ["", f"Mean F1 over the lengths {args.lengths} (each length is another draw of the rounding noise)", "",
              "| model | mean F1 by tables |", "|---|---|", *summary]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    write_results(args.name, {"settings": vars(args) | {"models": [str(m) for m in args.models]},
                              "models": results}, text)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
