"""`qacompress benchmark` on tiny models: every figure is measured and written, for IR and torch dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import save_model_dir
from qacompress.ir.ptq import post_training_quantize
from qacompress.model.loading import load_tokenizer


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("bench") / "ir"
    save_model_dir(load_qa_model(str(tiny_bert_dir)), load_tokenizer(str(tiny_bert_dir)), out)
    return out


def test_benchmark_measures_ir_and_torch(ir_dir: Path, tiny_bert_dir: Path, tmp_path: Path, squad_dir: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    args = [
        "benchmark", "--model_name_or_path", str(ir_dir), str(tiny_bert_dir), "--names", "ir", "torch",
        "--backend", "openvino", "torch", "--seq_lengths", "32", "64", "--batch_sizes", "1", "2", "--min_seconds", "0.05", "--throughput_seconds", "0.3",
        "--validation_file", str(squad_dir / "v1.1" / "dev.json"), "--max_eval_samples", "8",
        "--max_seq_length", "96", "--doc_stride", "32", "--output_file", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| ir | openvino |" in table and "| torch | torch |" in table
    from qacompress.core.cpu import cpu_info

    assert f"CPU: {cpu_info()['name']}" in table
    record = json.loads(out.read_text())
    assert record["cpu"]["name"] == cpu_info()["name"] and record["cpu"]["isa"] == cpu_info()["isa"]
    assert record["cpu"]["openvino_capabilities"] == cpu_info()["openvino_capabilities"]
    results = {r["name"]: r for r in record["results"]}
    for name, backend in (("ir", "openvino"), ("torch", "torch")):
        r = results[name]
        assert r["backend"] == backend
        assert set(r["latency_ms"]) == {"b1_s32", "b2_s32", "b1_s64", "b2_s64"}
        assert all(0 < cell["median"] <= cell["p90"] for cell in r["latency_ms"].values())
        assert r["size_mb"] > 0 and r["peak_rss_mb"] > 50
        assert 0 <= r["metrics"]["f1"] <= 100
        # Batch 1 over the file's real features: one call per feature, at its true (unpadded) length.
        real = r["real_length"]
        assert real["features"] >= 8 and 0 < real["p50_ms"] <= real["p90_ms"] and real["total_s"] > 0
        assert real["mean_length"] < 96
    assert results["ir"]["throughput_samples_per_s"] > 0
    assert results["torch"]["throughput_samples_per_s"] is None


def test_ptq_baseline_produces_an_int8_ir(ir_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4):
        ids = rng.integers(1000, 5000, size=(1, 24))
        samples.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    out = post_training_quantize(ir_dir, tmp_path / "ptq", samples)
    xml = (out / "openvino_model.xml").read_text()
    assert 'type="FakeQuantize"' in xml
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "model.safetensors").exists()  # a PTQ dir is IR-only
    # Weights on the grid this CPU computes exactly: 8-bit where VNNI/AMX sum into 32 bits, 7-bit where
    # AVX2's saturating 16-bit pair sums would overflow with full 8-bit weights (`ptq_overflow_fix`).
    from qacompress.core.cpu import describe, has_int8_dot_product
    from qacompress.ir.ptq import quantize_ir

    widest = _int8_weight_ranges(out / "openvino_model.xml")
    print(f"largest |int8 weight| per constant: {widest} on {describe()}")
    assert widest and _on_7_bit_grid(widest) != has_int8_dot_product(), widest
    # The check itself tells the grids apart on this CPU: the same IR with the fix forced on.
    import openvino as ov

    forced = quantize_ir(ov.Core().read_model(str(ir_dir / "openvino_model.xml")), samples, overflow_fix="enable")
    ov.save_model(forced, str(tmp_path / "forced.xml"), compress_to_fp16=False)
    assert _on_7_bit_grid(_int8_weight_ranges(tmp_path / "forced.xml")), _int8_weight_ranges(tmp_path / "forced.xml")


def _int8_weight_ranges(xml: Path) -> list[int]:
    """The largest |value| of each int8 constant of an IR (weights, and the word table when it is int8)."""
    import numpy as np
    import openvino as ov

    return [int(np.abs(op.get_data().astype(np.int32)).max()) for op in ov.Core().read_model(str(xml)).get_ops()
            if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]  # fmt: skip


def _on_7_bit_grid(ranges: list[int]) -> bool:
    """Weights within 7 bits (the int8 embedding tables keep their 8-bit grid; per-channel 8-bit weights
    reach 127 in every constant)."""
    return any(r <= 64 for r in ranges)


def test_peak_memory_is_the_measured_models_own(ir_dir: Path) -> None:
    """A parent that holds 1.5 GB must not lend its peak to the child that measures a tiny model."""
    import numpy as np

    from qacompress.measure.benchmark import BenchmarkSettings, measure_model, peak_rss_mb

    ballast = np.ones(1500 * 2**20 // 8)  # written, so resident
    parent = peak_rss_mb()
    result = measure_model(str(ir_dir), settings=BenchmarkSettings(seq_lengths=(32,), batch_sizes=(1,), min_seconds=0.05, throughput_seconds=0))
    assert parent > 1500 > result["peak_rss_mb"] > 50, (parent, result["peak_rss_mb"])
    del ballast
