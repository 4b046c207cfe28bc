"""Turn a QA model's start/end logits into answer texts.

A model scores every token as a possible answer start and end, per *feature* (a window of one
example's context). This module picks the best valid span per example across its features, with
the semantics of transformers' ``run_qa.py`` post-processing, but vectorised with numpy so that
evaluation of thousands of features is not dominated by Python loops over token pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qacompress.core.errors import QACompressError
from qacompress.core.settings import settings_from


@dataclass
class DecodeSettings:
    """How logits become answers: run_qa's flags of the same names (`DataTrainingArguments` derives them)."""

    version_2_with_negative: bool = field(default=False, metadata={"help": "Data has unanswerable questions"})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": "Answer '' when null score - best span score exceeds this (v2)"}
    )
    n_best_size: int = field(default=20, metadata={"help": "Candidate spans kept per question"})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens"})

    def __post_init__(self) -> None:
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise QACompressError("--n_best_size and --max_answer_length must be >= 1")

    @classmethod
    def from_args(cls, data_args: Any) -> DecodeSettings:
        """The settings a command's `DataTrainingArguments` ask for."""
        return settings_from(data_args, cls)

@dataclass
class QAPredictions:
    """Post-processed predictions, keyed by example id.

    ``nbest`` entries are ``{"text", "start_logit", "end_logit", "probability", "offsets"}``,
    best first; ``null_odds`` (v2 only) is null score minus best span score, the quantity that
    ``null_score_diff_threshold`` and the metrics' best-threshold search compare against.
    """

    answers: dict[str, str]
    nbest: dict[str, list[dict]]
    null_odds: dict[str, float] | None


def _column(data: Any, name: str) -> Any:
    """A column of a ``datasets.Dataset``, a dict of lists, or a list of row dicts."""
    if isinstance(data, list):
        return [row[name] for row in data]
    return data[name]


