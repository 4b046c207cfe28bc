"""Span selection from logits: hand-made cases with known answers, and a naive double loop on random logits."""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pytest

from qacompress.data.postprocess import postprocess_qa_predictions

CONTEXT = "Denver Broncos won the Super Bowl 50 in 2016"
# word index:  0      1      2   3    4    5   6  7   8
QUESTION_LEN = 2  # tokens: [CLS] q q [SEP] <context words> [SEP]


def word_spans(context: str) -> list[list[int]]:
    return [[m.start(), m.end()] for m in re.finditer(r"\S+", context)]


def feature_offsets(context: str, first: int = 0, last: int | None = None) -> list[list[int]]:
    """Offsets of a feature holding context words [first, last), framed by CLS/question/SEP tokens."""
    return [[-1, -1]] * (QUESTION_LEN + 2) + word_spans(context)[first:last] + [[-1, -1]]


def tok(word: int, first: int = 0) -> int:
    """Token index of context word `word` in a feature starting at word `first`."""
    return QUESTION_LEN + 2 + word - first


def logits(width: int, values: dict[int, float], base: float = 0.0) -> np.ndarray:
    row = np.full(width, base)
    for index, value in values.items():
        row[index] = value
    return row


def run(offsets: list[list[list[int]]], start: list[np.ndarray], end: list[np.ndarray], context=CONTEXT, **kw):
    examples = {"id": ["ex"], "context": [context]}
    features = {"example_id": ["ex"] * len(offsets), "offset_mapping": offsets}
    return postprocess_qa_predictions(examples, features, np.stack(start), np.stack(end), **kw)


WIDTH = len(feature_offsets(CONTEXT))


def test_picks_highest_scoring_span() -> None:
    start = logits(WIDTH, {tok(0): 5.0, tok(4): 3.0})
    end = logits(WIDTH, {tok(1): 5.0, tok(6): 4.0})
    result = run([feature_offsets(CONTEXT)], [start], [end])
    assert result.answers == {"ex": "Denver Broncos"}
    assert result.null_odds is None
    assert result.nbest["ex"][0]["offsets"] == [0, 14]


def test_ignores_span_ending_before_start() -> None:
    start = logits(WIDTH, {tok(5): 10.0, tok(4): 5.0})
    end = logits(WIDTH, {tok(0): 10.0, tok(5): 6.0})
    # (Bowl, Denver) would score 20 but ends before it starts; (Bowl, Bowl) scores 16.
    assert run([feature_offsets(CONTEXT)], [start], [end]).answers["ex"] == "Bowl"


def test_ignores_span_longer_than_max_answer_length() -> None:
    start = logits(WIDTH, {tok(0): 10.0})
    end = logits(WIDTH, {tok(4): 10.0, tok(1): 5.0})
    assert run([feature_offsets(CONTEXT)], [start], [end]).answers["ex"] == "Denver Broncos won the Super"
    result = run([feature_offsets(CONTEXT)], [start], [end], max_answer_length=2)
    assert result.answers["ex"] == "Denver Broncos"


def test_ignores_question_and_special_tokens() -> None:
    last = len(feature_offsets(CONTEXT)) - 1  # final [SEP]
    start = logits(WIDTH, {0: 50.0, 1: 40.0, 3: 30.0, tok(2): 1.0})
    end = logits(WIDTH, {0: 50.0, 2: 40.0, last: 30.0, tok(3): 1.0})
    result = run([feature_offsets(CONTEXT)], [start], [end])
    assert result.answers["ex"] == "won the"
    assert all(entry["text"] for entry in result.nbest["ex"])


def test_ignores_padding_columns_beyond_feature_length() -> None:
    short = feature_offsets(CONTEXT, 0, 4)  # "Denver Broncos won the"
    width = len(short) + 5
    start = logits(width, {tok(1): 2.0, **{i: 100.0 for i in range(len(short), width)}})
    end = logits(width, {tok(2): 2.0, **{i: 100.0 for i in range(len(short), width)}})
    assert run([short], [start], [end]).answers["ex"] == "Broncos won"


def test_rejects_feature_longer_than_logits() -> None:
    with pytest.raises(ValueError, match="tokens"):
        run([feature_offsets(CONTEXT)], [np.zeros(5)], [np.zeros(5)])


