"""Which IR of one trained model to ship on the CPU at hand: measured, not assumed.

INT8 pays only where the CPU multiplies 8-bit integers into 32-bit sums in one instruction (VNNI,
AMX; see `qacompress.core.cpu`). On AVX2-only CPUs a QAT IR ran *slower* than the FP32 IR of the same model
(MiniLM-L6, batch 1, length 384: 113.8 vs 87.3 ms on a 2-core AMD EPYC). So one model directory is
exported as each variant that makes sense for it (`export.VARIANTS`, and `bf16` where the CPU computes
in bf16: the FP32 IR run with OpenVINO's bf16 inference precision), each variant is measured like any
benchmark row (batch-1 latency, throughput, and F1 with a validation file), and the fastest variant
whose F1 is within `F1_TOLERANCE` of the best is recommended. Without F1 the recommendation is the
fastest variant, and the report says that accuracy was not checked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from torch import nn

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import VARIANTS, model_variants, saved_int8_embeddings, to_openvino
from qacompress.core import atomic
from qacompress.core.cpu import cpu_info, describe
from qacompress.core.errors import ModelError
from qacompress.core.ondisk import IR_FILE
from qacompress.core.timing import interleaved_medians, synthetic_inputs
from qacompress.ir.compile import bound_inference
from qacompress.ir.convert import example_inputs
from qacompress.ir.ptq import save_ir_dir
from qacompress.measure.benchmark import BenchmarkSettings, measure_model
from qacompress.model.loading import load_tokenizer

logger = logging.getLogger(__name__)

#: F1 points a faster variant may lose against the most accurate one and still be recommended.
F1_TOLERANCE = 0.5
REPORT_FILE = "benchmark.json"
VARIANTS_DIR = "variants"
#: Variants that are a runtime precision of another variant's IR, not an IR of their own.
RUNTIME_VARIANTS = {"bf16": "fp32"}
#: `export --variant` choices.
EXPORT_CHOICES = ("auto", *VARIANTS)


def has_bf16() -> bool:
    """True where OpenVINO can compute in bf16 natively (AVX-512 BF16 or AMX)."""
    return any(f in cpu_info()["isa"] for f in ("avx512_bf16", "amx_bf16"))


def candidates(model: nn.Module) -> list[str]:
    """The variants worth measuring for `model` on this CPU."""
    return [*model_variants(model), *(["bf16"] if has_bf16() else [])]


def build_variants(model_dir: str | Path, output_dir: str | Path) -> dict[str, tuple[Path, str]]:
    """Write each variant's IR directory under `output_dir/variants/`; name -> (IR dir, precision)."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    model = load_qa_model(str(model_dir))
    example = example_inputs(load_tokenizer(str(model_dir)))
    int8_embeddings = saved_int8_embeddings(model_dir)
    built: dict[str, tuple[Path, str]] = {}
    for name in candidates(model):
        if name in RUNTIME_VARIANTS:
            built[name] = (built[RUNTIME_VARIANTS[name]][0], name)
            continue
        ov_model = to_openvino(model, example, name, int8_embeddings=int8_embeddings)
        built[name] = (save_ir_dir(ov_model, model_dir, output_dir / VARIANTS_DIR / name), "f32")
    return built


def recommend(variants: dict[str, dict], tolerance: float = F1_TOLERANCE) -> tuple[str, str]:
    """(name, why): the lowest batch-1 latency among variants within `tolerance` F1 of the best."""
    if not variants:
        raise ModelError("no variants to choose from")
    scored = {n: v for n, v in variants.items() if v.get("f1") is not None}
    if len(scored) == len(variants):
        best = max(v["f1"] for v in scored.values())
        eligible = {n: v for n, v in scored.items() if v["f1"] >= best - tolerance}
        name = min(eligible, key=lambda n: eligible[n]["latency_ms"])
        return name, f"fastest at batch 1 among variants within {tolerance} F1 of the best ({best:.2f})"
    name = min(variants, key=lambda n: variants[n]["latency_ms"])
    return name, "fastest at batch 1; accuracy not measured (pass --validation_file to check F1)"


