"""qacompress: small, fast extractive question answering on CPUs.

Quantization-aware training (NNCF), structured pruning (movement pruning during training, or Fisher
pruning without training) with distillation, SQuAD evaluation and OpenVINO export, behind the
interface of optimum-intel's former `run_qa.py` example, and as Python verbs:

    model = qacompress.load_qa_model("my-squad-model")
    qat = qacompress.quantize_model(model, qacompress.QuantizationConfig(), calibration)  # then train
    pruner = qacompress.attach_movement_pruning(model, movement_config)  # train, then:
    kept, frozen = pruner.convert(model)                                 # heads/neurons cut out
    result = qacompress.fisher_prune(model, batches, qacompress.PruneConfig(target_macs=0.6))
    qacompress.save_model_dir(model, tokenizer, "out")                   # torch + OpenVINO IR
    qacompress.evaluate("out", "dev.json")                               # {"exact_match", "f1", ...}
    qacompress.QAPredictor("out")("Who won?", context)
    qacompress.run_train(ModelArguments(...), DataTrainingArguments(...), QACompressTrainingArguments(...))

The heavy modules (torch, NNCF, OpenVINO) load on first use of a verb, so `import qacompress` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from qacompress.core.errors import ConfigError, DataError, ModelError, QACompressError

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported when first used.
_EXPORTS: dict[str, tuple[str, str]] = {
    "compress": ("qacompress.jobs.compress", "compress"),
    "run_train": ("qacompress.jobs.train", "run_train"),
    "ModelArguments": ("qacompress.training.arguments", "ModelArguments"),
    "DataTrainingArguments": ("qacompress.data.arguments", "DataTrainingArguments"),
    "QACompressTrainingArguments": ("qacompress.training.arguments", "QACompressTrainingArguments"),
    "QuantizationConfig": ("qacompress.compression.config", "QuantizationConfig"),
    "MovementSparsityConfig": ("qacompress.compression.config", "MovementSparsityConfig"),
    "load_compression_config": ("qacompress.compression.config", "load_compression_config"),
    "quantize_model": ("qacompress.compression.quantization", "quantize_model"),
    "attach_movement_pruning": ("qacompress.compression.movement", "attach_movement_pruning"),
    "prune_": ("qacompress.model.surgery", "prune_"),
    "LayerKeep": ("qacompress.model.surgery", "LayerKeep"),
    "PruneConfig": ("qacompress.compression.config", "PruneConfig"),
    "fisher_prune": ("qacompress.compression.pruning", "fisher_prune"),
    "load_qa_model": ("qacompress.compression.checkpoint", "load_qa_model"),
    "load_tokenizer": ("qacompress.model.loading", "load_tokenizer"),
    "load_examples": ("qacompress.data.squad", "load_examples"),
    "save_model_dir": ("qacompress.compression.export", "save_model_dir"),
    "evaluate": ("qacompress.inference.evaluation", "evaluate"),
    "DecodeSettings": ("qacompress.data.postprocess", "DecodeSettings"),
    "QAPredictor": ("qacompress.inference.predict", "QAPredictor"),
}

__all__ = ["ConfigError", "DataError", "ModelError", "QACompressError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qacompress' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value