def two_strides(best_in_second: float, null_first: float = 0.0, null_second: float = 0.0):
    """Features over words [0, 5) and [3, 9) of CONTEXT, padded to a common width with -100."""
    first, second = feature_offsets(CONTEXT, 0, 5), feature_offsets(CONTEXT, 3, 9)
    width = max(len(first), len(second))
    s1 = logits(width, {0: null_first / 2, tok(0): 3.0})
    e1 = logits(width, {0: null_first / 2, tok(1): 3.0})
    s2 = logits(width, {0: null_second / 2, tok(7, 3): best_in_second / 2})
    e2 = logits(width, {0: null_second / 2, tok(8, 3): best_in_second / 2})
    for row, n in ((s1, len(first)), (e1, len(first)), (s2, len(second)), (e2, len(second))):
        row[n:] = -100.0
    return [first, second], [s1, s2], [e1, e2]


def test_combines_features_of_one_example() -> None:
    offsets, start, end = two_strides(best_in_second=10.0)
    result = run(offsets, start, end)
    assert result.answers["ex"] == "in 2016"
    assert [e["text"] for e in result.nbest["ex"][:2]] == ["in 2016", "Denver Broncos"]
    offsets, start, end = two_strides(best_in_second=4.0)
    assert run(offsets, start, end).answers["ex"] == "Denver Broncos"


def test_v2_null_answer_depends_on_threshold() -> None:
    # best span: "in 2016", score 10; null score 12 in both features -> null odds 2
    offsets, start, end = two_strides(best_in_second=10.0, null_first=12.0, null_second=12.0)
    result = run(offsets, start, end, version_2_with_negative=True)
    assert result.null_odds == {"ex": pytest.approx(2.0)}
    assert result.answers["ex"] == ""
    kept = run(offsets, start, end, version_2_with_negative=True, null_score_diff_threshold=2.5)
    assert kept.answers["ex"] == "in 2016"


def test_v2_null_score_is_minimum_over_features() -> None:
    offsets, start, end = two_strides(best_in_second=10.0, null_first=30.0, null_second=7.0)
    result = run(offsets, start, end, version_2_with_negative=True)
    assert result.null_odds == {"ex": pytest.approx(7.0 - 10.0)}
    assert result.answers["ex"] == "in 2016"
    null_entry = next(e for e in result.nbest["ex"] if e["text"] == "")
    assert null_entry["start_logit"] + null_entry["end_logit"] == pytest.approx(7.0)


def test_nbest_order_size_and_probabilities() -> None:
    rng = np.random.default_rng(3)
    start, end = rng.normal(size=WIDTH), rng.normal(size=WIDTH)
    result = run([feature_offsets(CONTEXT)], [start], [end], n_best_size=4)
    entries = result.nbest["ex"]
    assert len(entries) == 4
    scores = [e["start_logit"] + e["end_logit"] for e in entries]
    assert scores == sorted(scores, reverse=True)
    probabilities = np.array([e["probability"] for e in entries])
    assert probabilities.sum() == pytest.approx(1.0)
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(probabilities, expected)
    assert result.answers["ex"] == entries[0]["text"]


def test_v2_nbest_always_holds_the_null_candidate() -> None:
    offsets, start, end = two_strides(best_in_second=10.0, null_first=-50.0, null_second=-50.0)
    result = run(offsets, start, end, version_2_with_negative=True, n_best_size=3)
    texts = [e["text"] for e in result.nbest["ex"]]
    assert len(texts) == 3 and texts[0] == "in 2016" and texts[-1] == ""
    assert sum(e["probability"] for e in result.nbest["ex"]) == pytest.approx(1.0)


def test_cls_index_for_left_padding() -> None:
    pad = 3
    offsets = [[-1, -1]] * pad + feature_offsets(CONTEXT)
    width = len(offsets)
    start = logits(width, {0: -40.0, pad: 6.0, pad + tok(2): 2.0})
    end = logits(width, {0: -40.0, pad: 6.0, pad + tok(2): 2.0})
    result = run([offsets], [start], [end], version_2_with_negative=True, cls_index=np.array([pad]))
    assert result.null_odds == {"ex": pytest.approx(12.0 - 4.0)}
    assert result.answers["ex"] == ""
    default = run([offsets], [start], [end], version_2_with_negative=True)
    assert default.null_odds == {"ex": pytest.approx(-80.0 - 4.0)}
    assert default.answers["ex"] == "won"


