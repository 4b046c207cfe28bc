"""Speed, memory and size of QA models, measured side by side on the same inputs.

For each model directory (an OpenVINO IR dir, or a torch dir run with torch): median and p90 latency
at each (batch, sequence length), throughput with OpenVINO's asynchronous requests on all cores, peak
resident memory, size on disk, and optionally EM/F1 on a validation file together with batch-1
latency over the file's real features (their true lengths, unpadded: fixed padded shapes overstate
what INT8 gains on real, shorter inputs). Each model is measured in a fresh process, so peak memory is
its own. `qacompress benchmark` prints a table and writes JSON, both naming the CPU (`qacompress.core.cpu`):
figures from different CPUs are not comparable. `--compare_variants` measures the deployment variants
of one model instead (`qacompress.measure.variants`).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qacompress.core.cpu import describe
from qacompress.core.errors import QACompressError
from qacompress.core.ondisk import IR_FILE
from qacompress.core.timing import Timing, elapsed_ms, synthetic_inputs, time_calls
from qacompress.data.metrics import question_scores
from qacompress.data.postprocess import DecodeSettings
from qacompress.data.squad import gold_answers
from qacompress.inference.evaluation import eval_data, evaluate_runner
from qacompress.inference.runners import load_runner
from qacompress.ir.runtime import ir_throughput
from qacompress.model.loading import load_config, load_tokenizer


@dataclass
class BenchmarkSettings:
    """What to measure; the defaults are the project's headline shapes. The fields with a help text are
    `qacompress benchmark`'s flags."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 8], metadata={"help": "Batch sizes of the latency cells"})
    seq_lengths: list[int] = field(default_factory=lambda: [128, 384], metadata={"help": "Lengths of the latency cells"})
    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = field(default=2.0, metadata={"help": "Time spent per latency cell"})
    throughput_seconds: float = field(default=5.0, metadata={"help": "Time spent on throughput (0: none)"})
    throughput_seq_length: int = field(default=384, metadata={"help": "Sequence length of the throughput run"})
    precision: str = "f32"  # the command's --inference_precision
    seed: int = 0

    @property
    def timing(self) -> Timing:
        return Timing(self.warmup, self.min_iterations, self.min_seconds)


@dataclass
class ModelResult:
    """Everything measured for one model."""

    name: str
    path: str
    backend: str
    size_mb: float
    #: what the backend computes in: OpenVINO's resolved inference precision ("f32", "bf16"), torch's dtype
    precision: str = ""
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # "b1_s384" -> median, p90
    throughput_samples_per_s: float | None = None
    peak_rss_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    #: batch-1 latency over the validation file's features at their true lengths: p50/p90 ms, total s
    real_length: dict[str, float] = field(default_factory=dict)
    #: with `validation["per_question"]`: {"exact_match": {id: 0/1}, "f1": {id: [0, 1]}}, for paired intervals
    question_scores: dict[str, dict[str, float]] = field(default_factory=dict)


def dir_size_mb(path: str | Path, backend: str) -> float:
    """Size of what the backend loads: the IR (.xml + .bin), or the torch weights."""
    path = Path(path)
    files = [path / IR_FILE, path / IR_FILE.replace(".xml", ".bin")] if backend == "openvino" else [
        p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()
    ]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 2)


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB.

    Linux carries `ru_maxrss` across exec, so a spawned child would report its parent's peak; the
    address space's high-water mark (`VmHWM`) starts afresh with the new program.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _measure(path: str, name: str, backend: str, settings: BenchmarkSettings, validation: dict | None) -> dict:
    """Runs in a child process: every measurement of one model."""
    runner = load_runner(path, backend=backend, precision=settings.precision)
    resolved = "openvino" if type(runner).__name__ == "OpenVINOQAModel" else "torch"
    vocab = getattr(load_config(path), "vocab_size", 30522)
    result = ModelResult(name=name, path=path, backend=resolved, size_mb=dir_size_mb(path, resolved), precision=runner.precision)
    for seq in settings.seq_lengths:
        for batch in settings.batch_sizes:
            inputs = synthetic_inputs(batch, seq, vocab, runner.input_names, settings.seed)
            result.latency_ms[f"b{batch}_s{seq}"] = time_calls(lambda inputs=inputs: runner(inputs), settings.timing)
    if resolved == "openvino" and settings.throughput_seconds > 0:
        inputs = synthetic_inputs(1, settings.throughput_seq_length, vocab, runner.input_names, settings.seed)
        result.throughput_samples_per_s = ir_throughput(
            path, inputs, seconds=settings.throughput_seconds, precision=settings.precision
        )
    if validation:
        examples, features = eval_data(
            validation["file"], load_tokenizer(path), max_seq_length=validation["max_seq_length"],
            doc_stride=validation["doc_stride"], max_samples=validation.get("max_samples"), pad_to_max_length=False,
        )  # fmt: skip
        if validation.get("scores", True):
            result.metrics, result.question_scores = _accuracy(runner, examples, features, validation.get("per_question", False))
        timed = validation.get("latency_features")  # None: every feature; 0: no real-length latency
        count = len(features) if timed is None else min(timed, len(features))
        if count > 0:
            result.real_length = real_length_latency(runner, features.select(range(count)))
    result.peak_rss_mb = peak_rss_mb()
    return asdict(result)


