"""`qacompress export`: a model folder's IR as the variant asked for, or the one measured fastest here."""

from __future__ import annotations

from dataclasses import dataclass, field

from qacompress.cli.common import ModelRef, parse, require_model
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import default_variant, save_model_dir, saved_int8_embeddings
from qacompress.core.errors import QACompressError
from qacompress.measure.variants import EXPORT_CHOICES, RUNTIME_VARIANTS, choose_variant
from qacompress.model.loading import load_tokenizer


@dataclass
class ExportArguments:
    variant: str | None = field(
        default=None,
        metadata={"help": "auto (the fastest on this CPU, see `benchmark --compare_variants`), int8, int8_weights "
                  "or fp32; default: int8 for a QAT/JPQD model, fp32 otherwise"},
    )  # fmt: skip


def run(argv: list[str]) -> int:
    ref, export_args = parse((ModelRef, ExportArguments), argv, "qacompress export")
    model_dir = require_model(ref)
    if not ref.output_dir:
        raise QACompressError("export needs --output_dir DIR")
    variant = export_args.variant
    if variant is not None and variant not in EXPORT_CHOICES:
        raise QACompressError(f"--variant must be one of {', '.join(EXPORT_CHOICES)}, got {variant!r}")
    model = load_qa_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    note = ""
    if variant == "auto":
        variant, why = choose_variant(model_dir, model, tokenizer)
        note = f" (auto: {variant}, {why})"
        if variant in RUNTIME_VARIANTS:  # a precision, not an IR: ship its IR and say how to run it
            note += f"; run it with --inference_precision {variant}"
            variant = RUNTIME_VARIANTS[variant]
    variant = variant or default_variant(model)
    save_model_dir(model, tokenizer, ref.output_dir, variant=variant, int8_embeddings=saved_int8_embeddings(model_dir))
    print(f"exported {model_dir} -> {ref.output_dir}/openvino_model.xml as {variant}{note}")
    return 0
