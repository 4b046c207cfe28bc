"""Turn SQuAD examples into fixed-size model features, as transformers' `run_qa.py` does.

A context longer than `max_seq_length` is split into several overlapping windows (`doc_stride`
tokens of overlap), each paired with the question. Training features carry the token positions of
the answer (or of the CLS token when the answer is not inside the window or there is none); evaluation
features carry, per token, the character span it covers in the context so that predicted token spans
can be mapped back to answer text. Character offsets need a fast (Rust) tokenizer.

Tokenizer failures are turned into clear errors up front: a `doc_stride` that leaves no room would
make the Rust tokenizer panic, and a question that fills the whole window leaves no context at all.
Such a question is reported as a `DataError` naming the record rather than silently truncated: cutting
a question changes what the model is asked, and the remedy (a larger `--max_seq_length`, a smaller
`--doc_stride`, or fixing the record) is the user's to choose. A tokenizer that drops the text leaves
windows without context tokens: a `ModelError` names it and the first example it fails on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import datasets

from qacompress.core.errors import DataError, ModelError, QACompressError

logger = logging.getLogger(__name__)

#: Model inputs a QA model takes; a feature dataset holds those the tokenizer produces.
MODEL_INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
#: Offsets of tokens outside the context (question, special tokens, padding) in evaluation features.
NOT_IN_CONTEXT = (-1, -1)


def input_columns(features: Any) -> list[str]:
    """The model-input columns that `features` has (no `token_type_ids` for tokenizers without them)."""
    return [c for c in MODEL_INPUT_NAMES if c in features.column_names]


def check_tokenizer(tokenizer: Any) -> None:
    """Refuse tokenizers that cannot map tokens back to characters or have no CLS token."""
    name = type(tokenizer).__name__
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{name} is a slow (Python) tokenizer: question answering needs the offsets mapping that only "
            "fast (Rust, `tokenizers`-backed) tokenizers provide; save the model with a fast tokenizer "
            "(tokenizer.json) or load it with AutoTokenizer(..., use_fast=True)"
        )
    if getattr(tokenizer, "cls_token_id", None) is None:
        raise ModelError(
            f"{name} has no CLS token: features of questions without an answer in the window point at it"
        )


def resolve_max_seq_length(tokenizer: Any, max_seq_length: int) -> int:
    """Clip `max_seq_length` to what the model accepts, warning as run_qa does: longer inputs would
    fail in the position embeddings."""
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(
            "--max_seq_length %d is larger than the maximum length of the model (%d); using %d",
            max_seq_length,
            tokenizer.model_max_length,
            tokenizer.model_max_length,
        )
        return int(tokenizer.model_max_length)
    return max_seq_length


def prepare_train_features(
    examples: datasets.Dataset,
    tokenizer: Any,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    pad_to_max_length: bool = True,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> datasets.Dataset:
    """Tokenize examples into training features: model inputs plus `start_positions` and
    `end_positions`, the token span of the first gold answer or the CLS index when the window does
    not contain it (or the question has no answer)."""
    return _map_features(
        examples,
        tokenizer,
        _train_batch,
        max_seq_length=max_seq_length,
        doc_stride=doc_stride,
        pad_to_max_length=pad_to_max_length,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing training examples",
    )


def prepare_eval_features(
    examples: datasets.Dataset,
    tokenizer: Any,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    pad_to_max_length: bool = True,
    num_proc: int | None = None,
    load_from_cache_file: bool = True,
) -> datasets.Dataset:
    """Tokenize examples into evaluation features: model inputs plus `example_id`, `cls_index` and
    `offset_mapping` ([char_start, char_end] per token, [-1, -1] outside the context), which
    post-processing needs to turn logits into answer text."""
    return _map_features(
        examples,
        tokenizer,
        _eval_batch,
        max_seq_length=max_seq_length,
        doc_stride=doc_stride,
        pad_to_max_length=pad_to_max_length,
        num_proc=num_proc,
        load_from_cache_file=load_from_cache_file,
        desc="Tokenizing evaluation examples",
    )


# ---------------------------------------------------------------------------------------- internals

_BatchFunction = Callable[..., dict[str, list[Any]]]


def _map_features(
    examples: datasets.Dataset,
    tokenizer: Any,
    batch_function: _BatchFunction,
    *,
    max_seq_length: int,
    doc_stride: int,
    pad_to_max_length: bool,
    num_proc: int | None,
    load_from_cache_file: bool,
    desc: str,
) -> datasets.Dataset:
    """Check the settings once, then run `batch_function` over the examples with `Dataset.map`, which
    gives run_qa's progress bars, caching and multiprocessing."""
    check_tokenizer(tokenizer)
    max_seq_length = resolve_max_seq_length(tokenizer, max_seq_length)
    window = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True)
    if not 0 <= doc_stride < window - 1:
        raise QACompressError(
            f"--doc_stride {doc_stride} does not fit --max_seq_length {max_seq_length}: a window has room for "
            f"{window} question and context tokens, and --doc_stride must be at least 0 and smaller than the part "
            "left for the context; use a smaller --doc_stride or a larger --max_seq_length"
        )
    return examples.map(
        functools.partial(
            batch_function,
            tokenizer=tokenizer,
            max_seq_length=max_seq_length,
            doc_stride=doc_stride,
            pad_to_max_length=pad_to_max_length,
        ),
        batched=True,
        num_proc=num_proc,
        remove_columns=examples.column_names,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
    )


