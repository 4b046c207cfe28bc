"""Tokenizing SQuAD examples into features with the real MiniLM tokenizer: windows over long
contexts, answer labels, the [-1, -1] offset convention and the errors that replace tokenizer
crashes."""

from __future__ import annotations

import copy
import logging
import unicodedata

import datasets
import pytest

from qacompress.core.errors import DataError, ModelError, QACompressError
from qacompress.data.features import (
    MODEL_INPUT_NAMES,
    check_tokenizer,
    prepare_eval_features,
    prepare_train_features,
    resolve_max_seq_length,
)
from qacompress.data.squad import SQUAD_FEATURES, load_examples

NOT_IN_CONTEXT = [-1, -1]
FILLER = " ".join(f"Sentence number {n} talks about the weather in town number {n}." for n in range(30))
ANSWER = "the purple elephant"
LONG_CONTEXT = f"{FILLER} The parade was led by {ANSWER} on Sunday."
SETTINGS = {"max_seq_length": 64, "doc_stride": 16}


def normalise(text: str) -> str:
    """Lower-case, accent- and whitespace-insensitive: what an uncased WordPiece decode preserves."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not c.isspace() and not unicodedata.combining(c))


def examples(*records: dict) -> datasets.Dataset:
    return datasets.Dataset.from_list(list(records), features=SQUAD_FEATURES)


def example(example_id="long", context=LONG_CONTEXT, question="Who led the parade?", answer: str | None = ANSWER):
    answers = {"text": [], "answer_start": []}
    if answer:
        answers = {"text": [answer], "answer_start": [context.index(answer)]}
    return {"id": example_id, "title": "", "context": context, "question": question, "answers": answers}


def decode_label(tokenizer, feature: dict) -> str:
    return tokenizer.decode(feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1])


def context_offsets(offsets: list[list[int]]) -> list[list[int]]:
    return [offset for offset in offsets if offset != NOT_IN_CONTEXT]


@pytest.fixture(scope="module")
def left_tokenizer(tokenizer):
    left = copy.deepcopy(tokenizer)
    left.padding_side = "left"
    return left


# ---------------------------------------------------------------------------------------- windows


def test_long_context_gives_overlapping_windows(tokenizer):
    features = prepare_eval_features(examples(example()), tokenizer, **SETTINGS)
    assert len(features) > 3
    assert set(features["example_id"]) == {"long"}
    windows = [context_offsets(offsets) for offsets in features["offset_mapping"]]
    for previous, following in zip(windows, windows[1:]):
        # Each window starts with the last doc_stride context tokens of the one before.
        assert following[: SETTINGS["doc_stride"]] == previous[-SETTINGS["doc_stride"] :]
        assert following[-1][1] > previous[-1][1]
    assert windows[0][0][0] == 0 and windows[-1][-1][1] == len(LONG_CONTEXT)
    assert all(len(ids) == SETTINGS["max_seq_length"] for ids in features["input_ids"])


def test_answer_in_a_later_window_is_labelled_there_only(tokenizer):
    train = prepare_train_features(examples(example()), tokenizer, **SETTINGS)
    evaluation = prepare_eval_features(examples(example()), tokenizer, **SETTINGS)
    assert train.column_names == [*MODEL_INPUT_NAMES, "start_positions", "end_positions"]
    answer_start = LONG_CONTEXT.index(ANSWER)
    answer_end = answer_start + len(ANSWER)
    labelled = []
    for feature, offsets, cls_index in zip(train, evaluation["offset_mapping"], evaluation["cls_index"]):
        window = context_offsets(offsets)
        if window[0][0] <= answer_start and window[-1][1] >= answer_end:
            labelled.append(feature)
            assert normalise(decode_label(tokenizer, feature)) == normalise(ANSWER)
        else:
            assert feature["start_positions"] == feature["end_positions"] == cls_index == 0
    assert 0 < len(labelled) < len(train)
    assert train[0]["start_positions"] == 0


def test_unanswerable_points_at_cls(tokenizer):
    features = prepare_train_features(examples(example("v2", answer=None)), tokenizer, **SETTINGS)
    assert len(features) > 1
    assert set(features["start_positions"]) == set(features["end_positions"]) == {0}


def test_first_gold_answer_is_used(tokenizer):
    record = example(context="Paris is the capital of France. Lyon is not.", question="Capital?", answer="Paris")
    record["answers"] = {"text": ["Paris", "Lyon"], "answer_start": [0, 32]}
    [feature] = prepare_train_features(examples(record), tokenizer)
    assert decode_label(tokenizer, feature) == "paris"


# -------------------------------------------------------------------------------- eval features


def test_eval_offsets_map_back_to_context(tokenizer):
    record = example(
        "eiffel", context="The Eiffel Tower stands in Paris.", question=" Where is the tower?", answer="Paris"
    )
    [feature] = prepare_eval_features(examples(record), tokenizer, max_seq_length=32, doc_stride=8)
    assert list(feature) == [*MODEL_INPUT_NAMES, "example_id", "offset_mapping", "cls_index"]
    assert feature["example_id"] == "eiffel" and feature["cls_index"] == 0
    in_context = [offset != NOT_IN_CONTEXT for offset in feature["offset_mapping"]]
    # Exactly the context tokens (segment 1, unpadded) carry offsets; CLS, question, SEPs, padding do not.
    assert in_context == [
        type_id == 1 and mask == 1 and token != tokenizer.sep_token_id
        for type_id, mask, token in zip(feature["token_type_ids"], feature["attention_mask"], feature["input_ids"])
    ]
    pieces = [
        (tokenizer.convert_ids_to_tokens(token), record["context"][start:end])
        for token, (start, end) in zip(feature["input_ids"], feature["offset_mapping"])
        if [start, end] != NOT_IN_CONTEXT
    ]
    assert all(token.removeprefix("##") == text.lower() for token, text in pieces)
    assert "".join(text for _, text in pieces) == record["context"].replace(" ", "")


def test_pad_to_max_length_false_gives_variable_lengths(tokenizer):
    short = example("short", context="Paris is in France.", question="Where is Paris?", answer="France")
    features = prepare_train_features(examples(example(), short), tokenizer, pad_to_max_length=False, **SETTINGS)
    lengths = [len(ids) for ids in features["input_ids"]]
    assert max(lengths) == SETTINGS["max_seq_length"] and min(lengths) < SETTINGS["max_seq_length"]
    for ids, mask in zip(features["input_ids"], features["attention_mask"]):
        assert len(mask) == len(ids) and all(mask)
    assert decode_label(tokenizer, features[-1]) == "france"


# ----------------------------------------------------------------------------------- left padding


def test_left_padding_puts_context_first(left_tokenizer):
    short = example("short", context="Paris is in France.", question="Where is Paris?", answer="France")
    train = prepare_train_features(examples(short, example()), left_tokenizer, **SETTINGS)
    evaluation = prepare_eval_features(examples(short, example()), left_tokenizer, **SETTINGS)
    first = train[0]
    assert first["input_ids"][0] == left_tokenizer.pad_token_id  # padded on the left
    cls_index = first["input_ids"].index(left_tokenizer.cls_token_id)
    assert evaluation[0]["cls_index"] == cls_index > 0
    # Context comes right after CLS, the question after it.
    assert evaluation[0]["offset_mapping"][cls_index + 1] == [0, len("paris")]
    assert decode_label(left_tokenizer, first) == "france"
    # The long example: windows either label the answer or point at their CLS token.
    answered = 0
    for feature, cls in zip(train.select(range(1, len(train))), evaluation["cls_index"][1:]):
        if feature["start_positions"] == feature["end_positions"] == cls:
            continue
        assert normalise(decode_label(left_tokenizer, feature)) == normalise(ANSWER)
        answered += 1
    assert 0 < answered < len(train) - 1


# --------------------------------------------------------------------------------------- tokenizer


class SlowTokenizer:
    is_fast = False


def test_slow_tokenizer_is_refused():
    with pytest.raises(ModelError, match=r"SlowTokenizer.*offsets mapping.*fast"):
        check_tokenizer(SlowTokenizer())
    with pytest.raises(ModelError):
        prepare_train_features(examples(example()), SlowTokenizer())


def test_fast_tokenizer_is_accepted(tokenizer):
    check_tokenizer(tokenizer)


def test_max_seq_length_clipped_to_model(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="qacompress.data.features"):
        assert resolve_max_seq_length(tokenizer, 1024) == tokenizer.model_max_length == 512
    assert "1024" in caplog.text and "512" in caplog.text
    assert resolve_max_seq_length(tokenizer, 256) == 256
    features = prepare_eval_features(examples(example()), tokenizer, max_seq_length=1024, doc_stride=64)
    assert {len(ids) for ids in features["input_ids"]} == {512}


# ---------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("prepare", [prepare_train_features, prepare_eval_features])
def test_doc_stride_too_large(tokenizer, prepare):
    with pytest.raises(QACompressError, match=r"--doc_stride 64 .*--max_seq_length 64"):
        prepare(examples(example()), tokenizer, max_seq_length=64, doc_stride=64)


def test_doc_stride_too_large_for_this_question(tokenizer):
    wordy = example("wordy", question="Who " + "really " * 40 + "led the parade?")
    with pytest.raises(DataError) as caught:
        prepare_train_features(examples(example(), wordy), tokenizer, max_seq_length=64, doc_stride=24)
    message = str(caught.value)
    assert caught.value.record == "wordy" and caught.value.field == "question"
    assert "--doc_stride 24" in message and "--max_seq_length 64" in message


def test_question_without_room_for_context(tokenizer):
    endless = example("endless", question="Who " + "really " * 80 + "led the parade?")
    with pytest.raises(DataError) as caught:
        prepare_eval_features(examples(endless), tokenizer, max_seq_length=64, doc_stride=16)
    assert caught.value.record == "endless" and caught.value.field == "question"
    assert "leaves 0 context tokens" in str(caught.value)


@pytest.mark.parametrize("prepare", [prepare_train_features, prepare_eval_features])
def test_tokenizer_that_drops_the_text_is_named(prepare, tmp_path):
    from conftest import text_dropping_tokenizer
    from transformers import AutoTokenizer

    broken = AutoTokenizer.from_pretrained(text_dropping_tokenizer(tmp_path / "roberta"))
    with pytest.raises(ModelError) as caught:  # not an IndexError deep in the label search
        prepare(examples(example("first"), example("second")), broken, max_seq_length=64, doc_stride=16,
                load_from_cache_file=False)  # fmt: skip
    message = str(caught.value)
    assert str(tmp_path / "roberta") in message and "RobertaTokenizer" in message
    assert "'first'" in message and "no context token" in message and "\n" not in message


# -------------------------------------------------------------------------------- real SQuAD data


@pytest.mark.parametrize(("max_seq_length", "doc_stride"), [(384, 128), (64, 16)])
def test_real_dev_labels_decode_to_gold(tokenizer, squad_dir, max_seq_length, doc_stride):
    dev = load_examples(str(squad_dir / "v1.1" / "dev.json"), max_samples=50)
    settings = {"max_seq_length": max_seq_length, "doc_stride": doc_stride}
    train = prepare_train_features(dev, tokenizer, **settings)
    evaluation = prepare_eval_features(dev, tokenizer, **settings)
    assert len(train) == len(evaluation) >= len(dev)
    by_id = {record["id"]: record for record in dev}
    labelled, exact = set(), 0
    for feature, example_id, offsets, cls_index in zip(
        train, evaluation["example_id"], evaluation["offset_mapping"], evaluation["cls_index"]
    ):
        start, end = feature["start_positions"], feature["end_positions"]
        if start == end == cls_index:
            continue
        record = by_id[example_id]
        gold = record["answers"]["text"][0]
        gold_start = record["answers"]["answer_start"][0]
        labelled.add(example_id)
        span_start, span_end = offsets[start][0], offsets[end][1]
        # The labelled tokens are the smallest token span covering the answer characters ...
        assert span_start <= gold_start < offsets[start][1]
        assert offsets[end][0] < gold_start + len(gold) <= span_end
        # ... and decode to the answer, unless the answer is only part of a word ("gold" in "golden").
        decoded = normalise(tokenizer.decode(feature["input_ids"][start : end + 1]))
        assert normalise(gold) in decoded
        if (span_start, span_end) == (gold_start, gold_start + len(gold)):
            assert decoded == normalise(gold)
            exact += 1
    assert labelled == set(by_id)  # every answer is labelled in at least one window
    assert exact >= 0.9 * len(labelled)


def test_real_v2_unanswerable_all_cls_and_num_proc(tokenizer, squad_dir):
    dev = load_examples(str(squad_dir / "v2.0" / "dev.json"), version_2_with_negative=True)
    sample = dev.select(range(40))
    serial = prepare_train_features(sample, tokenizer, max_seq_length=128, doc_stride=32)
    parallel = prepare_train_features(sample, tokenizer, max_seq_length=128, doc_stride=32, num_proc=2)
    assert serial.to_list() == parallel.to_list()
    evaluation = prepare_eval_features(sample, tokenizer, max_seq_length=128, doc_stride=32)
    unanswerable = {record["id"] for record in sample if not record["answers"]["text"]}
    assert unanswerable
    for feature, example_id in zip(serial, evaluation["example_id"]):
        if example_id in unanswerable:
            assert feature["start_positions"] == feature["end_positions"] == 0


def test_answer_start_mid_word_is_covered(tokenizer):
    record = example(context="The score was 18 to 4.", question="Points?", answer="8")
    record["answers"] = {"text": ["8"], "answer_start": [15]}
    [feature] = prepare_train_features(examples(record), tokenizer)
    assert decode_label(tokenizer, feature) == "18"
