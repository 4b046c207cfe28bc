"""SQuAD EM/F1 against values worked out by hand from the official scripts' rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qacompress.data.intervals import paired_bootstrap
from qacompress.data.metrics import exact_match_score, f1_score, normalize_answer, question_scores, squad_metrics


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("an apple and a pear", "apple and pear"),
        ("theater Anthem", "theater anthem"),  # articles only as whole words
        ("U.S. Army!", "us army"),
        ("the-end", "theend"),  # punctuation goes before articles, so no article is left here
        ("\t a\n  b  ", "b"),
        ("  Hello,   WORLD  ", "hello world"),
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_exact_match_ignores_article_case_and_punctuation() -> None:
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match_score("Denver Broncos.", "denver broncos") == 1.0
    assert exact_match_score("Broncos", "Denver Broncos") == 0.0


def test_f1_by_hand() -> None:
    # one common token; precision 1/2, recall 1/2 -> F1 1/2
    assert f1_score("Broncos won", "Denver Broncos") == pytest.approx(0.5)
    # "the" is dropped: pred {denver, broncos}, gold {denver, broncos, team}: P=1, R=2/3 -> 0.8
    assert f1_score("the Denver Broncos", "Denver Broncos team") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: pred [x, x, y], gold [x, y]: 2 shared, P=2/3, R=1 -> 0.8
    assert f1_score("x x y", "x y") == pytest.approx(0.8)
    assert f1_score("Paris", "London") == 0.0


def test_f1_empty_answers_follow_v2_rule() -> None:
    assert f1_score("", "") == 1.0
    assert f1_score("the", "") == 1.0  # normalises to empty
    assert f1_score("", "Paris") == 0.0
    assert f1_score("Paris", "") == 0.0


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab .,the", max_size=12), st.text(alphabet="ab .,the", max_size=12))
def test_f1_properties(prediction: str, gold: str) -> None:
    f1 = f1_score(prediction, gold)
    assert 0.0 <= f1 <= 1.0
    assert f1 == pytest.approx(f1_score(gold, prediction))
    if exact_match_score(prediction, gold):
        assert f1 == 1.0


def test_v1_takes_max_over_golds_and_averages_in_percent() -> None:
    references = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Santa Clara", "Levi's Stadium"]}
    predictions = {"q1": "Broncos", "q2": "Stadium in Santa Clara"}
    result = squad_metrics(predictions, references)
    # q1: EM 1 via second gold. q2: EM 0; F1 vs "Santa Clara": P=2/4, R=1 -> 2/3;
    # vs "Levi's Stadium" ("levis stadium"): P=1/4, R=1/2 -> 1/3; max 2/3.
    assert result == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


def test_missing_prediction_counts_as_zero_and_warns() -> None:
    references = {"q1": ["Paris"], "q2": ["London"]}
    predictions = {"q1": "Paris", "unrelated": "ignored"}
    with pytest.warns(UserWarning, match="1 of 2"):
        result = squad_metrics(predictions, references)
    assert result == {"exact_match": 50.0, "f1": 50.0, "missing": 1}


def test_no_missing_key_when_complete() -> None:
    assert "missing" not in squad_metrics({"q": "x"}, {"q": ["x"]})


def test_empty_references_rejected() -> None:
    with pytest.raises(ValueError):
        squad_metrics({}, {})


# q1, q3 answerable; q2, q4 unanswerable. q1 right, q2 wrongly answered, q3 partly right
# (F1 vs "the blue sky": pred [blue], gold [blue, sky] -> 2/3), q4 correctly abstains.
V2_REFERENCES = {"q1": ["Paris"], "q2": [], "q3": ["the blue sky"], "q4": []}
V2_PREDICTIONS = {"q1": "Paris", "q2": "London", "q3": "blue", "q4": ""}


def test_v2_has_ans_no_ans_split() -> None:
    result = squad_metrics(V2_PREDICTIONS, V2_REFERENCES, version_2=True)
    assert result == pytest.approx(
        {
            "exact_match": 50.0,
            "f1": 100 * (1 + 0 + 2 / 3 + 1) / 4,
            "total": 4,
            "HasAns_exact_match": 50.0,
            "HasAns_f1": 100 * (1 + 2 / 3) / 2,
            "HasAns_total": 2,
            "NoAns_exact_match": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        }
    )


def test_v2_empty_prediction_is_right_only_for_unanswerable() -> None:
    result = squad_metrics({"a": "", "b": ""}, {"a": [], "b": ["Paris"]}, version_2=True)
    assert result["NoAns_exact_match"] == 100.0 and result["NoAns_f1"] == 100.0
    assert result["HasAns_exact_match"] == 0.0 and result["HasAns_f1"] == 0.0


def test_v2_only_non_empty_groups_reported() -> None:
    result = squad_metrics({"a": "x"}, {"a": ["x"]}, version_2=True)
    assert "HasAns_total" in result and not any(key.startswith("NoAns") for key in result)


def test_v2_gold_that_normalises_to_nothing_is_dropped() -> None:
    # the v2 script keeps only golds with a non-empty normalised form, so ["The"] scores like [""]
    assert squad_metrics({"a": ""}, {"a": ["The"]}, version_2=True)["exact_match"] == 100.0
    assert squad_metrics({"a": ""}, {"a": ["The"]})["exact_match"] == 100.0  # v1: "" == normalised "the"


def test_v2_best_threshold_search() -> None:
    null_odds = {"q4": -3.0, "q1": -2.0, "q3": -1.0, "q2": 0.5}
    result = squad_metrics(V2_PREDICTIONS, V2_REFERENCES, version_2=True, null_odds=null_odds)
    # Start with all abstaining: q2, q4 right -> 2. Answer in null-odds order:
    # q4 (pred "", still right -> +0); q1 (+1); q3 (+0 EM, +2/3 F1); q2 (-1, it was right to abstain).
    # EM running: 2, 3, 3, 2 -> best 3 at -2.0. F1 running: 2, 3, 3.667, 2.667 -> best at -1.0.
    assert result["best_exact_match"] == pytest.approx(75.0)
    assert result["best_exact_match_thresh"] == -2.0
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == -1.0


def test_v2_best_threshold_defaults_to_zero_when_abstaining_everywhere_is_best() -> None:
    result = squad_metrics({"a": "x", "b": "y"}, {"a": [], "b": []}, version_2=True, null_odds={"a": 1.0, "b": 2.0})
    assert result["best_exact_match"] == 100.0 and result["best_exact_match_thresh"] == 0.0


def test_v2_best_threshold_with_missing_prediction() -> None:
    # "m" has no prediction: 0 whatever the threshold, but still in the denominator.
    with pytest.warns(UserWarning):
        result = squad_metrics({"a": "x"}, {"a": ["x"], "m": []}, version_2=True, null_odds={"a": -1.0})
    assert result["best_exact_match"] == 50.0 and result["best_exact_match_thresh"] == -1.0
    assert result["missing"] == 1


def test_v2_null_odds_must_cover_predictions() -> None:
    with pytest.raises(ValueError, match="null_odds"):
        squad_metrics({"a": "x"}, {"a": ["x"]}, version_2=True, null_odds={})


# --- per-question scores and the paired bootstrap --------------------------------------------------


def test_question_scores_are_what_squad_metrics_averages() -> None:
    references = {"a": ["Denver Broncos"], "b": ["Carolina Panthers", "Panthers"], "c": ["Santa Clara"]}
    predictions = {"a": "the Denver Broncos", "b": "Panthers won"}
    exact, f1, missing = question_scores(predictions, references)
    assert exact == {"a": 1.0, "b": 0.0, "c": 0.0} and missing == 1
    assert f1 == {"a": 1.0, "b": pytest.approx(2 / 3), "c": 0.0}  # "panthers won" vs "panthers": P 1/2, R 1
    with pytest.warns(UserWarning, match="1 of 3"):
        total = squad_metrics(predictions, references)
    assert total["f1"] == pytest.approx(100 * sum(f1.values()) / 3) and total["exact_match"] == pytest.approx(100 / 3)


def test_paired_bootstrap_on_a_known_difference() -> None:
    """A constant shift has a zero-width interval; a noisy one has the width normal theory gives
    (1.96 standard errors of the paired differences, for a mean over many questions) and contains
    the difference the questions were drawn around."""
    ids = [f"q{i}" for i in range(4000)]
    a = {q: 0.5 for q in ids}
    shifted = paired_bootstrap(a, {q: 0.53 for q in ids}, resamples=500)
    assert shifted.diff == pytest.approx(3.0) and shifted.low == pytest.approx(3.0) and shifted.high == pytest.approx(3.0)
    rng = np.random.default_rng(1)
    first = dict(zip(ids, rng.integers(0, 2, len(ids)).astype(float)))  # EM-like 0/1 scores
    flips = rng.random(len(ids)) < 0.1  # the second model changes 10% of the answers
    second = {q: (1.0 - first[q]) if flip else first[q] for q, flip in zip(ids, flips)}
    d = 100 * (np.array([second[q] for q in ids]) - np.array([first[q] for q in ids]))
    result = paired_bootstrap(first, second, resamples=2000)
    assert result.diff == pytest.approx(d.mean())
    half_width = 1.96 * d.std() / np.sqrt(len(ids))
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.1), (result, half_width)
    assert result.low < d.mean() < result.high and result.questions == 4000
    # Unpaired data (different questions) is refused rather than compared.
    with pytest.raises(ValueError, match="different questions"):
        paired_bootstrap(first, {**second, "extra": 1.0})