def _offsets_array(offset_mapping: Any, width: int) -> np.ndarray:
    """(num_features, width, 2) int array of char spans; -1 outside the context or past a feature's end."""
    offsets = np.full((len(offset_mapping), width, 2), -1, dtype=np.int64)
    for i, feature_offsets in enumerate(offset_mapping):
        n = len(feature_offsets)
        if n > width:
            raise ValueError(f"feature {i} has {n} tokens but the logits have only {width} columns")
        if n:
            offsets[i, :n] = np.asarray(feature_offsets, dtype=np.int64).reshape(n, 2)
    return offsets


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row, largest first."""
    part = np.argpartition(-values, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(values, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def postprocess_qa_predictions(
    examples: Any,
    features: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    cls_index: np.ndarray | None = None,
) -> QAPredictions:
    """Best answer span (and n-best list) per example from per-feature start/end logits.

    ``examples`` need columns ``id`` and ``context``; ``features`` need ``example_id`` and
    ``offset_mapping`` (``[-1, -1]`` for tokens outside the context). Both may be a
    ``datasets.Dataset``, a dict of lists or a list of dicts. Logit columns beyond a feature's
    length are ignored. Candidate spans are built from the ``n_best_size`` best context tokens as
    start and as end; a span is valid if it does not end before it starts and has at most
    ``max_answer_length`` tokens. An example's candidates are pooled over its features (not
    de-duplicated, as in ``run_qa.py``). The null score is the minimum CLS start+end score over the
    example's features (``cls_index`` per feature, default token 0). With
    ``version_2_with_negative`` the null candidate is always in the n-best list and the answer is
    "" when ``null_odds > null_score_diff_threshold``. An example without a valid span gets "" and
    a single null entry; examples without features are left out (the metrics count them as missing).
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError("n_best_size and max_answer_length must be at least 1")
    start = np.asarray(start_logits, dtype=np.float64)
    end = np.asarray(end_logits, dtype=np.float64)
    example_ids = list(_column(examples, "id"))
    contexts = list(_column(examples, "context"))
    feature_example_ids = list(_column(features, "example_id"))
    num_features = len(feature_example_ids)
    if start.ndim != 2 or start.shape != end.shape or start.shape[0] != num_features:
        raise ValueError(
            f"start/end logits must both have shape (num_features={num_features}, L); "
            f"got {start.shape} and {end.shape}"
        )
    width = start.shape[1]
    rows = np.arange(num_features)
    cls = np.zeros(num_features, dtype=np.int64) if cls_index is None else np.asarray(cls_index, dtype=np.int64)
    if cls.shape != (num_features,):
        raise ValueError(f"cls_index must have shape ({num_features},); got {cls.shape}")

    index_of = {example_id: i for i, example_id in enumerate(example_ids)}
    unknown = [eid for eid in feature_example_ids if eid not in index_of]
    if unknown:
        raise ValueError(f"{len(unknown)} features refer to unknown example ids, e.g. {unknown[0]!r}")
    feature_example = np.fromiter((index_of[eid] for eid in feature_example_ids), np.int64, num_features)

    offsets = _offsets_array(_column(features, "offset_mapping"), width)
    in_context = (offsets[:, :, 0] >= 0) & (offsets[:, :, 1] >= 0)

    # Candidate starts/ends: the k best context tokens of each feature, then the (F, k, k) span scores.
    k = min(n_best_size, width)
    starts = _top_k(np.where(in_context, start, -np.inf), k)
    ends = _top_k(np.where(in_context, end, -np.inf), k)
    start_scores = np.take_along_axis(start, starts, axis=1)
    end_scores = np.take_along_axis(end, ends, axis=1)
    length = ends[:, None, :] - starts[:, :, None] + 1
    valid = (
        np.take_along_axis(in_context, starts, axis=1)[:, :, None]
        & np.take_along_axis(in_context, ends, axis=1)[:, None, :]
        & (length >= 1)
        & (length <= max_answer_length)
    )
    span_scores = np.where(valid, start_scores[:, :, None] + end_scores[:, None, :], -np.inf)

    # Best n spans per feature, then all candidates sorted by (example, score descending).
    n = min(n_best_size, k * k)
    flat_scores = span_scores.reshape(num_features, k * k)
    pairs = _top_k(flat_scores, n)
    cand_feature = np.repeat(rows, n)
    cand_start = starts[cand_feature, pairs.ravel() // k]
    cand_end = ends[cand_feature, pairs.ravel() % k]
    cand_score = np.take_along_axis(flat_scores, pairs, axis=1).ravel()
    keep = np.isfinite(cand_score)
    cand_feature, cand_start, cand_end, cand_score = (
        cand_feature[keep], cand_start[keep], cand_end[keep], cand_score[keep]
    )
    cand_example = feature_example[cand_feature]
    order = np.lexsort((-cand_score, cand_example))
    cand_feature, cand_start, cand_end, cand_score, cand_example = (
        a[order] for a in (cand_feature, cand_start, cand_end, cand_score, cand_example)
    )
    num_examples = len(example_ids)
    cand_bounds = np.searchsorted(cand_example, np.arange(num_examples + 1))
    cand_char_start = offsets[cand_feature, cand_start, 0]
    cand_char_end = offsets[cand_feature, cand_end, 1]

    null_start = start[rows, cls]
    null_end = end[rows, cls]
    null_feature_scores = null_start + null_end
    feature_order = np.argsort(feature_example, kind="stable")
    feature_bounds = np.searchsorted(feature_example[feature_order], np.arange(num_examples + 1))

    answers: dict[str, str] = {}
    nbest: dict[str, list[dict]] = {}
    null_odds: dict[str, float] | None = {} if version_2_with_negative else None
    for ex in range(num_examples):
        own_features = feature_order[feature_bounds[ex] : feature_bounds[ex + 1]]
        if own_features.size == 0:
            continue
        example_id, context = example_ids[ex], contexts[ex]
        lo, hi = cand_bounds[ex], cand_bounds[ex + 1]
        null_feature = own_features[np.argmin(null_feature_scores[own_features])]
        null_score = float(null_feature_scores[null_feature])
        null = {
            "text": "",
            "start_logit": float(null_start[null_feature]),
            "end_logit": float(null_end[null_feature]),
            "score": null_score,
            "offsets": [0, 0],
        }
        with_null = version_2_with_negative or lo == hi
        best_text = context[cand_char_start[lo] : cand_char_end[lo]] if lo < hi else ""
        entries = [
            {
                "text": context[cand_char_start[j] : cand_char_end[j]],
                "start_logit": float(start[cand_feature[j], cand_start[j]]),
                "end_logit": float(end[cand_feature[j], cand_end[j]]),
                "score": float(cand_score[j]),
                "offsets": [int(cand_char_start[j]), int(cand_char_end[j])],
            }
            for j in range(lo, min(hi, lo + n_best_size - int(with_null)))
        ]
        if with_null:
            entries.append(null)
            entries.sort(key=lambda entry: -entry["score"])
        probabilities = _softmax(np.array([entry.pop("score") for entry in entries]))
        for entry, probability in zip(entries, probabilities):
            entry["probability"] = float(probability)
        nbest[example_id] = entries

        if null_odds is None:
            answers[example_id] = best_text
            continue
        best_score = float(cand_score[lo]) if lo < hi else -np.inf
        odds = null_score - best_score
        null_odds[example_id] = odds
        answers[example_id] = "" if odds > null_score_diff_threshold else best_text
    return QAPredictions(answers=answers, nbest=nbest, null_odds=null_odds)
