"""`qacompress compress`: from a fine-tuned QA model to the fastest model for this CPU that keeps its
accuracy, in one run (`qacompress.jobs.compress`)."""

from __future__ import annotations

import shlex

from qacompress.jobs.compress import format_report, parse_compress_args, run_compress


def run(argv: list[str]) -> int:
    report = run_compress(*parse_compress_args(argv), command=shlex.join(["qacompress", "compress", *argv]))
    print(format_report(report))
    return 0
