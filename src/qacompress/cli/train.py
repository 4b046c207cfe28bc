"""`qacompress train`: optimum-intel's run_qa.py flags, fine-tuning with compression, evaluation and export."""

from __future__ import annotations

import os

from qacompress.cli.common import print_metrics
from qacompress.jobs.train import run_train
from qacompress.training.arguments import build_parser, parse_train_args


def run(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        build_parser().print_help()
        return 0
    try:
        metrics = run_train(*parse_train_args(argv))
    finally:
        _release_process_group()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary is enough
        print_metrics(metrics)
    return 0


def _release_process_group() -> None:
    """Under torchrun, each rank releases its process group when its work is done (rank 0 still
    evaluates and exports when the others finish): left to interpreter exit, the teardown of gloo's
    threads once aborted a finished rank (SIGABRT, "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
