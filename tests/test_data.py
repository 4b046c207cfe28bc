"""Loading SQuAD data: every accepted layout gives the same Dataset, and every malformed record
raises one DataError naming file, record and field."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import datasets
import pytest
from conftest import squad_doc, write_json

from qacompress.core.errors import DataError
from qacompress.data.squad import SQUAD_FEATURES, gold_answers, load_examples

CONTEXT = "Denver Broncos won Super Bowl 50 in Santa Clara."


def record(record_id="q1", context=CONTEXT, question="Who won?", text="Denver Broncos", start=0, title="T"):
    """A flat record in the squad-dataset layout."""
    answers = {"text": [text], "answer_start": [start]} if text is not None else {"text": [], "answer_start": []}
    return {"id": record_id, "title": title, "context": context, "question": question, "answers": answers}


def error_for(tmp_path: Path, records, name="bad.json", **kwargs) -> DataError:
    path = write_json(tmp_path / name, {"data": records})
    with pytest.raises(DataError) as caught:
        load_examples(str(path), **kwargs)
    return caught.value


def assert_names(error: DataError, *parts: str) -> None:
    """Each part is in the message; the file's directory (named after the test) is left out of the
    search so that it cannot supply a word by accident."""
    message = str(error)
    if error.file and os.path.isabs(error.file):
        message = message.replace(error.file, os.path.basename(error.file))
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message


# ------------------------------------------------------------------------------------ valid layouts

RECORDS = [
    record("a", text="Denver Broncos", start=0),
    {
        **record("b", question="  Where?"),
        "answers": {"text": ["Santa Clara", "Santa Clara."], "answer_start": [36, 36]},
    },
    record("c", context="Paris is in France.", question="Capital?", text="Paris", start=0, title="Other"),
]


def official(records):
    """The same records in the official SQuAD layout (consecutive records share a paragraph)."""
    articles: dict[str, dict[str, list]] = {}
    for rec in records:
        paragraphs = articles.setdefault(rec["title"], {})
        spans = zip(rec["answers"]["text"], rec["answers"]["answer_start"])
        qa = {
            "id": rec["id"],
            "question": rec["question"],
            "answers": [{"text": text, "answer_start": start} for text, start in spans],
        }
        paragraphs.setdefault(rec["context"], []).append(qa)
    return {
        "version": "1.1",
        "data": [
            {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
            for title, paragraphs in articles.items()
        ],
    }


def write_csv(path: Path, records, answers_format) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "context", "question", "answers"])
        for rec in records:
            writer.writerow([rec["id"], rec["title"], rec["context"], rec["question"], answers_format(rec["answers"])])
    return path


@pytest.fixture
def layouts(tmp_path):
    paths = {
        "official": write_json(tmp_path / "official.json", official(RECORDS)),
        "flat_data": write_json(tmp_path / "flat.json", {"version": "x", "data": RECORDS}),
        "list": write_json(tmp_path / "list.json", RECORDS),
        "jsonl": tmp_path / "records.jsonl",
        "csv_json": write_csv(tmp_path / "json_answers.csv", RECORDS, json.dumps),
        "csv_python": write_csv(tmp_path / "python_answers.csv", RECORDS, repr),
        "csv_to_csv": tmp_path / "to_csv.csv",
    }
    paths["jsonl"].write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
    datasets.Dataset.from_list(RECORDS).to_csv(str(paths["csv_to_csv"]), index=False)  # answers as array(...)
    return paths


def test_all_layouts_give_the_same_dataset(layouts):
    loaded = {name: load_examples(str(path)) for name, path in layouts.items()}
    expected = loaded["official"]
    assert expected.features == SQUAD_FEATURES
    assert expected.column_names == ["id", "title", "context", "question", "answers"]
    assert expected["id"] == ["a", "b", "c"]
    assert expected[1]["answers"] == {"text": ["Santa Clara", "Santa Clara."], "answer_start": [36, 36]}
    for name, dataset in loaded.items():
        assert dataset.features == SQUAD_FEATURES, name
        assert dataset.to_list() == expected.to_list(), name


def test_answers_as_list_of_objects_and_missing_title(tmp_path):
    rec = {"id": "x", "context": CONTEXT, "question": "Who?", "answers": [{"text": "Denver", "answer_start": 0}]}
    dataset = load_examples(str(write_json(tmp_path / "d.json", [rec])))
    assert dataset[0]["title"] == ""
    assert dataset[0]["answers"] == {"text": ["Denver"], "answer_start": [0]}


def test_unanswerable_keeps_types_and_requires_flag(tmp_path):
    path = write_json(tmp_path / "v2.json", {"data": [record("u1", text=None), record("u2", text=None)]})
    dataset = load_examples(str(path), version_2_with_negative=True)
    assert dataset.features == SQUAD_FEATURES
    assert dataset[0]["answers"] == {"text": [], "answer_start": []}
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "v2.json", "u1", "answers", "--version_2_with_negative", "2 of 2")


def test_official_v2_with_is_impossible_and_plausible_answers(tmp_path):
    qas = [
        {"id": "p", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Denver", "answer_start": 0}]},
        {"id": "q", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}], "is_impossible": False},
    ]  # fmt: skip
    path = write_json(tmp_path / "o.json", squad_doc((CONTEXT, qas)))
    dataset = load_examples(str(path), version_2_with_negative=True)
    assert gold_answers(dataset) == {"p": [], "q": ["Denver"]}


def test_require_answers_false_allows_missing_answers(tmp_path):
    rec = {"id": "x", "context": CONTEXT, "question": "Who?"}
    dataset = load_examples(str(write_json(tmp_path / "d.json", [rec])), require_answers=False)
    assert dataset[0]["answers"] == {"text": [], "answer_start": []}
    assert dataset.features == SQUAD_FEATURES


def test_max_samples_keeps_first_in_order(layouts):
    dataset = load_examples(str(layouts["flat_data"]), max_samples=2)
    assert dataset["id"] == ["a", "b"]


def test_gold_answers(layouts):
    assert gold_answers(load_examples(str(layouts["list"]))) == {
        "a": ["Denver Broncos"],
        "b": ["Santa Clara", "Santa Clara."],
        "c": ["Paris"],
    }


# ------------------------------------------------------------------------------------ real slices


def test_real_v11_train(squad_dir):
    dataset = load_examples(str(squad_dir / "v1.1" / "train.json"))  # its load time: benchmarks/load_time.py
    assert len(dataset) == 3807
    assert dataset[0]["title"] == "University_of_Notre_Dame"


def test_real_v11_dev(squad_dir):
    dataset = load_examples(str(squad_dir / "v1.1" / "dev.json"))
    assert len(dataset) == 810
    counts = [len(answers["text"]) for answers in dataset["answers"]]
    assert max(set(counts), key=counts.count) == 3
    gold = gold_answers(dataset)
    assert len(gold) == 810 and all(gold.values())


def test_real_v20_dev(squad_dir):
    path = str(squad_dir / "v2.0" / "dev.json")
    dataset = load_examples(path, version_2_with_negative=True)
    assert len(dataset) == 706
    assert sum(not answers["text"] for answers in dataset["answers"]) == 320
    with pytest.raises(DataError) as caught:
        load_examples(path)
    assert_names(caught.value, "dev.json", "--version_2_with_negative", "320 of 706")


# ------------------------------------------------------------------------------- file-level errors


def test_invalid_utf8(tmp_path):
    path = tmp_path / "latin.json"
    raw = b'{"data": [\n{"id": "caf\xe9"}]}'
    path.write_bytes(raw)
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "latin.json", "UTF-8", f"byte offset {raw.index(0xE9)}", "line 2")


def test_truncated_json(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps({"data": [record()]})[:-20], encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "cut.json", "Unterminated string starting at line 1, column", "looks truncated")


def test_invalid_json_points_at_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"id": "a",, "x": 1}\n]}', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "broken.json", "invalid JSON at line 2, column")


def test_json_lines_in_json_file_hint(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b")), encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "lines.json", "line 2", ".jsonl")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "empty.jsonl", "empty")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "data.txt", ".txt", ".json", ".jsonl", ".csv")


@pytest.mark.parametrize("document", [{"articles": []}, {"data": {"a": 1}}, "just a string", 3])
def test_top_level_structure_not_recognised(tmp_path, document):
    path = write_json(tmp_path / "odd.json", document)
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "odd.json", "top-level structure not recognised")


def test_no_records(tmp_path):
    assert_names(error_for(tmp_path, [], name="none.json"), "none.json", "no records")


def test_missing_file_is_named(tmp_path):
    missing = str(tmp_path / "nope" / "train.json")
    with pytest.raises(DataError) as caught:
        load_examples(missing)
    assert missing in str(caught.value)  # the whole path, not just the file name
    assert_names(caught.value, "not found")


def test_official_layout_bad_paragraphs(tmp_path):
    path = write_json(tmp_path / "o.json", {"data": [{"title": "A", "paragraphs": [{"context": CONTEXT, "qas": {}}]}]})
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "o.json", "article #1 paragraph #1", "'qas'")


def test_official_layout_missing_context_names_question(tmp_path):
    doc = {"data": [{"title": "A", "paragraphs": [{"qas": [{"id": "q9", "question": "Who?", "answers": []}]}]}]}
    with pytest.raises(DataError) as caught:
        load_examples(str(write_json(tmp_path / "o.json", doc)))
    assert_names(caught.value, "o.json", "record q9", "field 'context'", "missing")


def test_hub_unreachable_says_what_to_pass(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The libraries read these variables at import; set their flags too so no network is tried.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as caught:
        load_examples("squad", split="validation", cache_dir=str(tmp_path / "cache"))
    assert_names(caught.value, "squad", "validation", "Hub", "--train_file", "--validation_file")


# ----------------------------------------------------------------------------- record-level errors


@pytest.mark.parametrize("field", ["id", "question", "context", "answers"])
def test_missing_field(tmp_path, field):
    bad = record("q2")
    del bad[field]
    error = error_for(tmp_path, [record("q1"), bad])
    assert_names(error, "bad.json", "#2" if field == "id" else "q2", f"'{field}'", "missing")


@pytest.mark.parametrize(("field", "value"), [("id", 7), ("question", ["Who?"]), ("context", 3.5), ("title", 1)])
def test_non_string_field(tmp_path, field, value):
    error = error_for(tmp_path, [{**record("q1"), field: value}])
    assert_names(error, "bad.json", "#1" if field == "id" else "q1", f"'{field}'", "must be a string")


def test_whitespace_context(tmp_path):
    assert_names(error_for(tmp_path, [record("q1", context=" \n\t")]), "bad.json", "q1", "'context'", "empty")


def test_empty_question(tmp_path):
    assert_names(error_for(tmp_path, [record("q1", question="   ")]), "bad.json", "q1", "'question'", "empty")


def test_duplicate_id_names_both_positions(tmp_path):
    error = error_for(tmp_path, [record("a"), record("dup"), record("b"), record("dup")])
    assert_names(error, "bad.json", "dup", "'id'", "duplicate", "#2", "#4")


def test_answer_lists_of_different_length(tmp_path):
    bad = {**record("q1"), "answers": {"text": ["Denver", "Denver"], "answer_start": [0]}}
    assert_names(error_for(tmp_path, [bad]), "bad.json", "q1", "'answers'", "2 entries", "has 1")


@pytest.mark.parametrize(
    ("start", "expected"),
    [(-1, "negative"), (True, "integers, got bool"), (3.0, "integers, got float"), ("0", "integers, got str"),
     (len(CONTEXT), "beyond the end of the context")],
)  # fmt: skip
def test_bad_answer_start(tmp_path, start, expected):
    bad = record("q1", text="D", start=start)
    assert_names(error_for(tmp_path, [bad]), "bad.json", "q1", "'answers.answer_start'", expected)


def test_answer_not_at_answer_start_shows_context(tmp_path):
    bad = record("q1", text="Santa Clara", start=2)
    assert_names(
        error_for(tmp_path, [bad]), "bad.json", "q1", "'answers.answer_start'", "'nver Bronco'", "occurs at 36"
    )


def test_answer_longer_than_context(tmp_path):
    bad = record("q1", context="Short.", text="Short. And more", start=0)
    assert_names(error_for(tmp_path, [bad]), "bad.json", "q1", "'answers.text'", "longer than the context")


@pytest.mark.parametrize("text", ["", "  "])
def test_empty_answer_text(tmp_path, text):
    assert_names(error_for(tmp_path, [record("q1", text=text)]), "bad.json", "q1", "'answers.text'", "empty")


def test_answers_of_wrong_shape(tmp_path):
    bad = {**record("q1"), "answers": "Denver"}
    assert_names(error_for(tmp_path, [bad]), "bad.json", "q1", "'answers'", "got str")


def test_is_impossible_with_answers(tmp_path):
    bad = {**record("q1"), "is_impossible": True}
    error = error_for(tmp_path, [bad], version_2_with_negative=True)
    assert_names(error, "bad.json", "q1", "'is_impossible'")


def test_record_not_an_object(tmp_path):
    assert_names(error_for(tmp_path, [record("a"), "oops"]), "bad.json", "#2", "JSON object")


# ------------------------------------------------------------------------ jsonl and csv line numbers


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record("a")) + "\n\n" + json.dumps(record("b", start=5)) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.jsonl", "record b (line 3)", "'answers.answer_start'")


def test_jsonl_invalid_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + '{"id": "b", \n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.jsonl", "#2 (line 2)", "line 2, column", "line looks truncated")


def test_csv_errors_name_the_line(tmp_path):
    multiline = record("m", context="Line one,\nline two.", text="Line one", start=0)
    path = write_csv(tmp_path / "r.csv", [multiline, record("bad", start=3)], json.dumps)
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.csv", "record bad (line 4)", "'answers.answer_start'")


def test_csv_missing_column(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("id,context,answers\na,ctx,\"{}\"\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.csv", "'question'", "header")


def test_csv_unparsable_answers(tmp_path):
    path = write_csv(tmp_path / "r.csv", [record("a")], lambda answers: "{text: Denver")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.csv", "record a (line 2)", "'answers'", "JSON")


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('id,context,question,answers\na,ctx,Who?\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(str(path))
    assert_names(caught.value, "r.csv", "#1 (line 2)", "3 fields", "4")


# ------------------------------------------------------------------------------ Hub datasets, offline


def fake_hub(monkeypatch, records_or_columns) -> list:
    """Stand in for `datasets.load_dataset` (the Hub is unreachable here); records the call."""
    calls = []

    def load_dataset(name, config_name=None, *, cache_dir=None, split=None):
        calls.append((name, config_name, cache_dir, split))
        return datasets.Dataset.from_list(records_or_columns)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_dataset_is_validated_and_normalised(monkeypatch):
    calls = fake_hub(monkeypatch, [{**record("h1"), "extra": 1}, record("h2", text="Santa", start=36)])
    dataset = load_examples("user/squad_like", split="validation", dataset_config_name="plain", cache_dir="/c")
    assert calls == [("user/squad_like", "plain", "/c", "validation")]
    assert dataset.features == SQUAD_FEATURES
    assert dataset["id"] == ["h1", "h2"]


def test_hub_dataset_record_errors_name_dataset_and_split(monkeypatch):
    fake_hub(monkeypatch, [record("h1"), record("h2", text="Santa", start=3)])
    with pytest.raises(DataError) as caught:
        load_examples("user/squad_like", split="validation")
    assert_names(caught.value, "user/squad_like (split validation)", "record h2", "'answers.answer_start'")


def test_hub_dataset_missing_column(monkeypatch):
    fake_hub(monkeypatch, [{"id": "h1", "context": CONTEXT, "query": "Who?"}])
    with pytest.raises(DataError) as caught:
        load_examples("user/other", require_answers=False)
    assert_names(caught.value, "user/other (split train)", "'question'", "query")
