"""Load SQuAD-style question-answering examples and reject bad records before training starts.

A malformed record (an `answer_start` that points at the wrong characters, a duplicate id, a
truncated file) otherwise surfaces hours later as silently wrong labels or as an opaque Arrow or
tokenizer traceback. Every source - the official SQuAD json layout, the flat records that
transformers' `run_qa.py` reads, jsonl, csv, or a Hub dataset - is turned into one `datasets.Dataset`
with the columns of the Hub's `squad` dataset, and every problem raises one `DataError` that names
the file, the record and the field.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from qacompress.core.errors import DataError

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".csv")

#: The column layout of the Hub's `squad` dataset. Explicit so that a split whose questions all have
#: no answer still types `answers.text` as strings and `answers.answer_start` as integers.
SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)

_LOCAL_FILES_HINT = (
    "pass --train_file/--validation_file with a local SQuAD json instead "
    '(official layout {"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}, '
    "or flat records, .jsonl or .csv)"
)

# One record as read from a source, before validation: its fields, 1-based position, line (or None).
_RawRecord = tuple[Any, int, int | None]


def load_examples(
    source: str,
    *,
    split: str = "train",
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    version_2_with_negative: bool = False,
    require_answers: bool = True,
    max_samples: int | None = None,
) -> datasets.Dataset:
    """Read and validate SQuAD examples from a local file or a Hub dataset name.

    `source` is a file (`.json`, `.jsonl`, `.csv`, chosen by extension) or else a name for
    `datasets.load_dataset`. All records are validated, then the first `max_samples` are kept, so a
    quick run on a few samples still catches a broken file. `require_answers=False` is for
    prediction data: records may lack `answers` and then get empty ones.
    """
    path = Path(source).expanduser()
    if path.is_file():
        origin = source
        records = _read_file(path, origin, require_answers)
    elif _looks_like_path(source):
        raise DataError(
            "file not found: check the path (supported files: " + ", ".join(SUPPORTED_EXTENSIONS) + ")",
            file=source,
        )
    else:
        origin = f"{source} (split {split})"
        records = _read_hub(source, split, dataset_config_name, cache_dir, origin, require_answers)
    columns = _validate(records, origin, require_answers, version_2_with_negative)
    if max_samples is not None:
        columns = {name: values[:max_samples] for name, values in columns.items()}
    return datasets.Dataset.from_dict(columns, features=SQUAD_FEATURES)


def gold_answers(examples: datasets.Dataset) -> dict[str, list[str]]:
    """Map each example id to its reference answer texts ([] for an unanswerable question), the form
    that SQuAD scoring needs."""
    return {example_id: list(answers["text"]) for example_id, answers in zip(examples["id"], examples["answers"])}


# ----------------------------------------------------------------------------------------- sources


def _looks_like_path(source: str) -> bool:
    """A missing file must not be sent to the Hub, where it would fail with a confusing message;
    Hub names (`squad`, `rajpurkar/squad_v2`) have no extension and do not start like a path."""
    return bool(Path(source).suffix) or source.startswith(("/", ".", "~", os.sep))


def _read_hub(
    name: str,
    split: str,
    config_name: str | None,
    cache_dir: str | None,
    origin: str,
    require_answers: bool,
) -> list[_RawRecord]:
    try:
        dataset = datasets.load_dataset(name, config_name, cache_dir=cache_dir, split=split)
    except (OSError, ValueError) as error:  # ConnectionError / DatasetNotFoundError / unknown split
        reason = " ".join(str(error).split())
        raise DataError(
            f"cannot load dataset '{name}' from the Hugging Face Hub ({type(error).__name__}: {reason}); "
            f"the Hub may be unreachable or the name or split wrong: {_LOCAL_FILES_HINT}",
            file=origin,
        ) from error
    required = ("id", "context", "question") + (("answers",) if require_answers else ())
    for column in required:
        if column not in dataset.column_names:
            raise DataError(
                f"the dataset has no column '{column}' (columns: {', '.join(dataset.column_names)})",
                file=origin,
                field=column,
            )
    return [(record, position, None) for position, record in enumerate(dataset.to_list(), start=1)]


def _read_file(path: Path, origin: str, require_answers: bool) -> list[_RawRecord]:
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"unsupported file extension '{path.suffix}': use one of {', '.join(SUPPORTED_EXTENSIONS)}",
            file=origin,
        )
    text = _read_text(path, origin)
    if suffix == ".json":
        return _parse_json_document(text, origin)
    if suffix == ".jsonl":
        return _parse_jsonl(text, origin)
    return _parse_csv(text, origin, require_answers)


def _read_text(path: Path, origin: str) -> str:
    raw = path.read_bytes()
    bom = b"\xef\xbb\xbf"
    skipped = len(bom) if raw.startswith(bom) else 0
    try:
        text = raw[skipped:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start + skipped
        line = raw[:offset].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 at byte offset {offset} (line {line}): re-save the file as UTF-8", file=origin
        ) from error
    if not text.strip():
        raise DataError("the file is empty", file=origin)
    return text


def _decode_json(text: str, origin: str, record: str | None = None, line_offset: int = 0) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno + line_offset}, column {error.colno}"
        # A string left open runs to the end of the text, so it is reported where it starts.
        if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
            unit = "line" if record else "file"
            problem = error.msg.removesuffix(" at")
            message = f"the JSON ends unexpectedly ({problem} at {where}): the {unit} looks truncated"
        else:
            message = f"invalid JSON at {where}: {error.msg}"
            if error.msg == "Extra data" and record is None:
                message += " (one JSON record per line? name the file .jsonl)"
        raise DataError(message, file=origin, record=record) from error


def _parse_json_document(text: str, origin: str) -> list[_RawRecord]:
    document = _decode_json(text, origin)
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        items = document["data"]
    elif isinstance(document, list):
        items = document
    else:
        got = f"an object with keys {sorted(document)[:10]}" if isinstance(document, dict) else type(document).__name__
        raise DataError(
            'top-level structure not recognised: expected {"data": [...]} (official SQuAD layout or flat '
            f"records) or a list of records, got {got}",
            file=origin,
        )
    if not items:
        raise DataError("the file contains no records", file=origin)
    if any(_looks_like_article(item) for item in items):
        return list(_flatten_official(items, origin))
    return [(item, position, None) for position, item in enumerate(items, start=1)]


def _looks_like_article(item: Any) -> bool:
    """An entry of the official layout: it has paragraphs, or a title and nothing a flat record has."""
    if not isinstance(item, dict):
        return False
    return "paragraphs" in item or ("title" in item and not {"context", "question", "id"} & set(item))


def _flatten_official(articles: list[Any], origin: str) -> Iterator[_RawRecord]:
    """Official layout -> one flat record per question, inheriting title and context."""
    position = 0
    for article_number, article in enumerate(articles, start=1):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(
                "every entry of 'data' must be an object with a 'paragraphs' list",
                file=origin,
                record=f"article #{article_number}",
                field="paragraphs",
            )
        for paragraph_number, paragraph in enumerate(article["paragraphs"], start=1):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(
                    "every paragraph must be an object with 'context' and a 'qas' list",
                    file=origin,
                    record=f"article #{article_number} paragraph #{paragraph_number}",
                    field="qas",
                )
            for qa in paragraph["qas"]:
                position += 1
                if not isinstance(qa, dict):
                    yield qa, position, None
                    continue
                record = {"title": article.get("title", ""), **qa}
                if "context" in paragraph:
                    record["context"] = paragraph["context"]
                yield record, position, None


def _parse_jsonl(text: str, origin: str) -> list[_RawRecord]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        position = len(records) + 1
        record = _decode_json(line, origin, record=f"#{position} (line {line_number})", line_offset=line_number - 1)
        records.append((record, position, line_number))
    return records


def _parse_csv(text: str, origin: str, require_answers: bool) -> list[_RawRecord]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
        required = ("id", "context", "question") + (("answers",) if require_answers else ())
        for column in required:
            if column not in header:
                raise DataError(
                    f"the CSV header has no column '{column}' (header: {', '.join(header)})", file=origin, field=column
                )
        records = []
        last_line = reader.line_num
        for row in reader:
            line_number, last_line = last_line + 1, reader.line_num
            if not row:
                continue
            position = len(records) + 1
            if len(row) != len(header):
                raise DataError(
                    f"the row has {len(row)} fields but the header has {len(header)}: quote fields that contain commas",
                    file=origin,
                    record=f"#{position} (line {line_number})",
                )
            record: dict[str, Any] = dict(zip(header, row))
            if record.get("answers", "").strip():
                label = _label(record, position, line_number)
                record["answers"] = _parse_answers_cell(record["answers"], origin, label)
            else:
                record.pop("answers", None)
            records.append((record, position, line_number))
    except csv.Error as error:
        raise DataError(f"malformed CSV at line {reader.line_num}: {error}", file=origin) from error
    return records


class _ArrayCallsToLists(ast.NodeTransformer):
    """`Dataset.to_csv` writes answers as `{'text': array(['x'], dtype=object), ...}`; keep the lists."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id == "array" and node.args:
            return self.visit(node.args[0])
        return node


