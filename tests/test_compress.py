"""`qacompress compress` on a tiny BERT: one run from the input model to a compressed model folder and its
report, resumed when run again; every refusal is one line with exit status 2 and nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, minilm_dir, openvino_computes_in, squad_doc, write_json

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.fisher import prediction_entropy
from qacompress.compression.pruning import feature_batches
from qacompress.core.atomic import file_lock
from qacompress.core.ondisk import COMPRESS_LOCK
from qacompress.data.features import prepare_eval_features
from qacompress.data.squad import load_examples
from qacompress.jobs.compress import COMPRESS_DEFAULTS, NEAR_UNIFORM, parse_compress_args
from qacompress.jobs.train import load_data
from qacompress.model.loading import load_tokenizer
from qacompress.model.surgery import kept_sizes
from qacompress.training.phases import model_inputs
from qacompress.training.trainer import QACompressTrainer

SEQ = 64


def compress_cli(model_dir: Path, out: Path, squad_dir: Path, *extra: str) -> int:
    dev = str(squad_dir / "v1.1" / "dev.json")
    return main([
        "compress", "--model_name_or_path", str(model_dir), "--train_file", dev, "--max_train_samples", "24",
        "--max_seq_length", str(SEQ), "--doc_stride", "16", "--output_dir", str(out), "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--selection_samples", "8", "--save_steps", "2",
        "--logging_steps", "1", *extra,
    ])  # fmt: skip


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("qacompress: error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.slow
def test_compress_end_to_end_and_resume(tiny_bert_dir, squad_dir, tmp_path, capsys):
    out = tmp_path / "out"
    dev = str(squad_dir / "v1.1" / "dev.json")
    # Run in OpenVINO's own precision (bf16 where the CPU has it natively): the plan, the report's timings
    # and the scores all in it, and `evaluate` with the same flag reads the same F1.
    flags = ("--target_latency", "1.0", "--validation_file", dev, "--max_eval_samples", "16", "--allow_untrained_model",
             "--inference_precision", "auto")  # fmt: skip
    assert compress_cli(tiny_bert_dir, out, squad_dir, *flags) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "compress_report.json").read_text())
    plan = json.loads((out / "compress_plan.json").read_text())
    config = json.loads((out / "compress_config.json").read_text())

    # The deployment precision is the faster of the two unpruned IRs it timed; quantizers only for INT8.
    ms = plan["unpruned_ir_ms"]
    assert plan["precision"] == min(ms, key=ms.get), plan
    assert plan["inference_precision"] == "auto" and plan["computed_in"] == openvino_computes_in("auto"), plan
    algorithms = [section["algorithm"] for section in config]
    assert algorithms == (["structured_pruning", "quantization"] if plan["precision"] == "int8" else ["structured_pruning"])
    xml = (out / "openvino_model.xml").read_text()
    assert ('type="FakeQuantize"' in xml) == (plan["precision"] == "int8"), plan
    assert config[0]["target_latency"] == plan["fraction"] == 1.0

    # The report: paired scores on the same 16 questions, latencies, sizes, kept units, phases, command, CPU.
    accuracy = report["accuracy"]
    assert accuracy["questions"] == 16, accuracy
    for metric in ("exact_match", "f1"):
        diff = accuracy[metric]["difference"]
        assert diff["questions"] == 16 and diff["low"] <= diff["diff"] <= diff["high"], diff
        assert diff["diff"] == pytest.approx(accuracy[metric]["result_ir"] - accuracy[metric]["model_torch"], abs=0.011)
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert accuracy["f1"]["result_ir"] == pytest.approx(eval_results["eval_openvino_f1"], abs=0.01), eval_results
    assert all(v > 0 for k, v in report["latency_ms"].items() if k.endswith(("torch", "_ir"))), report["latency_ms"]
    assert report["speedup"]["vs_best_unpruned_ir"] == pytest.approx(
        report["latency_ms"][f"model_{plan['precision']}_ir"] / report["latency_ms"]["result_ir"], abs=0.01
    )
    assert len(report["kept"]["layers"]) == 2 and report["size_mb"]["result_ir"] > 0, report
    # A full budget keeps every unit: all of the Fisher information, every MAC, and says so.
    kept = report["kept"]
    assert (kept["heads_kept"], kept["neurons_kept"]) == (kept["heads_total"], kept["neurons_total"]) == (8, 128), kept
    assert kept["fisher_kept_fraction"] == kept["encoder_macs_fraction"] == 1.0, kept
    assert "kept 8 of 8 heads, 128 of 128 neurons: 100.0% of the Fisher information" in printed, printed
    assert set(report["wall_time_s"]) == {"checks_s", "plan_s", "recovery_s", "report_s"}, report["wall_time_s"]
    assert report["command"].startswith("qacompress compress --model_name_or_path") and report["cpu"]["name"]
    assert (out / "compress_report.png").stat().st_size > 1000
    assert "compressed IR" in printed and "F1 difference (paired 95% interval, 16 questions)" in printed, printed

    # The folder is a model folder the other verbs load as it is.
    assert main(["evaluate", "--model_name_or_path", str(out), "--validation_file", dev, "--max_eval_samples", "16",
                 "--max_seq_length", str(SEQ), "--doc_stride", "16", "--inference_precision", "auto"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert re.search(rf"eval_f1 +{eval_results['eval_openvino_f1']:.4f}\n", printed), printed

    # Run again: the plan is read back (not measured again) and training has nothing left to do.
    plan_bytes = (out / "compress_plan.json").read_bytes()
    assert compress_cli(tiny_bert_dir, out, squad_dir, *flags) == 0
    assert (out / "compress_plan.json").read_bytes() == plan_bytes
    again = json.loads((out / "compress_report.json").read_text())
    assert again["accuracy"]["f1"]["result_ir"] == accuracy["f1"]["result_ir"], again["accuracy"]
    assert again["train_metrics"]["train_samples"] == report["train_metrics"]["train_samples"]

    # Another target or precision into the same folder is not a resume: refused, the run left as it was.
    for old, new, planned in (("1.0", "0.8", "target_latency 1.0"), ("auto", "f32", "inference_precision auto")):
        assert compress_cli(tiny_bert_dir, out, squad_dir, *[new if f == old else f for f in flags]) == 2
        line = one_error_line(capsys)
        assert f"holds a compress run planned for {planned}" in line, line
        assert (out / "compress_plan.json").read_bytes() == plan_bytes


@pytest.mark.slow
def test_a_pruned_model_compresses_again_distilled_from_the_unpruned_one(tiny_bert_dir, squad_dir, tmp_path, capsys):
    """A second stage: the input is already pruned (heads per layer differ), the teacher is the unpruned
    model. Its selection starts from the pruned sizes, and the result is a model folder as any other."""
    dev = str(squad_dir / "v1.1" / "dev.json")
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model_name_or_path", str(tiny_bert_dir), "--train_file", dev, "--max_train_samples", "6",
                 "--max_seq_length", str(SEQ), "--doc_stride", "16", "--target_macs", "0.6", "--refit_samples", "16",
                 "--quantization_samples", "8", "--output_dir", str(pruned)]) == 0  # fmt: skip
    before = kept_sizes(load_qa_model(str(pruned)))  # what computes something (an emptied layer's stand-in: 0)
    assert before != [{"heads": 4, "intermediate_size": 64}] * 2, before
    out = tmp_path / "out"
    assert compress_cli(pruned, out, squad_dir, "--target_latency", "1.0", "--allow_untrained_model",
                        "--teacher_model_name_or_path", str(tiny_bert_dir)) == 0  # fmt: skip
    report = json.loads((out / "compress_report.json").read_text())
    kept = report["kept"]
    # A full budget of the pruned model keeps what it has: the sizes prune left, not the original ones.
    sizes = [(layer["heads"], layer["intermediate_size"]) for layer in before]
    assert [(layer["heads_kept"], layer["neurons_kept"]) for layer in kept["layers"]] == sizes, (kept, before)
    assert [(layer["heads_total"], layer["neurons_total"]) for layer in kept["layers"]] == sizes, (kept, before)
    assert (kept["heads_total"], kept["neurons_total"]) == tuple(map(sum, zip(*sizes))), kept
    assert main(["evaluate", "--model_name_or_path", str(out), "--validation_file", dev, "--max_eval_samples", "8",
                 "--max_seq_length", str(SEQ), "--doc_stride", "16"]) == 0  # fmt: skip


@pytest.mark.slow
def test_a_target_below_the_fixed_cost_says_what_is_reachable(tiny_bert_dir, squad_dir, tmp_path, capsys):
    """1000x keeps 0.001 of the latency: less than embeddings and the QA head alone take on any CPU."""
    assert compress_cli(tiny_bert_dir, tmp_path / "o", squad_dir, "--target_speedup", "1000", "--allow_untrained_model") == 2
    line = one_error_line(capsys)
    assert "--target_speedup 1000" in line and "ask for at most --target_speedup" in line, line
    assert "per-layer overheads stay unless --remove_layers" in line, line  # the flag that lowers the floor
    assert not (tmp_path / "o" / "openvino_model.xml").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "give exactly one of --target_speedup"),
        (["--target_speedup", "2", "--target_latency", "0.5"], "give exactly one of --target_speedup"),
        (["--target_speedup", "0.5"], "--target_speedup must be >= 1"),
        (["--target_latency", "1.5"], "--target_latency must be in (0, 1]"),
        (["--target_speedup", "2"], "near uniform"),  # a random QA head: not fine-tuned
    ],
)
def test_bad_input_is_one_line_and_status_2(tiny_bert_dir, squad_dir, tmp_path, capsys, flags, message):
    assert compress_cli(tiny_bert_dir, tmp_path / "o", squad_dir, *flags) == 2
    line = one_error_line(capsys)
    assert message in line, line
    left = {p.name for p in (tmp_path / "o").iterdir()} if (tmp_path / "o").exists() else set()
    assert left <= {COMPRESS_LOCK, "compress_wall.json"}, left  # nothing of a model, and a rerun is let in


def test_training_data_without_answers_is_refused_before_any_work(tiny_bert_dir, squad_dir, tmp_path, capsys):
    data = write_json(tmp_path / "t.json", squad_doc(("Paris is in France.", [
        {"id": "a", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "b", "question": "What is Paris?"},
    ])))  # fmt: skip
    argv = ["compress", "--model_name_or_path", str(tiny_bert_dir), "--train_file", str(data), "--target_speedup", "2",
            "--output_dir", str(tmp_path / "o"), "--allow_untrained_model"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "t.json" in line and "record b" in line and "answers" in line, line
    assert not (tmp_path / "o" / "compress_plan.json").exists()


def test_an_output_folder_in_use_or_of_something_else_is_refused(tiny_bert_dir, squad_dir, tmp_path, capsys):
    busy = tmp_path / "busy"

    def already_held() -> None:
        raise AssertionError("nothing else should hold the lock yet")

    with file_lock(busy / COMPRESS_LOCK, on_busy=already_held):  # another run, as another process sees it
        done = subprocess.run(
            [sys.executable, "-m", "qacompress", "compress", "--model_name_or_path", str(tiny_bert_dir), "--train_file",
             str(squad_dir / "v1.1" / "dev.json"), "--target_speedup", "2", "--output_dir", str(busy)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 2 and "is in use by another qacompress run" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and sorted(p.name for p in busy.iterdir()) == [COMPRESS_LOCK]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert compress_cli(tiny_bert_dir, other, squad_dir, "--target_speedup", "2", "--allow_untrained_model") == 2
    line = one_error_line(capsys)
    assert "is not empty and holds no compress run" in line, line
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_the_fine_tuning_check_tells_the_reference_from_a_fresh_head(squad_dir):
    """The refusal's threshold sits between a fine-tuned MiniLM (the committed reference) and the same
    encoder with a fresh QA head (the packaged all-MiniLM-L6-v2)."""
    examples = load_examples(str(squad_dir / "v1.1" / "train.json"), split="train", max_samples=16)
    seen = {}
    for name, path in (("reference", REPO_ROOT / "benchmarks" / "reference" / "minilm-squad12k"), ("fresh", minilm_dir())):
        tokenizer = load_tokenizer(str(path))
        features = prepare_eval_features(examples, tokenizer, max_seq_length=256, doc_stride=128, pad_to_max_length=False)
        seen[name] = prediction_entropy(load_qa_model(str(path)), feature_batches(features, tokenizer, 8))
    assert seen["reference"] < 0.5 < NEAR_UNIFORM < seen["fresh"], seen


def test_recovery_batches_are_padded_to_their_longest_feature_and_grouped_by_length(tiny_bert_dir, squad_dir, tmp_path):
    """compress trains on batches padded per batch, drawn in groups of similar length (a flag given wins);
    the batches its trainer draws hold every feature once, each padded to no more than its batch's longest."""
    dev = str(squad_dir / "v1.1" / "dev.json")
    base = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", dev, "--target_speedup", "2",
            "--output_dir", str(tmp_path / "out"), "--max_train_samples", "200", "--per_device_train_batch_size", "8"]
    _, _, data_args, args = parse_compress_args(base)
    assert (data_args.pad_to_max_length, args.train_sampling_strategy) == (False, "group_by_length")
    _, _, given_data, given = parse_compress_args(base + ["--pad_to_max_length", "True", "--train_sampling_strategy", "random"])
    assert (given_data.pad_to_max_length, given.train_sampling_strategy) == (True, "random")

    args = dataclasses.replace(args, do_train=True, do_eval=False)
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    data = load_data(data_args, args, tokenizer)
    features = model_inputs(data.train_features, True)
    lengths = [len(ids) for ids in features["input_ids"]]
    trainer = QACompressTrainer(model=load_qa_model(str(tiny_bert_dir)), args=args, train_dataset=features,
                                processing_class=tokenizer, data_collator=data.collator)  # fmt: skip
    batches = list(trainer.get_train_dataloader())
    real = [batch["attention_mask"].sum(1) for batch in batches]
    assert sum(len(r) for r in real) == len(lengths) and sorted(int(n) for r in real for n in r) == sorted(lengths)
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert widths == [int(r.max()) for r in real], (widths, [int(r.max()) for r in real])
    # Grouped by length: fewer padded tokens than the same batches drawn in a random order would need.
    padded = sum(w * len(r) for w, r in zip(widths, real))
    order = np.random.default_rng(0).permutation(lengths)
    random_padded = sum(max(order[i : i + 8]) * len(order[i : i + 8]) for i in range(0, len(order), 8))
    print(f"{len(lengths)} features, {sum(lengths)} real tokens: {padded} padded grouped, {random_padded} in random order")
    assert padded < random_padded and max(widths) <= data_args.max_seq_length


