"""Which training plan a run follows, chosen by the sections of its compression config: a registry from
section to plan, as torchao registers a handler per config type. A plan takes the run and returns the
trained model and its metrics; every phase inside it is one `Trainer` run (`phases.fit`).

- no pruning section: one phase, FP32 fine-tuning or QAT (`train_single_phase`);
- `movement_sparsity`: JPQD (`qacompress.training.jpqd`);
- `structured_pruning`: Fisher selection, then recovery (`qacompress.training.structured`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import CompressionConfig
from qacompress.training.jpqd import train_jpqd
from qacompress.training.phases import Run, fit, resolve_resume, with_quantizers
from qacompress.training.structured import train_structured

Plan = Callable[[Run], tuple[nn.Module, dict]]


def train_single_phase(run: Run) -> tuple[nn.Module, dict]:
    """FP32 fine-tuning, or QAT when the compression has a quantization section."""
    args = run.args
    resume = resolve_resume(args, Path(args.output_dir))
    model = with_quantizers(load_qa_model(run.model_path, **run.load), run, resume)
    return fit(model, run, args, resume=resume)


#: Config section -> the plan that trains it (a config holds at most one pruning section).
PLANS: dict[str, Plan] = {"movement_sparsity": train_jpqd, "structured_pruning": train_structured}


def plan_for(compression: CompressionConfig | None) -> Plan:
    """The plan of the run's pruning section, else one phase."""
    for section, plan in PLANS.items():
        if compression is not None and getattr(compression, section) is not None:
            return plan
    return train_single_phase