def _parse_answers_cell(cell: str, origin: str, label: str) -> Any:
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(_ArrayCallsToLists().visit(ast.parse(cell.strip(), mode="eval")))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as error:
        raise DataError(
            'answers must be JSON such as {"text": ["..."], "answer_start": [12]} (or the Python form pandas '
            f"writes), got {_excerpt(cell)}",
            file=origin,
            record=label,
            field="answers",
        ) from error


# -------------------------------------------------------------------------------------- validation


def _label(record: Any, position: int, line: int | None) -> str:
    """How a record is named in messages: its id when usable, else its 1-based position; plus line."""
    record_id = record.get("id") if isinstance(record, dict) else None
    name = record_id if isinstance(record_id, str) and record_id.strip() else f"#{position}"
    return name if line is None else f"{name} (line {line})"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _excerpt(text: str) -> str:
    """A value quoted for a message, shortened so the message stays one readable line."""
    return repr(_shorten(text))


def _validate(
    records: Iterable[_RawRecord], origin: str, require_answers: bool, version_2_with_negative: bool
) -> dict[str, list[Any]]:
    """Check every record and return the dataset's columns; raises the first problem found."""
    columns: dict[str, list[Any]] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    seen: dict[str, str] = {}
    unanswerable: list[str] = []
    for record, position, line in records:
        label = _label(record, position, line)
        if not isinstance(record, dict):
            raise DataError(f"a record must be a JSON object, got {type(record).__name__}", file=origin, record=label)

        def fail(message: str, field: str) -> DataError:
            return DataError(message, file=origin, record=label, field=field)

        for field in ("id", "question", "context"):
            value = record.get(field)
            if value is None:
                raise fail("is missing: every record needs id, question and context", field)
            if not isinstance(value, str):
                raise fail(f"must be a string, got {type(value).__name__} {_shorten(repr(value))}", field)
            if not value.strip():
                raise fail("is empty", field)
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise fail(f"must be a string, got {type(title).__name__}", "title")
        record_id = record["id"]
        where = f"#{position}" if line is None else f"#{position} (line {line})"
        if record_id in seen:
            raise fail(f"duplicate id {record_id!r}: used by record {seen[record_id]} and record {where}", "id")
        seen[record_id] = where

        answers = _check_answers(record, require_answers, fail)
        if require_answers and not answers["text"]:
            unanswerable.append(label)
        columns["id"].append(record_id)
        columns["title"].append(title or "")
        columns["context"].append(record["context"])
        columns["question"].append(record["question"])
        columns["answers"].append(answers)

    if unanswerable and not version_2_with_negative:
        raise DataError(
            f"the data has unanswerable questions ({len(unanswerable)} of {len(columns['id'])} have no answer, "
            "SQuAD v2 style): pass --version_2_with_negative to train and evaluate with them",
            file=origin,
            record=unanswerable[0],
            field="answers",
        )
    return columns


