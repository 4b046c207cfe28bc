"""The README's Python API example, run as written from the repository root (also the suite's one
integration run on the real all-MiniLM-L6-v2 and the real SQuAD slices: default QAT, export,
evaluation of torch model and IR), and the package's lazy verbs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(squad_dir):
    assert "../shared/data/squad" in readme_example()
    out = REPO / "runs" / "api-demo"
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=REPO, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trained = re.search(r"after training: torch F1 ([\d.]+), IR F1 ([\d.]+)", done.stdout)
    evaluated = re.search(r"evaluate\(\): IR F1 ([\d.]+)", done.stdout)
    answer = re.search(r"answer: '(.*)' \(score ([\d.]+)\)", done.stdout)
    assert trained and evaluated and answer, done.stdout
    # evaluate() scores the exported IR on the same 16 questions and settings as the run's own scoring.
    assert evaluated.group(1) == trained.group(2)
    assert answer.group(1) in "The Denver Broncos defeated the Carolina Panthers 24-10." and answer.group(1)
    assert 0.0 < float(answer.group(2)) <= 1.0
    # The packaged MiniLM, quantized by the default config, exported with INT8 weights and FakeQuantize.
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6, config
    assert config["architectures"] == ["BertForQuestionAnswering"]
    xml = (out / "openvino_model.xml").read_text()
    assert 'type="FakeQuantize"' in xml and 'element_type="i8"' in xml
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_samples"] == results["eval_openvino_samples"] == 16, results
    assert len(json.loads((out / "eval_openvino_predictions.json").read_text())) == 16


def test_import_is_light_and_verbs_resolve():
    code = (
        "import sys, qacompress\n"
        "assert 'torch' not in sys.modules, 'import qacompress pulled in torch'\n"
        "from qacompress.jobs.train import run_train\n"
        "assert qacompress.run_train is run_train and callable(qacompress.evaluate)\n"
        "assert set(qacompress.__all__) >= {'run_train', 'evaluate', 'QAPredictor', 'quantize_model', 'fisher_prune'}\n"
        "try:\n    qacompress.nothing_here\nexcept AttributeError:\n    print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