def compare_variants(
    model_dir: str | Path,
    output_dir: str | Path | None = None,
    settings: BenchmarkSettings | None = None,
    validation: dict | None = None,
) -> dict:
    """Build, measure and rank the variants of one model; writes and returns `benchmark.json`'s content.

    Latency is batch 1 (the deployment case the recommendation is for) at each of `settings.seq_lengths`;
    `latency_ms` is the longest of them. Each variant is measured in its own process.
    """
    model_dir = Path(model_dir)
    out = Path(output_dir or model_dir)
    settings = dataclasses.replace(settings or BenchmarkSettings(), batch_sizes=(1,))
    shape = f"b1_s{max(settings.seq_lengths)}"
    variants: dict[str, dict] = {}
    for name, (path, precision) in build_variants(model_dir, out).items():
        logger.info("measuring variant %s (%s, %s)", name, path, precision)
        print(f"measuring variant {name} ...", flush=True)
        r = measure_model(
            str(path), name=name, backend="openvino", settings=dataclasses.replace(settings, precision=precision),
            validation=validation,
        )  # fmt: skip
        entry = {
            "latency_ms": r["latency_ms"][shape]["median"],
            "latency_shape": shape,
            "latency_by_shape": r["latency_ms"],
            "throughput": r["throughput_samples_per_s"],
            "size_mb": r["size_mb"],
            "peak_rss_mb": r["peak_rss_mb"],
            "precision": precision,
            "path": str(path),
        }
        if r["metrics"]:
            entry.update(f1=r["metrics"]["f1"], exact_match=r["metrics"]["exact_match"])
        if r["real_length"]:
            entry["real_length"] = r["real_length"]
        variants[name] = entry
    name, why = recommend(variants)
    report = {
        "model": str(model_dir),
        "cpu": cpu_info(),
        "settings": dataclasses.asdict(settings),
        "validation": validation,
        "variants": variants,
        "recommended": name,
        "recommended_because": why,
        "path": str(out / REPORT_FILE),
    }
    atomic.write_json(out / REPORT_FILE, report)
    return report


