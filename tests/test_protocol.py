"""The evidence protocol (`benchmarks/protocol.py`) on tiny models: paired differences over the same
questions, controls, seed groups, and rows kept as they are measured."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import save_model_dir
from qacompress.core.errors import QACompressError
from qacompress.model.loading import load_tokenizer

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
    torch.manual_seed(7)
    model = load_qa_model(str(tiny_bert_dir))
    torch.nn.init.normal_(model.qa_outputs.weight, std=0.5)
    path = tmp_path_factory.mktemp("other")
    model.save_pretrained(path)
    load_tokenizer(str(tiny_bert_dir)).save_pretrained(path)
    return path


@pytest.mark.slow
def test_protocol_pairs_rows_on_the_same_questions(
    protocol, tiny_bert_dir, other_model_dir, squad_dir, tmp_path, monkeypatch
):
    copy = tmp_path / "copy"
    shutil.copytree(other_model_dir, copy)
    ir_dir = save_model_dir(load_qa_model(str(tiny_bert_dir)), load_tokenizer(str(tiny_bert_dir)), tmp_path / "ir")
    spec = {
        "validation_file": str(squad_dir / "v1.1" / "dev.json"), "max_seq_length": 64, "doc_stride": 16,
        "max_samples": 40, "latency_features": 5, "cache_dir": str(tmp_path / "cache"), "reference": "reference",
        "rows": [
            {"name": "reference", "dir": str(tiny_bert_dir), "backend": "torch"},
            {"name": "same model", "dir": str(tiny_bert_dir), "backend": "torch", "group": "g", "seed": 1},
            {"name": "other", "dir": str(other_model_dir), "backend": "torch", "control": "reference", "group": "g", "seed": 2},
            {"name": "other copy", "dir": str(copy), "backend": "torch", "versus": "other"},
            {"name": "reference IR", "dir": str(ir_dir), "unpruned_ir": True},
        ],
    }  # fmt: skip
    rows = {row["name"]: protocol.measure_row(row, spec) for row in spec["rows"]}
    # The IR rows are timed again against each other in interleaved rounds, and their ratios use that timing.
    interleaved = protocol.interleaved_latency(spec)
    assert list(interleaved) == ["reference IR"] and interleaved["reference IR"] > 0, interleaved
    summary = {e["name"]: e for e in protocol.compare(rows, spec, interleaved)}
    ir = summary["reference IR"]
    assert (ir["b1_ms"], ir["b1_timing"]) == (interleaved["reference IR"], "interleaved"), ir
    assert ir["latency_vs_best_unpruned_ir"] == 1.0, ir
    assert ir["b1_ms_own_process"] == rows["reference IR"]["latency_ms"][f"b1_s{protocol.SEQ_LENGTH}"]["median"], ir
    assert summary["reference"]["b1_timing"] == "own process", summary["reference"]
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
    # An A/B pair (`versus`): the same weights in another folder answer every question alike.
    pair = summary["other copy"]
    assert pair["versus"] == "other" and pair["f1_vs_reference"] == diff, pair
    assert (pair["f1_vs_versus"]["diff"], pair["f1_vs_versus"]["low"], pair["f1_vs_versus"]["high"]) == (0.0, 0.0, 0.0)
    assert "f1_vs_versus" not in other
    text = protocol.markdown(list(summary.values()), protocol.groups(list(summary.values())), spec)
    assert "other copy minus other: F1 +0.00 [+0.00, +0.00], EM +0.00 [+0.00, +0.00]" in text, text
    # Seeds of one recipe: mean and spread of the group's rows.
    group = protocol.groups(list(summary.values()))["g"]
    assert group["seeds"] == [1, 2] and group["f1_mean"] == pytest.approx((summary["same model"]["f1"] + other["f1"]) / 2)
    assert group["f1_min"] <= group["f1_mean"] <= group["f1_max"]
    assert summary["reference"]["latency_vs_reference"] == 1.0 and summary["reference"]["real_length"]["features"] == 5
    table = protocol.markdown(list(summary.values()), protocol.groups(list(summary.values())), spec)
    assert "| other | torch float32 |" in table and "(reference)" in table and "40 questions of `dev.json`" in table
    # Rows run in f32 unless they say otherwise; a row in another precision is scored on its own.
    row = spec["rows"][1]
    assert protocol._cache_path(row | {"precision": "f32"}, spec) == protocol._cache_path(row, spec)
    assert protocol._cache_path(row | {"precision": "auto"}, spec) != protocol._cache_path(row, spec)
    # A model written again into a scored folder is scored again (its weights are newer than the cache).
    cached = protocol._cache_path(spec["rows"][3], spec)
    shutil.copy(tiny_bert_dir / "model.safetensors", copy / "model.safetensors")
    os.utime(copy / "model.safetensors", (cached.stat().st_mtime + 1,) * 2)
    rescored = protocol.measure_scores(spec["rows"][3], spec)
    assert rescored["question_scores"] == rows["reference"]["question_scores"] != rows["other copy"]["question_scores"]
    shutil.rmtree(copy)
    # Scores are kept: with the model gone (a fresh checkout has none of the trained models), the same scores
    # come back from what was written, and the row is still paired, without latency (never kept: every
    # table's timings come from one run).
    assert protocol.has_scores(spec["rows"][3], spec)
    again = protocol.measure_row(spec["rows"][3], spec)
    assert again["question_scores"] == rescored["question_scores"]
    assert again["latency_ms"] == {} and again["real_length"] == {}, (again["latency_ms"], again["real_length"])
    gone = {e["name"]: e for e in protocol.compare(rows | {"other copy": again}, spec, interleaved)}["other copy"]
    assert gone["b1_ms"] is None and gone["b1_timing"] == "not timed: model gone", gone
    assert "latency_vs_reference" not in gone and gone["f1_vs_versus"]["questions"] == 40, gone
    table = protocol.markdown(list(protocol.compare(rows | {"other copy": again}, spec, interleaved)), {}, spec)
    assert "Not timed in this run (model gone; scores kept" in table and "other copy" in table.split("Not timed")[1]
    # The kept file (gzip) is named by the model's folder; its key holds the model's place in the repository,
    # not in this checkout, so that another checkout of the repository finds it.
    assert cached.name.startswith("copy-") and cached.name.endswith(".json.gz"), cached
    assert json.loads(gzip.decompress(cached.read_bytes()))["question_scores"] == rescored["question_scores"]
    assert protocol._place(str(protocol.ROOT / "benchmarks")) == "benchmarks"
    assert protocol._place(str(protocol.ROOT.parent / "shared" / "x.json")) == "../shared/x.json"
    # ...even where that is a link to the data elsewhere (CI's clone has `../shared` as a link).
    (tmp_path / "shared").symlink_to(squad_dir)
    assert protocol._place(str(tmp_path / "shared" / "x.json")).endswith("/shared/x.json")
    monkeypatch.chdir(tmp_path)  # however the rows file spells the same folder
    assert protocol._place("copy") == protocol._place(str(copy)), protocol._place("copy")
    # A model never scored, and gone, is an error naming it.
    with pytest.raises(QACompressError, match="no such model directory"):
        protocol.measure_row({"name": "never", "dir": str(tmp_path / "never")}, spec)


def test_the_evidence_rows_are_budget_matched(monkeypatch, tmp_path):
    """benchmarks/evidence.py: every trained row starts from the reference with the same steps and schedule,
    and names a control that is in the table, trained the same way without compression; the rows file it
    writes is one the protocol reads (unique names, the reference among them)."""
    spec = importlib.util.spec_from_file_location("evidence", REPO / "benchmarks" / "evidence.py")
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    monkeypatch.setattr(evidence, "OUT", tmp_path)
    table = {row["name"]: row for row in evidence.rows()}
    trained = [r for r in table.values() if r.get("command", [None, None])[1] in ("train", "compress")]
    assert len(trained) >= 6, sorted(table)
    def flag(row: dict, name: str) -> str:
        return row["command"][row["command"].index(name) + 1]

    def batching(row: dict) -> tuple[str, str]:
        """How the row pads and orders its training batches (`train`'s defaults where it says nothing)."""
        given = dict(zip(row["command"], row["command"][1:]))
        return given.get("--pad_to_max_length", "True"), given.get("--train_sampling_strategy", "random")

    def stages(row: dict) -> list[dict]:
        """The row and the rows it starts from (a second stage starts from another row's result)."""
        return [row] + (stages(table[row["after"]]) if "after" in row else [])

    for row in trained:
        command, first = row["command"], stages(row)[-1]
        assert flag(first, "--model_name_or_path") == evidence.REFERENCE, row["name"]
        if "after" in row:
            assert flag(row, "--model_name_or_path") == evidence.rel(table[row["after"]]["dir"]), row["name"]
            assert flag(row, "--teacher_model_name_or_path") == evidence.REFERENCE, row["name"]
        assert " ".join(evidence.SCHEDULE) in " ".join(command), row["name"]
        if "--compression" not in command:  # a recipe: its control is the same training, nothing compressed
            control = table[row["control"]]
            assert flag(control, "--compression") == "none", row["name"]
            assert flag(control, "--learning_rate") == flag(row, "--learning_rate"), (row["name"], row["control"])
            assert batching(control) == batching(row), (row["name"], row["control"])
            steps = sum(int(flag(stage, "--max_steps")) for stage in stages(row))  # every stage's steps count
            assert int(flag(control, "--max_steps")) == steps, (row["name"], row["control"], steps)
            control = control["command"]
            assert ("--teacher_model_name_or_path" in control) == (
                "--teacher_model_name_or_path" in command or command[1] == "compress"
            ), (row["name"], row["control"])
    assert len({r["seed"] for r in table.values() if r.get("group") == "recipe b"}) >= 2
    # An A/B pair names a row of the table, and differs from it in one setting: its batches (two flags), its
    # steps, a distillation weight.
    def settings(row: dict) -> dict[str, str]:
        command = row["command"]
        return {a: b for a, b in zip(command, command[1:]) if a.startswith("--") and a != "--output_dir"}

    pairs = [r for r in table.values() if "versus" in r]
    assert pairs and all(r["versus"] in table for r in pairs), [r["name"] for r in pairs]
    for row in (r for r in pairs if "command" in r):
        mine, other = settings(row), settings(table[row["versus"]])
        differ = {k for k in mine.keys() | other.keys() if mine.get(k) != other.get(k)}
        assert differ == {"--pad_to_max_length", "--train_sampling_strategy"} or len(differ) == 1, (row["name"], differ)
    # A second stage is not started before the row it starts from has its result.
    with pytest.raises(SystemExit, match="run that row first"):
        evidence.main(["--only", "recipe b in two stages, seed 42"])
    # Only finished rows go to the protocol, with their commands' wall time summed over invocations.
    qat = table["QAT"]
    qat["done"].parent.mkdir(parents=True)
    qat["done"].write_text("{}")
    evidence.atomic.write_json(evidence._wall_file(qat), {"seconds": 61.5})
    rows = json.loads(evidence.rows_file(list(table.values())).read_text())
    names = [r["name"] for r in rows["rows"]]
    assert rows["reference"] in names and len(set(names)) == len(names)
    assert names == ["reference", "QAT"], names
    assert rows["rows"][1]["wall_s"] == 61.5 and "qacompress train" in rows["rows"][1]["command"], rows["rows"][1]
