"""How sure a difference in EM or F1 is: the paired bootstrap over questions.

Two models scored on the same questions differ on few of them; resampling the *questions* (not each
model's score separately) keeps that pairing, so the interval reflects how much the difference would
move on another draw of questions from the same distribution (Efron & Tibshirani 1993; the usual test
for comparing systems on one test set, e.g. Koehn 2004 for MT). On 810 SQuAD questions an F1
difference resolves to about a point; on ~10k questions to a few tenths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """`b - a` in percentage points, with its bootstrap interval (`level`, e.g. 0.95)."""

    diff: float
    low: float
    high: float
    level: float
    questions: int
    resamples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.diff:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_bootstrap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Mean of `b - a` over the questions both score (per-question scores in [0, 1], e.g. from
    `metrics.question_scores`), in points, with the percentile interval of `resamples` resamplings of
    the questions. Both must score the same questions: a comparison over different ones is not paired."""
    if a.keys() != b.keys():
        raise ValueError(f"the two models were scored on different questions ({len(a)} vs {len(b)} ids)")
    if not a:
        raise ValueError("no questions to compare")
    ids = sorted(a)
    diffs = 100.0 * (np.array([b[q] for q in ids], dtype=np.float64) - np.array([a[q] for q in ids], dtype=np.float64))
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks keep memory at 256 x questions
        count = min(256, resamples - start)
        means[start : start + count] = diffs[rng.integers(0, len(ids), size=(count, len(ids)))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return PairedDifference(float(diffs.mean()), float(low), float(high), level, len(ids), resamples)
