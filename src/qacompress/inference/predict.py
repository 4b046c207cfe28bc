"""Answering questions with a QA model: the predictor transformers 5 no longer ships.

`QAPredictor("model_dir")("Who won?", context)` returns the best span with its probability and
character offsets; `predict(records)` answers many at once in batches. It runs the OpenVINO IR when the
directory has one (fast on CPU), else the torch model, and uses the same features and n-best decoding
as evaluation, so long contexts are split into overlapping windows and every answer is a substring of
its context.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import datasets

from qacompress.core.errors import DataError
from qacompress.data.features import prepare_eval_features
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import SQUAD_FEATURES
from qacompress.inference.evaluation import decode, run_features
from qacompress.inference.runners import load_runner
from qacompress.model.loading import load_tokenizer


@dataclass
class Answer:
    """One answer: its text, probability among the n-best spans, and character span in the context."""

    id: str
    text: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QAPredictor:
    """Extractive QA over a model directory (OpenVINO IR or torch)."""

    def __init__(
        self,
        model_dir: str,
        *,
        backend: str = "auto",
        max_seq_length: int = 384,
        doc_stride: int = 128,
        settings: DecodeSettings | None = None,
        batch_size: int = 8,
        precision: str = "f32",
    ) -> None:
        self.tokenizer = load_tokenizer(model_dir)
        self.runner = load_runner(model_dir, backend=backend, precision=precision)
        self.max_seq_length, self.doc_stride, self.batch_size = max_seq_length, doc_stride, batch_size
        self.settings = settings or DecodeSettings()

    def __call__(self, question: str, context: str) -> Answer:
        return self.predict([{"question": question, "context": context}])[0]

    def predict(self, records: Iterable[Mapping[str, Any]], *, progress: bool = False) -> list[Answer]:
        """Answer `{"question", "context", "id"?}` records, in order."""
        rows = []
        for i, record in enumerate(records):
            for field in ("question", "context"):
                if not isinstance(record.get(field), str) or not record[field].strip():
                    raise DataError("must be a non-empty string", record=record.get("id", f"#{i + 1}"), field=field)
            rows.append(
                {
                    "id": str(record.get("id", i)),
                    "title": "",
                    "context": record["context"],
                    "question": record["question"],
                    "answers": {"text": [], "answer_start": []},
                }
            )
        examples = datasets.Dataset.from_list(rows, features=SQUAD_FEATURES)
        return self.predict_examples(examples, progress=progress)

    def predict_examples(self, examples: datasets.Dataset, *, progress: bool = False) -> list[Answer]:
        """Answer a SQuAD-layout dataset (as `qacompress.data.squad.load_examples` returns)."""
        features = prepare_eval_features(
            examples, self.tokenizer, max_seq_length=self.max_seq_length, doc_stride=self.doc_stride
        )
        start, end = run_features(
            self.runner,
            features,
            batch_size=self.batch_size,
            pad_token_id=self.tokenizer.pad_token_id or 0,
            progress=progress,
        )
        predictions = decode(examples, features, start, end, self.settings)
        answers = []
        for example_id in examples["id"]:
            text = predictions.answers.get(example_id, "")
            best = next((c for c in predictions.nbest.get(example_id, []) if c["text"] == text), None)
            offsets = best.get("offsets", [-1, -1]) if best and text else [-1, -1]
            score = float(best["probability"]) if best else 0.0
            answers.append(Answer(id=example_id, text=text, score=score, start=int(offsets[0]), end=int(offsets[1])))
        return answers