def format_variants(report: dict) -> str:
    """Markdown table of a `compare_variants` report, CPU line first."""
    header = ["variant", "size MB", f"{next(iter(report['variants'].values()))['latency_shape']} ms", "throughput /s"]
    has_real = any("real_length" in v for v in report["variants"].values())
    has_f1 = any("f1" in v for v in report["variants"].values())
    header += ["real lengths b1 ms (p50/p90)", "real lengths total s"] if has_real else []
    header += ["EM", "F1"] if has_f1 else []
    cpu = report["cpu"]
    lines = [f"CPU: {cpu['name']} ({', '.join(cpu['isa']) or 'no AVX2'})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for name, v in report["variants"].items():
        row = [f"**{name}**" if name == report["recommended"] else name, f"{v['size_mb']:.1f}",
               f"{v['latency_ms']:.1f}", f"{v['throughput']:.1f}" if v["throughput"] else "-"]  # fmt: skip
        if has_real:
            real = v.get("real_length")
            row += [f"{real['p50_ms']:.1f} / {real['p90_ms']:.1f}", f"{real['total_s']:.2f}"] if real else ["-", "-"]
        if has_f1:
            row += [f"{v['exact_match']:.2f}", f"{v['f1']:.2f}"] if "f1" in v else ["-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"\nrecommended: {report['recommended']} ({report['recommended_because']})")
    return "\n".join(lines)


# ---- cheap checks, for export --variant auto and the end of training ----------------------------------
#: Quick timings: this many interleaved rounds, each of at least 5 calls per IR (after 2 warm-up calls)
#: and QUICK_SECONDS / QUICK_ROUNDS seconds.
QUICK_ROUNDS, QUICK_SECONDS = 3, 0.3


def quick_latencies(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Median batch-1 latency (ms) of each call over a few interleaved rounds: compared with each other,
    they see the same load (timed one after the other, load that came and went once made an INT8 IR read
    13.6 ms where it ran in 7.5)."""
    return {name: round(ms, 3) for name, ms in interleaved_medians(calls, QUICK_ROUNDS, QUICK_SECONDS).items()}


def quick_compare(model: nn.Module, tokenizer, seq_length: int, names: list[str] | None = None) -> dict[str, float]:
    """Batch-1 latency (ms) at one length of each variant in `names` (default: all candidates), built in memory."""
    example = example_inputs(tokenizer)
    names = names or candidates(model)
    vocab = getattr(model.config, "vocab_size", 30522)
    calls: dict[str, Callable[[], object]] = {}
    irs: dict[str, object] = {}  # bf16 runs the fp32 IR: converted once
    for name in names:
        ir_name = RUNTIME_VARIANTS.get(name, name)
        if ir_name not in irs:
            irs[ir_name] = to_openvino(model, example, ir_name)
        ov_model = irs[ir_name]
        inputs = synthetic_inputs(1, seq_length, vocab, tuple(i.get_any_name() for i in ov_model.inputs), seed=0)
        calls[name] = bound_inference(ov_model, inputs, precision="bf16" if name == "bf16" else "f32")[0]
    return quick_latencies(calls)


#: A quick timing is a few calls at one length: INT8 counts as slower only beyond this ratio (the
#: H200 host logged "slower" for 2.0 vs 2.0 ms before it existed).
SLOWER_BY = 1.10


def int8_is_slower(timings: dict[str, float]) -> bool:
    """Whether quick timings (`{"int8": ms, "fp32": ms}`) show INT8 slower than FP32 beyond noise."""
    return timings["int8"] > SLOWER_BY * timings["fp32"]


def warn_if_int8_is_slower(model: nn.Module, tokenizer, ir_dir: str | Path, seq_length: int) -> dict[str, float] | None:
    """After training: log one line when this CPU runs the exported INT8 IR (in `ir_dir`) slower than
    the model's FP32 variant.

    Returns the two timings (None for a model without quantizers). A few calls at one length: cheap
    next to training, and enough to see a 30% gap.
    """
    import openvino as ov

    if "int8" not in model_variants(model):
        return None
    fp32 = to_openvino(model, example_inputs(tokenizer), "fp32")
    inputs = synthetic_inputs(1, seq_length, getattr(model.config, "vocab_size", 30522),
                              tuple(i.get_any_name() for i in fp32.inputs), seed=0)  # fmt: skip
    int8 = ov.Core().read_model(str(Path(ir_dir) / IR_FILE))
    timings = quick_latencies({"int8": bound_inference(int8, inputs)[0], "fp32": bound_inference(fp32, inputs)[0]})
    if int8_is_slower(timings):
        logger.warning(
            "this CPU runs the INT8 IR slower than FP32 (%.1f vs %.1f ms at batch 1, length %d; %s): "
            "`qacompress export --variant auto` writes the faster one, `qacompress benchmark --compare_variants` "
            "measures all variants with F1",
            timings["int8"], timings["fp32"], seq_length, describe(),
        )  # fmt: skip
    return timings


def choose_variant(model_dir: str | Path, model: nn.Module, tokenizer, seq_length: int = 384) -> tuple[str, str]:
    """`export --variant auto`: (variant, why). The recommendation of a `benchmark.json` measured on
    this CPU when the model directory has one, else the fastest variant by a quick measurement; `why`
    then says why a `benchmark.json` that is there was not used (another CPU, unreadable, or a
    recommendation this model or CPU does not offer)."""
    path = Path(model_dir) / REPORT_FILE
    ignored = ""  # why a benchmark.json that is there was not used
    if path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
        if not isinstance(report, dict):
            ignored = f"{path} is not a readable report, ignored; "
        else:
            measured_on = report["cpu"] if isinstance(report.get("cpu"), dict) else {}
            if (measured_on.get("name"), measured_on.get("isa")) != (cpu_info()["name"], cpu_info()["isa"]):
                ignored = f"{path} was measured on another CPU ({measured_on.get('name', 'unknown')}), ignored; "
            elif report.get("recommended") in candidates(model):
                return report["recommended"], f"{path} measured on this CPU ({report.get('recommended_because', '')})"
            else:
                ignored = f"{path} recommends {report.get('recommended')!r}, not a variant of this model on this CPU, ignored; "
    timings = quick_compare(model, tokenizer, seq_length)
    name = min(timings, key=timings.get)
    shown = ", ".join(f"{n} {t:.1f} ms" for n, t in timings.items())
    return name, f"{ignored}fastest at batch 1, length {seq_length} on this CPU ({shown}); accuracy not measured"
