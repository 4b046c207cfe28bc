"""A `structured_pruning` run (Kwon et al. 2022, as `qacompress prune`, then recovery): Fisher
selection, removal and re-fit before the first step, then the pruned model's fine-tuning."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from torch import nn

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import save_model_dir
from qacompress.compression.pruning import feature_batches, fisher_prune
from qacompress.core.errors import BudgetError
from qacompress.core.ondisk import FROZEN_MASKS, KEPT, PRUNED_DIR, REPORT
from qacompress.model.surgery import kept_sizes
from qacompress.training.phases import Run, total_steps
from qacompress.training.pruned import barrier, finetune_pruned, freeze_zeros, start_afresh

logger = logging.getLogger(__name__)


def train_structured(run: Run) -> tuple[nn.Module, dict]:
    """A `structured_pruning` run: Fisher selection, removal and re-fit before the first step
    (`qacompress.compression.pruning.fisher_prune`, on `num_samples` training features), then `finetune_pruned`
    for the whole step budget. The pruned float model is kept in `output_dir/pruned`, so a resumed
    run does not select again."""
    compression, args, data = run.compression, run.args, run.data
    sconfig = compression.structured_pruning
    total = total_steps(len(data.train_features), args)
    out = Path(args.output_dir)
    start_afresh(args)
    if not (out / PRUNED_DIR / "config.json").is_file() and args.should_save:
        model = load_qa_model(run.model_path, **run.load).to(args.device)  # the selection runs where training will
        count = min(sconfig.num_samples, len(data.train_features))
        features = data.train_features.shuffle(seed=args.seed).select(range(count))
        # The section's own settings; the run's sequence length, batch size, seed and output precision.
        config = dataclasses.replace(
            sconfig, seq_length=data.max_seq_length, quantized_latency=compression.quantization is not None,
            latency_precision=args.inference_precision, batch_size=args.per_device_eval_batch_size, seed=args.seed,
        )  # fmt: skip
        try:
            result = fisher_prune(model, feature_batches(features, run.tokenizer, config.batch_size), config)
        except BudgetError as exc:  # name the config key the user wrote, not prune's flag
            kind, fraction = config.constraint
            raise BudgetError(
                f"{compression.source}: structured_pruning target_{kind} {fraction} is below the fixed cost: the "
                f"smallest reachable is {exc.smallest:.3f}", fraction=exc.fraction, smallest=exc.smallest,
                remove_layers=exc.remove_layers,
            ) from None  # fmt: skip
        freeze_zeros(result.model, result.frozen)
        logger.info("after Fisher selection: %s", kept_sizes(result.model))
        save_model_dir(
            result.model, run.tokenizer, out / PRUNED_DIR, export_ir=False,
            extra_state={FROZEN_MASKS: result.frozen, KEPT: result.summary["kept"], REPORT: {"pruning": result.summary}},
        )  # fmt: skip
    barrier(args)
    return finetune_pruned(run, 0, total)