def _check_answers(
    record: dict[str, Any], require_answers: bool, fail: Callable[[str, str], DataError]
) -> dict[str, list[Any]]:
    """Normalise `answers` to {"text": [...], "answer_start": [...]} and check each span against the
    context: a wrong offset would train the model on the wrong characters without any error."""
    raw = record.get("answers")
    if raw is None:
        if require_answers:
            raise fail('is missing: give a question without an answer "answers": []', "answers")
        return {"text": [], "answer_start": []}
    if isinstance(raw, list):
        if not all(isinstance(item, dict) and "text" in item and "answer_start" in item for item in raw):
            raise fail('a list of answers must hold {"text", "answer_start"} objects', "answers")
        texts = [item["text"] for item in raw]
        starts = [item["answer_start"] for item in raw]
    elif isinstance(raw, dict):
        for key in ("text", "answer_start"):
            if not isinstance(raw.get(key), list):
                raise fail(f"must be a list, got {type(raw.get(key)).__name__}", f"answers.{key}")
        texts, starts = raw["text"], raw["answer_start"]
    else:
        raise fail(
            'must be {"text": [...], "answer_start": [...]} or a list of {"text", "answer_start"} objects, '
            f"got {type(raw).__name__}",
            "answers",
        )
    if len(texts) != len(starts):
        raise fail(f"answers.text has {len(texts)} entries but answers.answer_start has {len(starts)}", "answers")

    impossible = record.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise fail(f"must be true or false, got {impossible!r}", "is_impossible")
    if impossible and texts:
        raise fail("is true but the question has answers: empty 'answers' or set it to false", "is_impossible")

    context = record["context"]
    for text, start in zip(texts, starts):
        if not isinstance(text, str):
            raise fail(f"must be strings, got {type(text).__name__} {_shorten(repr(text))}", "answers.text")
        if not text.strip():
            raise fail("an answer text is empty or only whitespace", "answers.text")
        if len(text) > len(context):
            raise fail(
                f"answer {_excerpt(text)} ({len(text)} characters) is longer than the context ({len(context)})",
                "answers.text",
            )
        if type(start) is not int:
            raise fail(f"must be integers, got {type(start).__name__} {start!r}", "answers.answer_start")
        if start < 0:
            raise fail(f"answer_start {start} is negative", "answers.answer_start")
        if start >= len(context):
            raise fail(
                f"answer_start {start} is beyond the end of the context ({len(context)} characters)",
                "answers.answer_start",
            )
        found = context[start : start + len(text)]
        if found != text:
            elsewhere = context.find(text)
            hint = f" (the text occurs at {elsewhere})" if elsewhere >= 0 else " (the text is not in the context)"
            raise fail(
                f"answer {_excerpt(text)} does not match the context at answer_start {start}: the context has "
                f"{_excerpt(found)} there{hint}",
                "answers.answer_start",
            )
    return {"text": list(texts), "answer_start": list(starts)}
