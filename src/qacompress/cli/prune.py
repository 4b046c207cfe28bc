"""`qacompress prune`: training-free structured pruning of a fine-tuned QA model (`qacompress.jobs.prune`)."""

from __future__ import annotations

from qacompress.cli.common import parse, print_metrics
from qacompress.data.arguments import DataTrainingArguments
from qacompress.jobs.prune import PruneArguments, run_prune


def run(argv: list[str]) -> int:
    args, data_args = parse((PruneArguments, DataTrainingArguments), argv, "qacompress prune")
    print_metrics(run_prune(args, data_args))
    return 0
