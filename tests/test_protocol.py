"""The evidence protocol (`benchmarks/protocol.py`) on tiny models: paired differences over the same
questions, controls, seed groups, and rows kept as they are measured."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("protocol", REPO / "benchmarks" / "protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def other_model_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT with its QA head drawn again: other answers on the same questions."""
    from qacompress.compression.checkpoint import load_qa_model
    from qacompress.model.loading import load_tokenizer

    torch.manual_seed(7)
    model = load_qa_model(str(tiny_bert_dir))
    torch.nn.init.normal_(model.qa_outputs.weight, std=0.5)
    path = tmp_path_factory.mktemp("other")
    model.save_pretrained(path)
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(path)
    return path


def test_protocol_pairs_rows_on_the_same_questions(protocol, tiny_bert_dir, other_model_dir, squad_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(other_model_dir, copy)
    spec = {
        "validation_file": str(squad_dir / "v1.1" / "dev.json"), "max_seq_length": 64, "doc_stride": 16,
        "max_samples": 40, "latency_features": 5, "cache_dir": str(tmp_path / "cache"), "reference": "reference",
        "rows": [
            {"name": "reference", "dir": str(tiny_bert_dir), "backend": "torch"},
            {"name": "same model", "dir": str(tiny_bert_dir), "backend": "torch", "group": "g", "seed": 1},
            {"name": "other", "dir": str(other_model_dir), "backend": "torch", "control": "reference", "group": "g", "seed": 2},
            {"name": "other copy", "dir": str(copy), "backend": "torch"},
        ],
    }  # fmt: skip
    rows = {row["name"]: protocol.measure_row(row, spec) for row in spec["rows"]}
    summary = {e["name"]: e for e in protocol.compare(rows, spec)}
    # The reference against itself: no difference, and an interval of zero width.
    same = summary["same model"]["f1_vs_reference"]
    assert (same["diff"], same["low"], same["high"], same["questions"]) == (0.0, 0.0, 0.0, 40), same
    # Another model: the paired mean is the difference of the two F1s, inside its own interval.
    other = summary["other"]
    assert other["f1"] != summary["reference"]["f1"], "the redrawn head should answer differently"
    diff = other["f1_vs_reference"]
    assert diff["diff"] == pytest.approx(other["f1"] - summary["reference"]["f1"])
    assert diff["low"] <= diff["diff"] <= diff["high"] and diff["low"] < diff["high"]
    assert other["f1_vs_control"] == diff and other["control"] == "reference"  # its control is the reference here
    assert "f1_vs_control" not in summary["same model"]
    # Seeds of one recipe: mean and spread of the group's rows.
    group = protocol.groups(list(summary.values()))["g"]
    assert group["seeds"] == [1, 2] and group["f1_mean"] == pytest.approx((summary["same model"]["f1"] + other["f1"]) / 2)
    assert group["f1_min"] <= group["f1_mean"] <= group["f1_max"]
    assert summary["reference"]["latency_vs_reference"] == 1.0 and summary["reference"]["real_length"]["features"] == 5
    table = protocol.markdown(list(summary.values()), protocol.groups(list(summary.values())), spec)
    assert "| other | torch |" in table and "(reference)" in table and "40 questions of `dev.json`" in table
    # A measured row is kept: with the model gone, the same row comes back from what was written.
    shutil.rmtree(copy)
    again = protocol.measure_row(spec["rows"][3], spec)
    assert again["question_scores"] == rows["other copy"]["question_scores"]
