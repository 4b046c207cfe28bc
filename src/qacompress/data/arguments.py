"""run_qa.py's data flags (`DataTrainingArguments`), and the examples and features they select for one
split: the one way every command goes from a data source to model features."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qacompress.core.errors import QACompressError
from qacompress.core.settings import with_flags
from qacompress.data.features import prepare_eval_features, prepare_train_features
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import load_examples

#: Split -> (its file flag, its sample-limit flag).
SPLIT_FLAGS = {
    "train": ("train_file", "max_train_samples"),
    "validation": ("validation_file", "max_eval_samples"),
    "test": ("test_file", "max_predict_samples"),
}


@dataclass
class _DataFlags:
    """Which data to train and evaluate on, how to cut it into features, and how to decode answers."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (e.g. squad, squad_v2)"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration"})
    train_file: str | None = field(default=None, metadata={"help": "Training data: .json (SQuAD), .jsonl or .csv"})
    validation_file: str | None = field(default=None, metadata={"help": "Evaluation data: .json, .jsonl or .csv"})
    test_file: str | None = field(default=None, metadata={"help": "Prediction data: .json, .jsonl or .csv"})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached features"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation"})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per feature (question + context window)"})
    pad_to_max_length: bool = field(
        default=True, metadata={"help": "Pad every feature to max_seq_length (else pad per batch)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation examples"})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test examples"})
    doc_stride: int = field(default=128, metadata={"help": "Overlap in tokens between context windows"})

    def __post_init__(self) -> None:
        if self.doc_stride < 0 or self.max_seq_length < 16:
            raise QACompressError(
                f"--max_seq_length must be >= 16 and --doc_stride >= 0 (got {self.max_seq_length}, {self.doc_stride})"
            )
        DecodeSettings.from_args(self)  # its own checks, for the flags derived from it


#: run_qa.py's data flags: the above, then those of `DecodeSettings` (--version_2_with_negative, --n_best_size, ...).
DataTrainingArguments = with_flags("DataTrainingArguments", _DataFlags, DecodeSettings)


def split_source(args: DataTrainingArguments, split: str, needed_by: str) -> str:
    """The file (or Hub dataset) of `split`, refused with the flags to give when there is none."""
    file_flag = SPLIT_FLAGS[split][0]
    source = getattr(args, file_flag) or args.dataset_name
    if not source:
        raise QACompressError(f"{needed_by} needs --{file_flag} FILE or --dataset_name NAME")
    return source


def load_split(
    args: DataTrainingArguments,
    tokenizer: Any,
    split: str,
    *,
    needed_by: str,
    labels: bool,
    require_answers: bool = True,
    version_2_with_negative: bool | None = None,
    pad_to_max_length: bool | None = None,
) -> tuple[Any, Any]:
    """(examples, features) of `split` as the flags select them: training features with answer positions
    (`labels`), or evaluation features with the offsets that decoding needs. `version_2_with_negative` and
    `pad_to_max_length` override the flags (a calibration set accepts unanswerable questions and pads per batch)."""
    source = split_source(args, split, needed_by)
    v2 = args.version_2_with_negative if version_2_with_negative is None else version_2_with_negative
    examples = load_examples(
        source, split=split, dataset_config_name=args.dataset_config_name, version_2_with_negative=v2,
        require_answers=require_answers, max_samples=getattr(args, SPLIT_FLAGS[split][1]),
    )  # fmt: skip
    prepare = prepare_train_features if labels else prepare_eval_features
    features = prepare(
        examples, tokenizer, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
        pad_to_max_length=args.pad_to_max_length if pad_to_max_length is None else pad_to_max_length,
        num_proc=args.preprocessing_num_workers, load_from_cache_file=not args.overwrite_cache,
    )  # fmt: skip
    return examples, features
