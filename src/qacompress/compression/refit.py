"""Layer-wise least-squares re-fitting: each pruned layer reproduces the unpruned layer's output.

Removing heads and neurons leaves every sublayer (attention, FFN) of the pruned model short of what the
unpruned one adds to its residual stream, and the error compounds through the layers. Kwon et al. 2022
re-scale the surviving units by least squares; K-prune (Park et al. 2024) re-fits the surviving
output-projection weights, a superset (a per-unit scale is one particular weight matrix), so its
least-squares error is never higher. We re-fit the output projection (weights and bias) of each
sublayer, in layer order, on the *pruned* model's inputs, against

    target = x + f(x)   (unpruned residual input plus unpruned sublayer output)
    fit    = x' + W' a' + b'   (pruned residual input plus the pruned sublayer, a' = kept units' outputs)

so a layer also absorbs the drift earlier pruning left in its input. The output projection is the
last linear before the residual add and LayerNorm in BERT, RoBERTa and DistilBERT, so the fit is a
ridge regression with one row per (non-padding) calibration token, solved from normal equations in
float64. A layer whose heads (or neurons) were all removed keeps its zeroed stand-in unit and only
re-fits the bias. A layer removed whole has nothing to fit: the next layer left absorbs its absence, as
it absorbs any drift of its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from qacompress.compression.fisher import forward_inputs
from qacompress.model.architecture import EncoderLayer, EncoderLayout, require_layout
from qacompress.model.surgery import source_layers

#: (residual input module, output projection) of each sublayer, as EncoderLayer roles.
SUBLAYERS = {"attention": ("query", "attention_output"), "ffn": ("ffn_in", "ffn_out")}


class _Stop(Exception):
    """Ends a forward pass once the layer being fitted has been seen."""


@dataclass
class SublayerError:
    """Squared reconstruction error of one sublayer, relative to the squared norm of its unpruned output."""

    layer: int
    sublayer: str
    before: float
    after: float | None = None


def _tokens(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])[mask.reshape(-1).bool()]


def _record(
    model: nn.Module, layers: Sequence[EncoderLayer], mask: torch.Tensor, run, stop: str | None = None
) -> list[dict[str, torch.Tensor]]:
    """Run `run()` with hooks that record, per layer: residual inputs (`<sub>_x`), output-projection
    inputs (`<sub>_a`) and outputs (`<sub>_y`) of both sublayers, one row per non-padding token.
    `stop` names a module after which the pass is cut short."""
    found: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    handles = []

    def input_hook(i: int, key: str):
        def hook(module, args):
            found[i][key] = _tokens(args[0].detach(), mask)

        return hook

    def output_hook(i: int, key: str, name: str):
        def hook(module, args, output):
            found[i][key] = _tokens(output.detach(), mask)
            if name == stop:
                raise _Stop

        return hook

    try:
        for i, layer in enumerate(layers):
            for sub, (residual, projection) in SUBLAYERS.items():
                module = model.get_submodule(getattr(layer, residual))
                handles.append(module.register_forward_pre_hook(input_hook(i, f"{sub}_x")))
                name = getattr(layer, projection)
                module = model.get_submodule(name)
                handles.append(module.register_forward_pre_hook(input_hook(i, f"{sub}_a")))
                handles.append(module.register_forward_hook(output_hook(i, f"{sub}_y", name)))
        with torch.no_grad():
            try:
                run()
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return found


def _capture(model: nn.Module, layers: Sequence[EncoderLayer], batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """`_record` over a whole forward pass of `model` on `batch`."""
    inputs = forward_inputs(model, batch)
    return _record(model, layers, inputs["attention_mask"], lambda: model(**inputs))


@dataclass
class _LayerCall:
    """How the model calls its first encoder layer on one batch: the hidden states and the other
    arguments (attention mask in the layer's own format, ...), so any layer can be re-run alone."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    mask: torch.Tensor

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


def _first_layer_calls(model: nn.Module, layer: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> list[_LayerCall]:
    calls: list[_LayerCall] = []
    for batch in batches:
        inputs = forward_inputs(model, batch)

        def hook(module, args, kwargs):
            calls.append(_LayerCall(args[0].detach(), args[1:], dict(kwargs), inputs["attention_mask"]))
            raise _Stop

        handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
    return calls


def _pairs(original: nn.Module, pruned: nn.Module) -> list[int | None]:
    """For each layer of `original`, the index of the same layer in `pruned` (None where it was removed)."""
    at = {source: j for j, source in enumerate(source_layers(pruned))}
    return [at.get(source) for source in source_layers(original)]


def reconstruction_errors(
    original: nn.Module, pruned: nn.Module, batches: Sequence[dict[str, torch.Tensor]]
) -> list[SublayerError]:
    """Relative error of every sublayer's residual sum, x' + f'(x') against x + f(x), over `batches`
    (the layers `pruned` kept, numbered as in `original`)."""
    layout = require_layout(original)
    layers_p = require_layout(pruned).layers
    pairs = [(i, j) for i, j in enumerate(_pairs(original, pruned)) if j is not None]
    sums = {(i, s): [0.0, 0.0] for i, _ in pairs for s in SUBLAYERS}
    for batch in batches:
        ref = _capture(original, layout.layers, batch)
        got = _capture(pruned, layers_p, batch)
        for i, j in pairs:
            r, g = ref[i], got[j]
            for s in SUBLAYERS:
                target = r[f"{s}_x"] + r[f"{s}_y"]
                sums[(i, s)][0] += float((g[f"{s}_x"] + g[f"{s}_y"] - target).double().pow(2).sum())
                sums[(i, s)][1] += float(r[f"{s}_y"].double().pow(2).sum())
    return [SublayerError(i, s, err / max(norm, 1e-30)) for (i, s), (err, norm) in sums.items()]


def _solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float, bias_only: bool) -> torch.Tensor:
    """[W' b']^T from the normal equations of [a 1] w = t, with ridge on W' (not on the bias)."""
    k = gram.shape[0] - 1
    if bias_only:
        solution = torch.zeros_like(rhs)
        solution[k] = rhs[k] / gram[k, k]
        return solution
    damped = gram.clone()
    scale = gram.diagonal()[:k].mean().clamp_min(1e-12)
    damped.diagonal()[:k] += ridge * scale
    return torch.linalg.solve(damped, rhs)


def refit_(
    original: nn.Module,
    pruned: nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    *,
    ridge: float = 1e-4,
    progress: bool = True,
) -> list[SublayerError]:
    """Re-fit the output projections of `pruned` in place (layer order; sublayers before the first
    pruned one are exact and left alone); returns the relative reconstruction error of each re-fitted
    sublayer on `batches` before and after."""
    layout: EncoderLayout = require_layout(original)
    pruned_layers = require_layout(pruned).layers
    errors: list[SublayerError] = []
    was = original.training, pruned.training
    original.eval()
    pruned.eval()
    # Each layer is run on its own, from the hidden states the previous (re-fitted) layer produced.
    calls = _first_layer_calls(pruned, pruned.get_submodule(pruned_layers[0].module), batches)
    h_original = [c.hidden for c in calls]
    h_pruned = [c.hidden for c in calls]
    steps = tqdm(total=len(pruned_layers) * len(SUBLAYERS), desc="Least-squares re-fit", disable=not progress)
    changed = False
    for i, j in enumerate(_pairs(original, pruned)):
        module_o = original.get_submodule(layout.layers[i].module)
        if j is None:  # removed whole: the unpruned stream goes on through it, the pruned one does not
            with torch.no_grad():
                h_original = [call.run(module_o, h) for call, h in zip(calls, h_original)]
            changed = True
            continue
        layer = pruned_layers[j]
        module_p = pruned.get_submodule(layer.module)
        targets = []
        for b, call in enumerate(calls):

            def run_original(b=b, call=call):
                h_original[b] = call.run(module_o, h_original[b])

            targets.append(_record(original, [layout.layers[i]], call.mask, run_original)[0])
        for sub, (_, projection) in SUBLAYERS.items():
            linear: nn.Linear = pruned.get_submodule(getattr(layer, projection))
            full = linear.in_features == original.get_submodule(getattr(layout.layers[i], projection)).in_features
            if full and not changed:
                continue  # nothing removed here or upstream: already exact (a ridge fit would only blur it)
            changed = True
            bias_only = not linear.weight.detach().any()
            k = linear.in_features
            device = linear.weight.device
            gram = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=device)
            rhs = torch.zeros(k + 1, linear.out_features, dtype=torch.float64, device=device)
            sq_target = before = norm = 0.0
            for b, (call, ref) in enumerate(zip(calls, targets)):
                run = lambda b=b, call=call: call.run(module_p, h_pruned[b])  # noqa: E731
                got = _record(pruned, [layer], call.mask, run, stop=getattr(layer, projection))[0]
                a = got[f"{sub}_a"].double()
                a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
                t = (ref[f"{sub}_x"] + ref[f"{sub}_y"] - got[f"{sub}_x"]).double()
                gram += a.T @ a
                rhs += a.T @ t
                sq_target += float(t.pow(2).sum())
                before += float((got[f"{sub}_y"].double() - t).pow(2).sum())
                norm += float(ref[f"{sub}_y"].double().pow(2).sum())
            solution = _solve(gram, rhs, ridge, bias_only)
            after = float((solution * (gram @ solution)).sum() - 2 * (solution * rhs).sum()) + sq_target
            with torch.no_grad():
                if not bias_only:
                    linear.weight.copy_(solution[:k].T.to(linear.weight.dtype))
                if linear.bias is not None:
                    linear.bias.copy_(solution[k].to(linear.bias.dtype))
            norm = max(norm, 1e-30)
            errors.append(SublayerError(i, sub, before / norm, max(after, 0.0) / norm))
            steps.update()
        with torch.no_grad():
            h_pruned = [call.run(module_p, h) for call, h in zip(calls, h_pruned)]
    steps.close()
    original.train(was[0])
    pruned.train(was[1])
    return errors