@pytest.mark.parametrize("version_2", [False, True])
def test_no_valid_span_returns_empty_answer(version_2: bool) -> None:
    # with one candidate start (word 5) and one end (word 1) the only pair ends before it starts
    start = logits(WIDTH, {tok(5): 9.0})
    end = logits(WIDTH, {tok(1): 9.0})
    result = run([feature_offsets(CONTEXT)], [start], [end], n_best_size=1, version_2_with_negative=version_2)
    assert result.answers["ex"] == ""
    assert [e["text"] for e in result.nbest["ex"]] == [""]
    assert result.nbest["ex"][0]["probability"] == 1.0
    if version_2:
        assert result.null_odds == {"ex": float("inf")}


def test_feature_without_context_tokens() -> None:
    offsets = [[-1, -1]] * 6
    result = run([offsets], [np.zeros(6)], [np.zeros(6)], context="abc")
    assert result.answers == {"ex": ""}


def _dataset(columns: dict[str, list]):
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict(columns)


def _rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


@pytest.mark.parametrize("container", [dict, _dataset, _rows], ids=["dict", "Dataset", "rows"])
def test_accepts_dicts_datasets_and_rows(container) -> None:
    offsets, start, end = two_strides(best_in_second=10.0)
    other = "Paris is in France"
    other_offsets = feature_offsets(other) + [[-1, -1]] * (len(start[0]) - len(feature_offsets(other)))
    other_start = logits(len(start[0]), {tok(0): 5.0})
    other_end = logits(len(start[0]), {tok(0): 5.0})
    examples = container({"id": ["a", "b"], "context": [CONTEXT, other], "question": ["q1", "q2"]})
    # features deliberately interleaved and not in example order
    features = container({"example_id": ["a", "b", "a"], "offset_mapping": [offsets[0], other_offsets, offsets[1]]})
    result = postprocess_qa_predictions(
        examples, features, np.stack([start[0], other_start, start[1]]), np.stack([end[0], other_end, end[1]])
    )
    assert result.answers == {"a": "in 2016", "b": "Paris"}


def test_example_without_features_is_left_out() -> None:
    examples = {"id": ["a", "b"], "context": [CONTEXT, "unused"]}
    features = {"example_id": ["a"], "offset_mapping": [feature_offsets(CONTEXT)]}
    zeros = np.zeros((1, WIDTH))
    result = postprocess_qa_predictions(examples, features, zeros, zeros, version_2_with_negative=True)
    assert set(result.answers) == set(result.nbest) == set(result.null_odds) == {"a"}


def test_rejects_inconsistent_inputs() -> None:
    examples = {"id": ["a"], "context": [CONTEXT]}
    features = {"example_id": ["zzz"], "offset_mapping": [feature_offsets(CONTEXT)]}
    zeros = np.zeros((1, WIDTH))
    with pytest.raises(ValueError, match="unknown example"):
        postprocess_qa_predictions(examples, features, zeros, zeros)
    features = {"example_id": ["a"], "offset_mapping": [feature_offsets(CONTEXT)]}
    with pytest.raises(ValueError, match="shape"):
        postprocess_qa_predictions(examples, features, zeros, np.zeros((2, WIDTH)))
    with pytest.raises(ValueError, match="cls_index"):
        postprocess_qa_predictions(examples, features, zeros, zeros, cls_index=np.zeros(3, dtype=int))


# --- comparison with a naive double loop -------------------------------------------------------


def naive(examples, features, start, end, *, version_2, n_best, max_len, threshold):
    """Straightforward per-example loop over (start, end) token pairs; same rules, no vectorisation."""
    by_example = defaultdict(list)
    for f, example_id in enumerate(features["example_id"]):
        by_example[example_id].append(f)
    answers, nbest, odds = {}, {}, {}
    for example_id, context in zip(examples["id"], examples["context"]):
        spans, null = [], None
        for f in by_example[example_id]:
            offsets = features["offset_mapping"][f]
            null = start[f][0] + end[f][0] if null is None else min(null, start[f][0] + end[f][0])
            in_context = [i for i, o in enumerate(offsets) if list(o) != [-1, -1]]
            top_starts = sorted(in_context, key=lambda i: -start[f][i])[:n_best]
            top_ends = sorted(in_context, key=lambda i: -end[f][i])[:n_best]
            for s in top_starts:
                for e in top_ends:
                    if s <= e < s + max_len:
                        spans.append((start[f][s] + end[f][e], context[offsets[s][0] : offsets[e][1]]))
        spans.sort(key=lambda c: -c[0])
        best = spans[0] if spans else (-np.inf, "")
        if version_2 or not spans:
            listed = sorted(spans + [(null, "")], key=lambda c: -c[0])[:n_best]
            if (null, "") not in listed:
                listed[-1] = (null, "")
        else:
            listed = spans[:n_best]
        nbest[example_id] = listed
        if version_2:
            odds[example_id] = null - best[0]
            answers[example_id] = "" if odds[example_id] > threshold else best[1]
        else:
            answers[example_id] = best[1]
    return answers, nbest, odds