def _tokenize(
    batch: dict[str, list[Any]], tokenizer: Any, max_seq_length: int, doc_stride: int, pad_to_max_length: bool
) -> tuple[Any, int]:
    """Tokenize a batch into overlapping windows; returns the encoding and the sequence index
    (0 or 1) of the context. The context goes second when padding is on the right, as in run_qa."""
    questions = [question.lstrip() for question in batch["question"]]
    _check_question_lengths(questions, batch["id"], tokenizer, max_seq_length, doc_stride)
    context_first = tokenizer.padding_side != "right"
    pair = (batch["context"], questions) if context_first else (questions, batch["context"])
    encoding = tokenizer(
        *pair,
        truncation="only_first" if context_first else "only_second",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    context_index = 0 if context_first else 1
    _check_context_tokens(encoding, context_index, batch["id"], tokenizer)
    return encoding, context_index


def _check_context_tokens(encoding: Any, context_index: int, ids: list[str], tokenizer: Any) -> None:
    """Every window must hold context tokens. A tokenizer that drops the text (e.g. a RoBERTa tokenizer
    rebuilt from vocab/merges files whose byte-level set-up got lost) leaves none: training would fail
    deep in the label search and evaluation would answer nothing, so name the tokenizer instead."""
    for feature, example in enumerate(encoding["overflow_to_sample_mapping"]):
        if context_index not in encoding.sequence_ids(feature):
            name = getattr(tokenizer, "name_or_path", "") or "?"
            raise ModelError(
                f"tokenizer {name} ({type(tokenizer).__name__}) leaves no context token in the features of example "
                f"{ids[example]!r}: it drops the context text; check its vocabulary and pre-tokenizer "
                "(tokenizer.json), or pass a working tokenizer with --tokenizer_name"
            )


def _check_question_lengths(
    questions: list[str], ids: list[str], tokenizer: Any, max_seq_length: int, doc_stride: int
) -> None:
    """The tokenizer fails (or panics) when the question leaves no more than `doc_stride` context
    tokens per window; name the record instead."""
    room = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True)
    lengths = map(len, tokenizer(questions, add_special_tokens=False)["input_ids"])
    for example_id, length in zip(ids, lengths):
        if length + doc_stride >= room:
            left = max(room - length, 0)
            raise DataError(
                f"the question has {length} tokens, which leaves {left} context tokens per window with "
                f"--max_seq_length {max_seq_length}; --doc_stride {doc_stride} must be smaller than that: use a "
                "larger --max_seq_length or a smaller --doc_stride, or shorten the question",
                record=example_id,
                field="question",
            )


def _context_span(sequence_ids: list[int | None], context_index: int) -> tuple[int, int]:
    """First and last token positions of the context in one window."""
    positions = [position for position, index in enumerate(sequence_ids) if index == context_index]
    return positions[0], positions[-1]


def _model_inputs(encoding: Any) -> dict[str, list[Any]]:
    return {name: encoding[name] for name in MODEL_INPUT_NAMES if name in encoding}


def _train_batch(
    batch: dict[str, list[Any]], *, tokenizer: Any, max_seq_length: int, doc_stride: int, pad_to_max_length: bool
) -> dict[str, list[Any]]:
    encoding, context_index = _tokenize(batch, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    start_positions, end_positions = [], []
    for feature, (input_ids, offsets, example) in enumerate(
        zip(encoding["input_ids"], encoding["offset_mapping"], encoding["overflow_to_sample_mapping"])
    ):
        start = end = input_ids.index(tokenizer.cls_token_id)
        answers = batch["answers"][example]
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first, last = _context_span(encoding.sequence_ids(feature), context_index)
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                # The answer lies inside this window: first token ending after its start, last token
                # starting before its end.
                token_start, token_end = first, last
                while offsets[token_start][1] <= start_char:
                    token_start += 1
                while offsets[token_end][0] >= end_char:
                    token_end -= 1
                if token_start <= token_end:
                    start, end = token_start, token_end
        start_positions.append(start)
        end_positions.append(end)
    return {**_model_inputs(encoding), "start_positions": start_positions, "end_positions": end_positions}


def _eval_batch(
    batch: dict[str, list[Any]], *, tokenizer: Any, max_seq_length: int, doc_stride: int, pad_to_max_length: bool
) -> dict[str, list[Any]]:
    encoding, context_index = _tokenize(batch, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    example_ids, offset_mappings, cls_indices = [], [], []
    for feature, (input_ids, offsets, example) in enumerate(
        zip(encoding["input_ids"], encoding["offset_mapping"], encoding["overflow_to_sample_mapping"])
    ):
        sequence_ids = encoding.sequence_ids(feature)
        example_ids.append(batch["id"][example])
        offset_mappings.append(
            [list(offset if index == context_index else NOT_IN_CONTEXT) for offset, index in zip(offsets, sequence_ids)]
        )
        cls_indices.append(input_ids.index(tokenizer.cls_token_id))
    return {
        **_model_inputs(encoding),
        "example_id": example_ids,
        "offset_mapping": offset_mappings,
        "cls_index": cls_indices,
    }
