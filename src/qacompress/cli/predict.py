"""`qacompress predict`: answers to one question or a file of them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from qacompress.cli.common import ModelRef, parse, require_model
from qacompress.core import atomic
from qacompress.core.errors import QACompressError
from qacompress.data.arguments import DataTrainingArguments
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import load_examples
from qacompress.inference.predict import QAPredictor


@dataclass
class PredictArguments:
    question: str | None = field(default=None, metadata={"help": "A question (with --context)"})
    context: str | None = field(default=None, metadata={"help": "The text to find the answer in"})
    input_file: str | None = field(default=None, metadata={"help": ".jsonl/.json/.csv of {id?, question, context}"})
    output_file: str | None = field(default=None, metadata={"help": "Write answers as JSON lines here"})


def run(argv: list[str]) -> int:
    ref, pred, data_args = parse((ModelRef, PredictArguments, DataTrainingArguments), argv, "qacompress predict")
    model_dir = require_model(ref)
    if bool(pred.input_file) == bool(pred.question or pred.context):
        raise QACompressError("predict needs either --question Q --context C, or --input_file FILE")
    settings = DecodeSettings.from_args(data_args)
    predictor = QAPredictor(
        model_dir, backend=ref.backend, max_seq_length=data_args.max_seq_length, doc_stride=data_args.doc_stride,
        settings=settings, batch_size=ref.batch_size, precision=ref.inference_precision,
    )
    if pred.input_file:
        examples = load_examples(pred.input_file, require_answers=False, version_2_with_negative=True)
        answers = predictor.predict_examples(examples, progress=True)
        lines = [json.dumps(a.to_dict(), ensure_ascii=False) for a in answers]
        if pred.output_file:
            atomic.write_bytes(pred.output_file, ("\n".join(lines) + "\n").encode("utf-8"))
            print(f"wrote {len(lines)} answers to {pred.output_file}")
        else:
            print("\n".join(lines))
    else:
        if not (pred.question and pred.context):
            raise QACompressError("--question and --context go together")
        answer = predictor(pred.question, pred.context)
        print(f"{answer.text}\t(score {answer.score:.3f}, characters {answer.start}-{answer.end})")
    return 0
