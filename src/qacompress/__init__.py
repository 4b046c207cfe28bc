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

from qacompress.errors import ConfigError, DataError, ModelError, QACompressError

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported when first used.
_EXPORTS: dict[str, tuple[str, str]] = {
    "run_train": ("qacompress.train", "run_train"),  # not `train`: that name is the module qacompress.train
    "ModelArguments": ("qacompress.arguments", "ModelArguments"),
    "DataTrainingArguments": ("qacompress.arguments", "DataTrainingArguments"),
    "QACompressTrainingArguments": ("qacompress.arguments", "QACompressTrainingArguments"),
    "QuantizationConfig": ("qacompress.config", "QuantizationConfig"),
    "MovementSparsityConfig": ("qacompress.config", "MovementSparsityConfig"),
    "load_compression_config": ("qacompress.config", "load_compression_config"),
    "quantize_model": ("qacompress.quantization", "quantize_model"),
    "attach_movement_pruning": ("qacompress.movement", "attach_movement_pruning"),
    "prune_": ("qacompress.structured", "prune_"),
    "LayerKeep": ("qacompress.structured", "LayerKeep"),
    "PruneConfig": ("qacompress.prune", "PruneConfig"),
    "fisher_prune": ("qacompress.prune", "fisher_prune"),
    "load_qa_model": ("qacompress.models", "load_qa_model"),
    "load_tokenizer": ("qacompress.models", "load_tokenizer"),
    "load_examples": ("qacompress.data", "load_examples"),
    "save_model_dir": ("qacompress.export", "save_model_dir"),
    "evaluate": ("qacompress.evaluation", "evaluate"),
    "DecodeSettings": ("qacompress.evaluation", "DecodeSettings"),
    "QAPredictor": ("qacompress.predict", "QAPredictor"),
}

__all__ = ["ConfigError", "DataError", "ModelError", "QACompressError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qacompress' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value