def test_the_defaults_table_of_the_docs_is_what_compress_runs_with(tmp_path):
    """docs/compress.md's table of defaults against what `compress` parses when no flag is given: a default
    changed in code (or in the docs) alone fails here. Bookkeeping flags (checkpoints, logging) need no row."""
    text = (REPO_ROOT / "docs" / "compress.md").read_text()
    rows = re.findall(r"^\| `--(\w+)` \| ([^|]+) \|", text, re.MULTILINE)
    documented = {flag: cell.strip().strip("`") for flag, cell in rows}
    parsed = parse_compress_args(["--model_name_or_path", "m", "--train_file", "t.json", "--target_speedup", "2",
                                  "--output_dir", str(tmp_path)])  # fmt: skip
    values = {k: v for part in parsed for k, v in vars(part).items()}
    bookkeeping = {"per_device_eval_batch_size", "save_steps", "save_total_limit", "logging_steps"}
    assert set(COMPRESS_DEFAULTS) - bookkeeping <= set(documented), (sorted(COMPRESS_DEFAULTS), sorted(documented))
    for flag, cell in documented.items():
        word = re.split(r"[\s:(]", cell)[0]
        actual = values[flag]
        if isinstance(actual, bool):
            expected = {"off": False, "false": False, "on": True, "true": True}[word.lower()]
        elif isinstance(actual, (int, float)):
            expected = type(actual)(float(word))
        else:
            expected, actual = word, str(getattr(actual, "value", actual))
        assert actual == expected, (flag, cell, actual)
