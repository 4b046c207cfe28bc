"""The same end result from a GPU run as from a CPU run: tiny-model QAT and JPQD trained on `cuda:0` with
fp16 and with bf16 mixed precision, exported to an OpenVINO IR (which runs on the CPU) and scored;
`torchrun` with nccl when two GPUs are there. Marked `gpu`; skipped where CUDA is absent (CI is CPU).
`benchmarks/gpu_check.sh` runs this module on a lent GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_devices import train_args
from test_jpqd import TINY_JPQD  # warm-up to step 12 of 16
from test_prune import prune_cli

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.quantization import is_quantized

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[1]


def check_run(out: Path) -> dict:
    """The run exported an INT8 IR whose SQuAD scores are the torch model's, within quantization noise."""
    results = json.loads((out / "eval_results.json").read_text())
    assert 'type="FakeQuantize"' in (out / "openvino_model.xml").read_text()
    assert is_quantized(load_qa_model(str(out)))
    # The torch model is scored on the GPU, the IR on the CPU: different kernels, same INT8 grid.
    assert abs(results["eval_f1"] - results["eval_openvino_f1"]) <= 1.0, results
    return results


@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_qat_on_cuda(precision, tiny_bert_dir, squad_dir, tmp_path):
    out = tmp_path / "qat"
    assert main(train_args(tiny_bert_dir, squad_dir, out, precision, "--max_steps", "8")) == 0
    check_run(out)


@pytest.mark.parametrize("precision", ["--fp16", "--bf16"])
def test_jpqd_on_cuda(precision, tiny_bert_dir, squad_dir, tmp_path):
    config = tmp_path / "jpqd.json"
    config.write_text(json.dumps(TINY_JPQD))
    out = tmp_path / "jpqd"
    args = train_args(tiny_bert_dir, squad_dir, out, precision, "--max_steps", "16", "--nncf_compression_config",
                      str(config), "--teacher_model_name_or_path", str(tiny_bert_dir))  # fmt: skip
    assert main(args) == 0
    check_run(out)
    report = json.loads((out / "compression_report.json").read_text())
    assert report["neurons_kept"] < report["neurons_total"]


def test_prune_selects_the_same_structure_on_cuda_as_on_cpu(tiny_bert_dir, squad_dir, tmp_path):
    """Training-free pruning: Fisher scores and the re-fit on the GPU; the label draws come from a CPU
    generator, so the kept heads and neurons are the CPU run's."""
    reports = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        dev = str(squad_dir / "v1.1" / "dev.json")
        assert prune_cli(tiny_bert_dir, out, squad_dir, "--target_macs", "0.6", "--device", device,
                         "--validation_file", dev, "--max_eval_samples", "6") == 0  # fmt: skip
        reports[device] = json.loads((out / "compression_report.json").read_text())["pruning"]
    assert reports["cuda"]["kept"] == reports["cpu"]["kept"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_nccl_two_gpus(tiny_bert_dir, squad_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", str(REPO / "examples" / "run_qa.py")]
    done = subprocess.run(cmd + train_args(tiny_bert_dir, squad_dir, out, "--max_steps", "8")[1:],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    check_run(out)
