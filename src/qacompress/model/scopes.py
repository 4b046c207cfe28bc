"""NNCF 2 scope names for today's models, so that users' existing configs select what they meant.

Seed configs address layers and operations by NNCF 2 scopes such as
`BertForQuestionAnswering/BertModel[bert]/.../BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]`
(modules) and `.../BertSelfOutput[output]/__add___0` (operations). NNCF 3 names graph nodes
differently (`bert/encoder/attention/output/add/0`, layer index dropped), so qacompress rebuilds the
NNCF 2 names itself: module scopes from the module tree, operation scopes by tracing one forward pass
with NNCF 3's own naming and recording, for each operation, the module that ran it. Patterns follow
NNCF's rule: an entry containing `{re}` is a regular expression searched in the name, anything else
must equal it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from qacompress.model.architecture import find_layout

#: NNCF 2 wrapped these module types and named them after the wrapper.
_NNCF2_WRAPPERS = {nn.Linear: "NNCFLinear", nn.Embedding: "NNCFEmbedding", nn.Conv1d: "NNCFConv1d"}

#: NNCF 3 reports `a + b` as `add`; NNCF 2 named it after the dunder method. Both are offered.
_NNCF2_OP_ALIASES = {"add": "__add__", "iadd": "__iadd__", "mul": "__mul__", "sub": "__sub__", "truediv": "__truediv__"}


def matches(name: str, patterns: Iterable[str]) -> bool:
    """NNCF's matching rule: `{re}` marks a regex searched in `name`; other entries match exactly."""
    for pattern in patterns:
        if "{re}" in pattern:
            if re.search(pattern.replace("{re}", ""), name):
                return True
        elif pattern == name:
            return True
    return False


def matches_any(names: Iterable[str], patterns: Iterable[str]) -> bool:
    """True when any of `names` (one object's alternative scope names) matches any pattern."""
    patterns = list(patterns)
    return any(matches(name, patterns) for name in names)


def compile_check(pattern: str) -> str | None:
    """The regex error of a `{re}` pattern, or None when it compiles."""
    if "{re}" not in pattern:
        return None
    try:
        re.compile(pattern.replace("{re}", ""))
    except re.error as exc:
        return str(exc)
    return None


def module_scopes(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Module name -> its NNCF 2 scope, plus the BERT alias when the module plays a BERT role."""
    layout = find_layout(model)
    root = type(model).__name__
    scopes: dict[str, str] = {"": root}
    for name, module in model.named_modules():
        if not name:
            continue
        parent, _, attr = name.rpartition(".")
        cls = _NNCF2_WRAPPERS.get(type(module), type(module).__name__)
        scopes[name] = f"{scopes[parent]}/{cls}[{attr}]"
    result: dict[str, tuple[str, ...]] = {}
    for name, scope in scopes.items():
        alias = layout.bert_alias(name) if layout else None
        result[name] = (scope,) if alias in (None, scope) else (scope, alias)
    return result


def op_scopes(model: nn.Module, example_input: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """NNCF 3 graph node name -> NNCF 2 scope names of that operation.

    Traces one forward pass of the plain (not yet quantized) model under NNCF 3's own naming mode.
    """
    from nncf.torch.function_hook.hook_executor_mode import FunctionHookMode
    from nncf.torch.function_hook.hook_storage import HookStorage

    scopes = module_scopes(model)
    by_module = {id(module): scopes[name][0] for name, module in model.named_modules()}
    records: dict[str, tuple[str, ...]] = {}
    counts: Counter[tuple[int, str]] = Counter()

    class _Recorder(FunctionHookMode):
        def get_next_op_call_name(self, fn_name: str) -> str:
            nncf3 = super().get_next_op_call_name(fn_name)
            module = next((m for m in reversed(self.module_call_stack) if id(m) in by_module), model)
            index = counts[(id(module), fn_name)]
            counts[(id(module), fn_name)] += 1
            base = by_module[id(module)]
            names = [fn_name] + ([_NNCF2_OP_ALIASES[fn_name]] if fn_name in _NNCF2_OP_ALIASES else [])
            records[nncf3] = tuple(f"{base}/{n}_{index}" for n in names)
            return nncf3

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Recorder(model=model, hook_storage=HookStorage()):
            model(**example_input)
    finally:
        model.train(was_training)
    return records