def random_case(rng: np.random.Generator):
    vocabulary = ["alpha", "be", "c", "delta", "echo", "fox", "golf", "hotel"]
    examples = {"id": [], "context": []}
    features = {"example_id": [], "offset_mapping": []}
    for ex in range(12):
        context = " ".join(rng.choice(vocabulary, size=int(rng.integers(1, 25))))
        examples["id"].append(f"e{ex}")
        examples["context"].append(context)
        spans = word_spans(context)
        question = int(rng.integers(1, 4))
        window, stride_start = 8, 0
        while True:  # overlapping windows of up to 8 words, stride 5
            chunk = spans[stride_start : stride_start + window]
            features["example_id"].append(f"e{ex}")
            features["offset_mapping"].append([[-1, -1]] * (question + 2) + chunk + [[-1, -1]])
            if stride_start + window >= len(spans):
                break
            stride_start += 5
    order = rng.permutation(len(features["example_id"]))  # features need not be grouped
    features = {k: [v[i] for i in order] for k, v in features.items()}
    width = max(len(o) for o in features["offset_mapping"]) + 2
    start, end = rng.normal(size=(2, len(order), width)) * 3
    for f, offsets in enumerate(features["offset_mapping"]):
        start[f, len(offsets) :] = rng.choice([-100.0, 100.0])
        end[f, len(offsets) :] = rng.choice([-100.0, 100.0])
    return examples, features, start, end


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("version_2", [False, True])
def test_matches_naive_double_loop(seed: int, version_2: bool) -> None:
    rng = np.random.default_rng(seed)
    examples, features, start, end = random_case(rng)
    n_best, max_len = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    threshold = float(rng.normal())
    result = postprocess_qa_predictions(
        examples,
        features,
        start,
        end,
        version_2_with_negative=version_2,
        n_best_size=n_best,
        max_answer_length=max_len,
        null_score_diff_threshold=threshold,
    )
    answers, nbest, odds = naive(
        examples, features, start, end, version_2=version_2, n_best=n_best, max_len=max_len, threshold=threshold
    )
    assert result.answers == answers
    for example_id, context in zip(examples["id"], examples["context"]):
        got = result.nbest[example_id]
        assert [e["text"] for e in got] == [text for _, text in nbest[example_id]]
        np.testing.assert_allclose([e["start_logit"] + e["end_logit"] for e in got], [s for s, _ in nbest[example_id]])
        assert all(context[e["offsets"][0] : e["offsets"][1]] == e["text"] for e in got)
        assert result.answers[example_id] in context
    if version_2:
        assert result.null_odds.keys() == odds.keys()
        np.testing.assert_allclose([result.null_odds[k] for k in odds], list(odds.values()))


def test_real_tokenizer_features_with_stride(tokenizer) -> None:
    """Offsets from the MiniLM fast tokenizer (question tokens set to [-1, -1]) give back exact text."""
    context = "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area."
    answer = "Levi's Stadium"
    encoded = tokenizer(
        ["Where was the game played?"],
        [context],
        truncation="only_second",
        max_length=24,
        stride=6,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    num_features = len(encoded["input_ids"])
    assert num_features > 1
    offsets = [
        [list(o) if encoded.sequence_ids(f)[i] == 1 else [-1, -1] for i, o in enumerate(encoded["offset_mapping"][f])]
        for f in range(num_features)
    ]
    answer_start = context.index(answer)
    start = np.zeros((num_features, 24))
    end = np.zeros((num_features, 24))
    for f, feature in enumerate(offsets):  # mark the answer's first/last token wherever a feature holds both
        first = [i for i, (s, _) in enumerate(feature) if s == answer_start]
        last = [i for i, (_, e) in enumerate(feature) if e == answer_start + len(answer)]
        if first and last:
            start[f, first[0]] = end[f, last[0]] = 5.0
    assert start.any()
    examples = {"id": ["x"], "context": [context]}
    features = {"example_id": ["x"] * num_features, "offset_mapping": offsets}
    assert postprocess_qa_predictions(examples, features, start, end).answers == {"x": answer}
