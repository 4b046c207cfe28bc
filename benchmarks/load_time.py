"""How long loading and validating a SQuAD file takes (parse, validate every record, build the Arrow
dataset): the v1.1 train slice (3,807 questions) and dev slice (810). Target: the train slice in
under 3 s. This was a timed assertion in tests/test_data.py, where a loaded 2-core CI machine made it
fail by chance; here it is measured as the median of repeated loads.
Writes `benchmarks/results/load_time.json` and `.md`. Usage: `python benchmarks/load_time.py [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SQUAD, write_results  # noqa: E402

from qacompress.core.cpu import cpu_info, describe  # noqa: E402
from qacompress.data.squad import load_examples  # noqa: E402

TARGET_S = 3.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for name in ("train.json", "dev.json"):
        path = SQUAD / name
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            dataset = load_examples(str(path))
            seconds.append(time.perf_counter() - started)
        rows.append({"file": name, "questions": len(dataset), "median_s": round(statistics.median(seconds), 3),
                     "max_s": round(max(seconds), 3), "repeats": args.repeats})  # fmt: skip
    train = rows[0]["median_s"]
    load = os.getloadavg()[0]  # other work on the machine inflates these figures
    data = {"cpu": cpu_info(), "load_average_1min": load, "rows": rows, "target": {"train_median_s": train, "wanted_max_s": TARGET_S, "met": train < TARGET_S}}
    lines = [f"Loading SQuAD v1.1 slices with validation ({describe()}; load average {load:.1f})", "", "| file | questions | median s | max s |", "|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['questions']} | {r['median_s']:.3f} | {r['max_s']:.3f} |" for r in rows]
    lines += ["", f"target: train slice < {TARGET_S} s: {'met' if train < TARGET_S else 'missed'} ({train:.3f} s)"]
    write_results("load_time", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
