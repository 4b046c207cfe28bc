"""The committed reference model (`benchmarks/reference/minilm-squad12k`): a fresh clone loads it as the
FP32 model it was trained as, and its provenance names the run it came from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "reference" / "minilm-squad12k"


def provenance() -> dict:
    return json.loads((REFERENCE / "provenance.json").read_text())


def test_reference_loads_as_an_fp32_minilm_qa_model():
    from qacompress.compression.checkpoint import load_qa_model
    from qacompress.model.loading import load_tokenizer

    model = load_qa_model(str(REFERENCE))
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # stored fp16, computed in FP32
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)
    tokenizer = load_tokenizer(str(REFERENCE))
    encoded = tokenizer("Who won Super Bowl 50?", "The Denver Broncos defeated the Carolina Panthers.", return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded)
    start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())
    answer = tokenizer.decode(encoded["input_ids"][0, start : end + 1])
    assert "broncos" in answer.lower(), answer  # a fine-tuned QA model, not a fresh head
    size = (REFERENCE / "model.safetensors").stat().st_size / 2**20
    assert 40 < size < 50, size  # fp16: half of the 87 MB FP32 weights


def test_reference_provenance_names_its_run():
    """The command, the CPU, the steps and wall time, every dev-10k evaluation of the run (the last at its
    final step) and the final scoring on all 9,961 questions. Whether the run has converged (issue 22:
    the last quarter of the steps adds < 0.3 F1) is read from these evaluations in docs/results.md."""
    p = provenance()
    assert "qacompress train" in p["command"] and "train-12k.json" in p["command"] and "dev-10k.json" in p["command"]
    assert p["cpu"]["name"] and p["global_step"] > 0 and p["train_runtime_s"] > 0
    steps = [e["step"] for e in p["evaluations"]]
    assert steps == sorted(steps) and steps[-1] == p["global_step"], steps
    assert p["final"]["eval_samples"] == p["final"]["eval_openvino_samples"] == 9961, p["final"]
