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

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qacompress.core import atomic
from qacompress.core.errors import QACompressError
from qacompress.data.metrics import question_scores
from qacompress.model.loading import IR_FILE


@dataclass
class BenchmarkSettings:
    """What to measure; the defaults are the project's headline shapes."""

    batch_sizes: tuple[int, ...] = (1, 8)
    seq_lengths: tuple[int, ...] = (128, 384)
    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = 2.0
    throughput_seconds: float = 5.0
    throughput_seq_length: int = 384
    precision: str = "f32"
    seed: int = 0


@dataclass
class ModelResult:
    """Everything measured for one model."""

    name: str
    path: str
    backend: str
    size_mb: float
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


def synthetic_inputs(batch: int, length: int, vocab_size: int, names: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    """Token ids of a given shape (speed does not depend on which tokens they are). Ordinary words of a
    WordPiece vocabulary start near id 1000; a smaller vocabulary draws from its upper half."""
    rng = np.random.default_rng(seed)
    high = min(vocab_size, 20000)
    ids = rng.integers(min(1000, high // 2), high, size=(batch, length), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    inputs["token_type_ids"][:, length // 4 :] = 1
    return {k: v for k, v in inputs.items() if k in names}


def time_calls(fn, settings: BenchmarkSettings) -> dict[str, float]:
    """Median and p90 wall time (ms) of `fn()` after warm-up calls."""
    for _ in range(settings.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.min_iterations or time.perf_counter() - start < settings.min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "median": round(statistics.median(times), 3),
        "p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
        "n": len(times),
    }


def openvino_throughput(model_dir: str, inputs: dict[str, np.ndarray], settings: BenchmarkSettings) -> float:
    """Samples per second with the THROUGHPUT hint and as many async requests as OpenVINO suggests."""
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if settings.precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = settings.precision
    compiled = core.compile_model(str(Path(model_dir) / IR_FILE), "CPU", config)
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    batch = next(iter(inputs.values())).shape[0]
    for _ in range(len(queue)):
        queue.start_async(inputs)
    queue.wait_all()
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < settings.throughput_seconds:
        queue.start_async(inputs)
        done += 1
    queue.wait_all()
    return round(done * batch / (time.perf_counter() - start), 2)


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
    from qacompress.model.loading import load_config
    from qacompress.inference.runners import load_runner

    runner = load_runner(path, backend=backend, precision=settings.precision)
    resolved = "openvino" if type(runner).__name__ == "OpenVINOQAModel" else "torch"
    vocab = getattr(load_config(path), "vocab_size", 30522)
    result = ModelResult(name=name, path=path, backend=resolved, size_mb=dir_size_mb(path, resolved))
    for seq in settings.seq_lengths:
        for batch in settings.batch_sizes:
            inputs = synthetic_inputs(batch, seq, vocab, runner.input_names, settings.seed)
            result.latency_ms[f"b{batch}_s{seq}"] = time_calls(lambda inputs=inputs: runner(inputs), settings)
    if resolved == "openvino" and settings.throughput_seconds > 0:
        inputs = synthetic_inputs(1, settings.throughput_seq_length, vocab, runner.input_names, settings.seed)
        result.throughput_samples_per_s = openvino_throughput(path, inputs, settings)
    if validation:
        result.metrics, features, result.question_scores = _accuracy(path, runner, validation)
        timed = validation.get("latency_features")
        result.real_length = real_length_latency(runner, features.select(range(min(timed, len(features)))) if timed else features)
    result.peak_rss_mb = peak_rss_mb()
    return asdict(result)


def _accuracy(path: str, runner, validation: dict) -> tuple[dict[str, float], object, dict[str, dict[str, float]]]:
    """EM/F1 (and timings) on the validation file; also returns its features (for `real_length_latency`)
    and, with `validation["per_question"]`, each question's scores (else {})."""
    from qacompress.data.squad import gold_answers
    from qacompress.inference.evaluation import DecodeSettings, eval_data, evaluate_runner
    from qacompress.model.loading import load_tokenizer

    examples, features = eval_data(
        validation["file"], load_tokenizer(path), max_seq_length=validation["max_seq_length"],
        doc_stride=validation["doc_stride"], max_samples=validation.get("max_samples"), pad_to_max_length=False,
    )  # fmt: skip
    predictions, metrics = evaluate_runner(runner, examples, features, DecodeSettings(), progress=False)
    kept = {k: metrics[k] for k in ("exact_match", "f1", "model_runtime", "postprocess_runtime")}
    if not validation.get("per_question"):
        return kept, features, {}
    exact, f1, _ = question_scores(predictions.answers, gold_answers(examples))
    return kept, features, {"exact_match": exact, "f1": f1}


def real_length_latency(runner, features, warmup: int = 3) -> dict[str, float]:
    """Batch-1 latency over every feature at its true length (no padding): p50/p90 ms, total s.

    What a service answering one question at a time sees; the features come unpadded from
    `prepare_eval_features(pad_to_max_length=False)`.
    """
    columns = [c for c in runner.input_names if c in features.column_names]
    rows = [{c: np.asarray([features[i][c]], dtype=np.int64) for c in columns} for i in range(len(features))]
    for inputs in rows[:warmup]:
        runner(inputs)
    times = []
    for inputs in rows:
        t0 = time.perf_counter()
        runner(inputs)
        times.append((time.perf_counter() - t0) * 1000)
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
    """Measure one model in a fresh process (so that peak memory is its own)."""
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
    from qacompress.core.cpu import describe

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


def main(argv: list[str]) -> int:
    """`qacompress benchmark`."""
    parser = argparse.ArgumentParser(prog="qacompress benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", nargs="+", required=True, help="model directories to compare")
    parser.add_argument("--names", nargs="+", help="row names (default: directory names)")
    parser.add_argument(
        "--backend", nargs="+", default=["auto"], choices=("auto", "openvino", "torch"),
        help="one for all models, or one per model (e.g. torch openvino to compare a dir's torch model with its IR)",
    )  # fmt: skip
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq_lengths", nargs="+", type=int, default=[128, 384])
    parser.add_argument("--min_seconds", type=float, default=2.0, help="time spent per latency cell")
    parser.add_argument("--throughput_seconds", type=float, default=5.0)
    parser.add_argument("--throughput_seq_length", type=int, default=384, help="sequence length of the throughput run")
    parser.add_argument("--inference_precision", default="f32", choices=("f32", "bf16", "auto"))
    parser.add_argument("--validation_file", help="also measure EM/F1 on this SQuAD file")
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--output_file", default="benchmark_results.json")
    parser.add_argument(
        "--compare_variants", action="store_true",
        help="measure the deployment variants of one model dir (INT8, weights-only INT8, FP32, bf16 where the "
        "CPU has it) and recommend one; writes benchmark.json to --output_dir",
    )  # fmt: skip
    parser.add_argument("--output_dir", help="with --compare_variants: where variants and benchmark.json go (default: the model dir)")
    args = parser.parse_args(argv)
    count = len(args.model_name_or_path)
    if args.names and len(args.names) != count:
        raise QACompressError("--names needs one name per --model_name_or_path")
    if len(args.backend) not in (1, count):
        raise QACompressError("--backend takes one value, or one per --model_name_or_path")
    backends = args.backend * count if len(args.backend) == 1 else args.backend
    settings = BenchmarkSettings(
        batch_sizes=tuple(args.batch_sizes), seq_lengths=tuple(args.seq_lengths), min_seconds=args.min_seconds,
        throughput_seconds=args.throughput_seconds, throughput_seq_length=args.throughput_seq_length,
        precision=args.inference_precision,
    )
    validation = None
    if args.validation_file:
        validation = {"file": args.validation_file, "max_samples": args.max_eval_samples,
                      "max_seq_length": args.max_seq_length, "doc_stride": args.doc_stride}  # fmt: skip
    if args.compare_variants:
        from qacompress.measure.variants import compare_variants, format_variants

        if count != 1:
            raise QACompressError("--compare_variants takes one --model_name_or_path")
        report = compare_variants(args.model_name_or_path[0], args.output_dir, settings, validation)
        print(format_variants(report))
        print(f"wrote {report['path']}")
        return 0
    names = args.names or [Path(p).name for p in args.model_name_or_path]
    results = []
    for path, name, backend in zip(args.model_name_or_path, names, backends):
        print(f"measuring {name} ({path}, {backend}) ...", flush=True)
        results.append(measure_model(path, name=name, backend=backend, settings=settings, validation=validation))
    table = format_table(results, settings)
    print(table)
    from qacompress.core.cpu import cpu_info

    record = {"settings": asdict(settings), "cpu": cpu_info(), "cpu_count": os.cpu_count(), "results": results}
    atomic.write_json(args.output_file, record)
    print(f"wrote {args.output_file}")
    return 0
