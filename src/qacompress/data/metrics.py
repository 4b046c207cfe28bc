"""SQuAD v1.1 and v2.0 exact match and F1, computed here.

The scores follow the official evaluation scripts (``evaluate-v1.1.py`` and ``evaluate-v2.0.py``
from the SQuAD site) so numbers are comparable with published results, without downloading a
metric script or depending on the ``evaluate`` library at run time.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace.

    The official scripts compare answers only after this normalisation, so "The Broncos!" and
    "broncos" count as the same answer.
    """
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 when both strings are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 between normalised answers, as a fraction in [0, 1].

    Uses the v2.0 rule for empty answers (both empty: 1.0, one empty: 0.0) so that "no answer"
    predictions for unanswerable questions score correctly; otherwise identical to v1.1.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_answers(answers: list[str], version_2: bool) -> list[str]:
    """Gold texts to score against; the v2 script drops golds that normalise to nothing."""
    if version_2:
        answers = [a for a in answers if normalize_answer(a)]
    return answers or [""]


def _average(scores: dict[str, float], ids: list[str]) -> float:
    return 100.0 * sum(scores[i] for i in ids) / len(ids)


def _find_best_thresh(
    predictions: dict[str, str],
    scores: dict[str, float],
    null_odds: dict[str, float],
    has_ans: dict[str, bool],
) -> tuple[float, float]:
    """Best score over "predict no answer when null_odds > thresh", as in ``find_best_thresh``.

    Start with every question answered "no answer" (unanswerable ones correct), then switch
    questions to their predicted text in increasing order of null odds, keeping the best running
    total. Questions without a prediction score 0 whatever the threshold.
    """
    answered = [qid for qid in has_ans if qid in predictions]
    current = sum(1 for qid in answered if not has_ans[qid])
    best, best_thresh = current, 0.0
    for qid in sorted(answered, key=lambda q: null_odds[q]):
        if has_ans[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_thresh = current, null_odds[qid]
    return 100.0 * best / len(has_ans), float(best_thresh)


def question_scores(
    predictions: dict[str, str], references: dict[str, list[str]], *, version_2: bool = False
) -> tuple[dict[str, float], dict[str, float], int]:
    """(exact match, F1, how many references had no prediction): per question id, as fractions in [0, 1].

    The per-question scores are what a paired comparison of two models resamples
    (`qacompress.data.intervals`); `squad_metrics` averages them. A reference without a prediction scores 0.
    """
    if not references:
        raise ValueError("references is empty; there is nothing to score")
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    missing = 0
    for qid, answers in references.items():
        if qid not in predictions:
            missing += 1
            exact[qid] = f1[qid] = 0.0
            continue
        golds = _gold_answers(list(answers), version_2)
        exact[qid] = max(exact_match_score(predictions[qid], g) for g in golds)
        f1[qid] = max(f1_score(predictions[qid], g) for g in golds)
    return exact, f1, missing


def squad_metrics(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    *,
    version_2: bool = False,
    null_odds: dict[str, float] | None = None,
) -> dict[str, float]:
    """Exact match and F1 in percent, averaged over every id in ``references``.

    ``references[id]`` lists the gold texts; an empty list marks an unanswerable (v2) question,
    which only the empty prediction answers correctly. A reference without a prediction scores 0
    and is counted under ``"missing"`` (with a warning), so a partial prediction file cannot
    inflate the score. With ``version_2``, HasAns/NoAns breakdowns are added, and with
    ``null_odds`` (null score minus best span score, the script's ``na_probs``) the best
    no-answer threshold is searched; that search is meaningful when the predictions are the best
    non-null spans.
    """
    exact, f1, missing = question_scores(predictions, references, version_2=version_2)
    ids = list(references)
    result: dict[str, float] = {"exact_match": _average(exact, ids), "f1": _average(f1, ids)}
    if version_2:
        result["total"] = len(ids)
        has_ans = {qid: bool(references[qid]) for qid in ids}
        for prefix, wanted in (("HasAns", True), ("NoAns", False)):
            group = [qid for qid in ids if has_ans[qid] == wanted]
            if group:
                result[f"{prefix}_exact_match"] = _average(exact, group)
                result[f"{prefix}_f1"] = _average(f1, group)
                result[f"{prefix}_total"] = len(group)
        if null_odds is not None:
            lacking = [qid for qid in ids if qid in predictions and qid not in null_odds]
            if lacking:
                raise ValueError(f"null_odds has no value for {len(lacking)} predicted ids, e.g. {lacking[0]!r}")
            for name, scores in (("exact_match", exact), ("f1", f1)):
                best, thresh = _find_best_thresh(predictions, scores, null_odds, has_ans)
                result[f"best_{name}"] = best
                result[f"best_{name}_thresh"] = thresh
    if missing:
        warnings.warn(f"{missing} of {len(ids)} reference ids have no prediction; they score 0", stacklevel=2)
        result["missing"] = missing
    return result