def _accuracy(runner, examples, features, per_question: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """EM/F1 (and timings) on the validation features and, with `per_question`, each question's scores (else {})."""
    predictions, metrics = evaluate_runner(runner, examples, features, DecodeSettings(), progress=False)
    kept = {k: metrics[k] for k in ("exact_match", "f1", "model_runtime", "postprocess_runtime")}
    if not per_question:
        return kept, {}
    exact, f1, _ = question_scores(predictions.answers, gold_answers(examples))
    return kept, {"exact_match": exact, "f1": f1}


def real_length_latency(runner, features, warmup: int = 3) -> dict[str, float]:
    """Batch-1 latency over every feature at its true length (no padding): p50/p90 ms, total s.

    What a service answering one question at a time sees; the features come unpadded from
    `prepare_eval_features(pad_to_max_length=False)`.
    """
    columns = [c for c in runner.input_names if c in features.column_names]
    rows = [{c: np.asarray([features[i][c]], dtype=np.int64) for c in columns} for i in range(len(features))]
    for inputs in rows[:warmup]:
        runner(inputs)
    times = [elapsed_ms(lambda inputs=inputs: runner(inputs)) for inputs in rows]
    lengths = [int(r["input_ids"].shape[1]) for r in rows]
    return {
        "features": len(times),
        "mean_length": round(float(np.mean(lengths)), 1) if lengths else 0.0,
        "p50_ms": round(float(np.percentile(times, 50)), 3) if times else 0.0,
        "p90_ms": round(float(np.percentile(times, 90)), 3) if times else 0.0,
        "total_s": round(sum(times) / 1000, 3),
    }


def _child(queue, *args) -> None:
    try:
        queue.put(("ok", _measure(*args)))
    except Exception as exc:  # reported by the parent with the model's name
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def measure_model(
    path: str, *, name: str | None = None, backend: str = "auto", settings: BenchmarkSettings | None = None,
    validation: dict | None = None,
) -> dict:
    """Measure one model in a fresh process (so that peak memory is its own).

    `validation`: {"file", "max_seq_length", "doc_stride", "max_samples"} name the questions; "scores"
    (default true) scores them, "per_question" keeps each question's scores, "latency_features" times that
    many real features at batch 1 (absent: all of them, 0: none)."""
    if not Path(path).is_dir():
        raise QACompressError(f"{path}: no such model directory")
    settings = settings or BenchmarkSettings()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, path, name or Path(path).name, backend, settings, validation))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise QACompressError(f"{path}: benchmark failed: {payload}")
    return payload


def format_table(results: list[dict], settings: BenchmarkSettings, cpu: str | None = None) -> str:
    """Markdown table: one row per model, latency columns per shape, ratios to the first row; the
    CPU (default: this one, `qacompress.core.cpu.describe()`) on the line above."""
    shapes = [f"b{b}_s{s}" for s in settings.seq_lengths for b in settings.batch_sizes]
    header = ["model", "backend", "size MB", "peak RSS MB"] + [f"{s} ms (p50/p90)" for s in shapes]
    header += ["throughput /s", f"speed-up {shapes[-1] if shapes else ''}"]
    has_real = any(r.get("real_length") for r in results)
    if has_real:
        header += ["real lengths b1 ms (p50/p90)", "real lengths total s"]
    has_acc = any(r["metrics"] for r in results)
    if has_acc:
        header += ["EM", "F1"]
    lines = [f"CPU: {cpu or describe()}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = results[0]["latency_ms"].get(shapes[-1], {}).get("median") if results and shapes else None
    for r in results:
        row = [r["name"], r["backend"], f"{r['size_mb']:.1f}", f"{r['peak_rss_mb']:.0f}"]
        row += [f"{r['latency_ms'][s]['median']:.1f} / {r['latency_ms'][s]['p90']:.1f}" for s in shapes]
        row.append(f"{r['throughput_samples_per_s']:.1f}" if r["throughput_samples_per_s"] else "-")
        mine = r["latency_ms"].get(shapes[-1], {}).get("median") if shapes else None
        row.append(f"{base / mine:.2f}x" if base and mine else "-")
        if has_real:
            real = r.get("real_length") or {}
            row += [f"{real['p50_ms']:.1f} / {real['p90_ms']:.1f}", f"{real['total_s']:.2f}"] if real else ["-", "-"]
        if has_acc:
            row += [f"{r['metrics'].get('exact_match', float('nan')):.2f}", f"{r['metrics'].get('f1', float('nan')):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
