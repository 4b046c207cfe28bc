"""Fisher importance of every attention head and FFN neuron, from gradients of mask variables.

After Kwon et al. 2022 (*A Fast Post-Training Pruning Framework for Transformers*): a mask variable
m = 1 multiplies each head's context vector (the input of the attention output projection) and each
neuron's activation (the input of the second FFN linear). Removing unit i sets m_i = 0, and the loss
change is approximated to second order by the diagonal of the Fisher information, 1/2 * F_ii.

The loss: Kwon et al. use the task loss with gold labels and assume its gradient is zero at a converged
model. We want no answers, and the obvious label-free loss, KL(unpruned || masked), has zero gradient
at m = 1, so the first-order (Taylor) score is useless. Its Hessian at m = 1, however, is exactly the
Fisher information of the model's own start/end distributions:
    F_ii = sum_x E_{y ~ p(.|x)} (d log p(y|x) / d m_i)^2,
so 1/2 * F_ii estimates the KL a removal causes, with no gradient term to neglect. We estimate it as
the empirical Fisher with labels *sampled* from the unpruned model's predictions (`label_samples`
draws per feature; unbiased), rather than its argmax (biased towards confident positions). Per-sample
gradients come from one backward pass: the masks carry a batch dimension, so d loss / d mask[b] is
sample b's gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qacompress.model.architecture import EncoderLayout, input_names, require_layout
from qacompress.model.surgery import current_sizes


@dataclass
class Importance:
    """Scores of each layer's heads, shape (layers, heads), and FFN neurons, shape (layers, neurons)."""

    heads: torch.Tensor
    neurons: torch.Tensor
    samples: int = 0


class UnitMasks:
    """Multiplicative masks on every head and neuron of a model, installed with forward pre-hooks.

    `heads[l]` / `neurons[l]` are tensors of shape (batch or 1, units); None means no mask (m = 1).
    """

    def __init__(self, model: nn.Module, layout: EncoderLayout | None = None) -> None:
        self.layout = layout or require_layout(model)
        self.head_size = self.layout.head_size
        layers = len(self.layout.layers)
        self.heads: list[torch.Tensor | None] = [None] * layers
        self.neurons: list[torch.Tensor | None] = [None] * layers
        self._handles = []
        for i, layer in enumerate(self.layout.layers):
            self._handles.append(
                model.get_submodule(layer.attention_output).register_forward_pre_hook(self._head_hook(i))
            )
            self._handles.append(model.get_submodule(layer.ffn_out).register_forward_pre_hook(self._neuron_hook(i)))

    def _head_hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            mask = self.heads[i]
            if mask is None:
                return None
            context = args[0]
            shape = context.shape
            per_head = context.reshape(*shape[:-1], -1, self.head_size)
            scale = mask.to(context.dtype).reshape(mask.shape[0], *([1] * (len(shape) - 2)), -1, 1)
            return ((per_head * scale).reshape(shape),) + args[1:]

        return hook

    def _neuron_hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            mask = self.neurons[i]
            if mask is None:
                return None
            hidden = args[0]
            scale = mask.to(hidden.dtype).reshape(mask.shape[0], *([1] * (hidden.dim() - 2)), -1)
            return (hidden * scale,) + args[1:]

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def unit_masks(model: nn.Module, layout: EncoderLayout | None = None) -> Iterator[UnitMasks]:
    masks = UnitMasks(model, layout)
    try:
        yield masks
    finally:
        masks.remove()


def position_log_probs(logits: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Log-softmax over token positions, padding excluded."""
    if attention_mask is not None:
        logits = logits.masked_fill(attention_mask == 0, torch.finfo(logits.dtype).min)
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def forward_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's model inputs, on the model's device (DistilBERT takes no token_type_ids)."""
    device = next(model.parameters()).device
    names = input_names(model.config)
    return {k: v.to(device) for k, v in batch.items() if k in names}


def prediction_entropy(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean entropy of the model's start and end distributions over its features, as a fraction of the
    uniform distribution's over the same tokens (1.0: uniform). Fisher importance draws its labels from
    these distributions, so it assumes a model fine-tuned for QA (peaked); a fresh QA head is near 1."""
    model.eval()
    fractions = []
    with torch.no_grad():
        for batch in batches:
            inputs = forward_inputs(model, batch)
            out = model(**inputs)
            mask = inputs.get("attention_mask")
            tokens = mask.sum(-1).float() if mask is not None else torch.full(out.start_logits.shape[:1], out.start_logits.shape[-1])
            for logits in (out.start_logits, out.end_logits):
                log_p = position_log_probs(logits, mask)
                entropy = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)
                fractions.append((entropy / tokens.clamp(min=2).log()).cpu())
    return float(torch.cat(fractions).mean())


def fisher_importance(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    label_samples: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> Importance:
    """Diagonal Fisher information of the head and neuron masks of `model` (see the module docstring)."""
    if label_samples < 1:
        raise ValueError(f"label_samples must be >= 1, got {label_samples}")
    layout = require_layout(model)
    sizes = current_sizes(model, layout)
    device = next(model.parameters()).device
    heads = [torch.zeros(s["heads"], dtype=torch.float64, device=device) for s in sizes]
    neurons = [torch.zeros(s["intermediate_size"], dtype=torch.float64, device=device) for s in sizes]
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same labels on every device
    was_training = model.training
    model.eval()
    grads_enabled = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the masks need gradients
    count = 0
    try:
        with unit_masks(model, layout) as masks:
            for batch in tqdm(list(batches), desc="Fisher importance", disable=not progress, unit="batch"):
                inputs = forward_inputs(model, batch)
                size = inputs["input_ids"].shape[0]
                masks.heads = [torch.ones(size, s["heads"], device=device, requires_grad=True) for s in sizes]
                masks.neurons = [
                    torch.ones(size, s["intermediate_size"], device=device, requires_grad=True) for s in sizes
                ]
                out = model(**inputs)
                log_probs = [position_log_probs(x, inputs.get("attention_mask")) for x in (out.start_logits, out.end_logits)]
                leaves = masks.heads + masks.neurons
                for draw in range(label_samples):
                    loss = 0.0
                    for lp in log_probs:
                        probs = lp.detach().exp().cpu()
                        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
                        loss = loss - lp.gather(1, labels[:, None]).sum()
                    grads = torch.autograd.grad(loss, leaves, retain_graph=draw + 1 < label_samples)
                    for total, grad in zip(heads + neurons, grads):
                        total += grad.double().pow(2).sum(0) / label_samples
                count += size
    finally:
        for p, flag in zip(model.parameters(), grads_enabled):
            p.requires_grad_(flag)
        model.train(was_training)
    return Importance(_stack(heads), _stack(neurons), count)


def _stack(scores: list[torch.Tensor]) -> torch.Tensor:
    """(layers, units); layers of unequal size (an already pruned model) are padded with -inf."""
    width = max(s.numel() for s in scores)
    out = torch.full((len(scores), width), float("-inf"), dtype=scores[0].dtype, device=scores[0].device)
    for i, s in enumerate(scores):
        out[i, : s.numel()] = s
    return out
