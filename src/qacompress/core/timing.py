"""Timing a call, the one way every latency figure of qacompress is taken: warm-up calls first, then
wall-clock time (`time.perf_counter`) per call, medians rather than means (a 2-core machine's
scheduler adds rare long calls)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Timing:
    """How long to time a call: `warmup` calls, then at least `min_iterations` calls and `min_seconds`."""

    warmup: int = 3
    min_iterations: int = 10
    min_seconds: float = 2.0


def elapsed_ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`, in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def time_calls(fn: Callable[[], object], timing: Timing = Timing()) -> dict[str, float]:
    """Median and p90 wall time (ms) of `fn()` after warm-up calls, and how many calls were timed."""
    for _ in range(timing.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < timing.min_iterations or time.perf_counter() - start < timing.min_seconds:
        times.append(elapsed_ms(fn))
    times.sort()
    return {
        "median": round(statistics.median(times), 3),
        "p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3),
        "n": len(times),
    }


def interleaved(
    calls: list[Callable[[], object]], rounds: int, min_seconds: float, *, progress: bool = False, desc: str = ""
) -> list[list[float]]:
    """Each call's median latency (ms) in each of `rounds` rounds of `min_seconds / rounds`, all calls
    timed once per round, so that load that comes and goes on a shared machine slows them alike: the
    way to compare calls with each other."""
    timing = Timing(warmup=2, min_iterations=5, min_seconds=min_seconds / rounds)
    medians: list[list[float]] = [[] for _ in calls]
    for _ in tqdm(range(rounds), desc=desc, disable=not progress, unit="round"):
        for call, times in zip(calls, medians):
            times.append(time_calls(call, timing)["median"])
    return medians


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int, min_seconds: float) -> dict[str, float]:
    """Each named call's latency (ms): the median of its round medians in `interleaved` rounds."""
    per_round = interleaved(list(calls.values()), rounds, min_seconds)
    return {name: float(np.median(times)) for name, times in zip(calls, per_round)}


def synthetic_inputs(batch: int, length: int, vocab_size: int, names: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    """Token ids of a given shape (speed does not depend on which tokens they are). Ordinary words of a
    WordPiece vocabulary start near id 1000; a smaller vocabulary draws from its upper half."""
    rng = np.random.default_rng(seed)
    high = min(vocab_size, 20000)
    ids = rng.integers(min(1000, high // 2), high, size=(batch, length), dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    inputs["token_type_ids"][:, length // 4 :] = 1
    return {k: v for k, v in inputs.items() if k in names}
