"""What storing the embedding tables as INT8 costs a QAT model: the same trained model exported twice,
with INT8 tables (the default) and with float tables (`ir_embeddings: float`), each IR's size and its
EM/F1 on the dev slice.

    python benchmarks/int8_embeddings.py runs/minilm-qat --name int8_embeddings_minilm
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SQUAD, write_results  # noqa: E402

from qacompress.evaluation import evaluate  # noqa: E402
from qacompress.export import save_model_dir  # noqa: E402
from qacompress.models import IR_FILE, load_qa_model, load_tokenizer  # noqa: E402


def ir_mb(directory: Path) -> float:
    xml = directory / IR_FILE
    return round((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6, 2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a trained QAT or JPQD model directory")
    parser.add_argument("--name", default="int8_embeddings")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--doc_stride", type=int, default=128)
    args = parser.parse_args(argv)
    model, tokenizer = load_qa_model(str(args.model)), load_tokenizer(str(args.model))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tables, int8 in (("int8", True), ("float", False)):
            out = save_model_dir(model, tokenizer, Path(tmp) / tables, int8_embeddings=int8)
            scores = evaluate(out, SQUAD / "dev.json", max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                              batch_size=32, progress=False)  # fmt: skip
            rows[tables] = {"ir_mb": ir_mb(out), "exact_match": scores["exact_match"], "f1": scores["f1"]}
    lines = [f"Embedding tables of the IR of `{args.model}` (dev slice, length {args.max_seq_length})", "",
             "| tables | IR MB | EM | F1 |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {r['ir_mb']:.1f} | {r['exact_match']:.2f} | {r['f1']:.2f} |" for k, r in rows.items()]
    text = "\n".join(lines)
    print(text)
    write_results(args.name, {"model": str(args.model), "settings": vars(args) | {"model": str(args.model)},
                              "rows": rows}, text)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
