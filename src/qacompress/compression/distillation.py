"""Knowledge distillation from a fine-tuned QA teacher (Hinton et al. 2015), optionally layer-wise.

The student matches the teacher's softened distributions over start and end positions:
loss = (1 - w) * task + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the
start and end heads. The T^2 factor keeps the gradient scale independent of T.

With a teacher of the same hidden size, `hidden_weight` > 0 adds the mean squared error between
teacher and student layer outputs (CoFi, Xia et al. 2022: what lets heavily pruned models recover).
Pruning heads and neurons keeps the depth, so layers pair one to one; when depths differ, each of
an evenly spaced subset of teacher layers is paired with the student layer closest to it (CoFi's
dynamic layer matching, without its learned projection since the hidden sizes agree).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from qacompress.core.errors import ModelError, QACompressError


@dataclass
class DistillationConfig:
    """Weight w in [0, 1] of the distillation term, softmax temperature T >= 1, and the weight of the
    layer-wise hidden-state term: also `train`'s flags of the same names (its arguments inherit them)."""

    distillation_weight: float = field(default=0.5, metadata={"help": "Weight w of the distillation loss, in [0, 1]"})
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T >= 1"})
    hidden_distillation_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the teacher-student hidden-state MSE (layer-wise distillation; same hidden size)"},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise QACompressError(f"--distillation_weight must be in [0, 1], got {self.distillation_weight}")
        if self.hidden_distillation_weight < 0:
            raise QACompressError(f"--hidden_distillation_weight must be >= 0, got {self.hidden_distillation_weight}")
        if self.distillation_temperature < 1.0:
            raise QACompressError(f"--distillation_temperature must be >= 1, got {self.distillation_temperature}")


def distillation_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    temperature: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL between temperature-softened teacher and student position distributions, mean of start/end.

    Padding positions (attention_mask == 0) are excluded from both distributions.
    """
    losses = []
    for s, t in zip(student, teacher):
        if attention_mask is not None:
            s = s.masked_fill(attention_mask == 0, torch.finfo(s.dtype).min)
            t = t.masked_fill(attention_mask == 0, torch.finfo(t.dtype).min)
        log_p_student = F.log_softmax(s / temperature, dim=-1)
        log_p_teacher = F.log_softmax(t / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        losses.append(kl * temperature**2)
    return sum(losses) / len(losses)


class TeacherLogits:
    """A frozen teacher's start/end logits per training feature, computed at its first sight and kept.

    A recovery of several epochs shows the teacher each feature once per epoch, and a frozen teacher in eval
    mode answers the same every time: its forward (about a quarter of a recovery step of a pruned MiniLM on
    2 cores) then runs once per feature, not once per epoch. A feature is known by its tokens and token
    types at its unpadded positions, and its logits are kept for those positions only, so a batch padded to
    another length finds them (padding is masked out of the distillation loss). Kept in float32: about
    1.3 KB for a feature of 160 tokens, under 20 MB for train-12k's 13,290 features, about 120 MB for all
    of SQuAD v1.1's 88k.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.kept: dict[bytes, torch.Tensor] = {}  # (2, unpadded length) start and end logits per feature
        self.computed = 0  # features the teacher ran on (the others came from `kept`)

    @staticmethod
    def _keys(inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> list[bytes]:
        """One key per row: a hash of its tokens and token types at its unpadded positions (one copy of the
        batch to the host, not one per row)."""
        named = [inputs[name].cpu().numpy() for name in ("input_ids", "token_type_ids") if name in inputs]
        mask = mask.cpu().numpy()
        keys = []
        for row in range(mask.shape[0]):
            digest = hashlib.blake2b(digest_size=16)
            for values in named:
                digest.update(values[row][mask[row]].tobytes())
            keys.append(digest.digest())
        return keys

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits of a batch (`inputs`: model inputs without labels), zero at padding."""
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones_like(ids, dtype=torch.bool)
        keys = self._keys(inputs, mask)
        missing = [row for row, key in enumerate(keys) if key not in self.kept]
        if missing:
            with torch.no_grad():
                out = self.teacher(**{name: value[missing] for name, value in inputs.items()})
            for i, row in enumerate(missing):
                self.kept[keys[row]] = torch.stack((out.start_logits[i], out.end_logits[i]))[:, mask[row]].float()
            self.computed += len(missing)
        logits = torch.zeros((2, *ids.shape), device=ids.device)
        logits[:, mask] = torch.cat([self.kept[key] for key in keys], dim=1)
        return logits[0], logits[1]


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error per hidden unit over non-padding tokens."""
    err = (a - b).pow(2).mean(-1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1)


def hidden_distillation_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between layer outputs (`output_hidden_states`, embeddings at index 0 excluded), averaged
    over the paired layers (see the module docstring for the pairing)."""
    s_layers, t_layers = student[1:], teacher[1:]
    if len(s_layers) == len(t_layers):
        pairs = [_masked_mse(s, t, attention_mask) for s, t in zip(s_layers, t_layers)]
        return sum(pairs) / len(pairs)
    count = min(len(s_layers), len(t_layers))
    chosen = [t_layers[round((k + 1) * len(t_layers) / count) - 1] for k in range(count)]
    losses = []
    for t in chosen:
        candidates = torch.stack([_masked_mse(s, t, attention_mask) for s in s_layers])
        losses.append(candidates[candidates.detach().argmin()])
    return sum(losses) / len(losses)


def check_hidden_sizes(student_config, teacher_config, teacher_name: str) -> None:
    """Layer-wise distillation compares hidden states unit by unit: the widths must agree."""
    s, t = student_config.hidden_size, teacher_config.hidden_size
    if s != t:
        raise ModelError(
            f"teacher {teacher_name}: hidden size {t} differs from the student's {s}; "
            "--hidden_distillation_weight needs a teacher of the same hidden size (use 0 to distil logits only)"
        )


def check_teacher_tokenizer(student_tokenizer, teacher_tokenizer, teacher_name: str) -> None:
    """Distillation compares logits position by position: both must tokenise text identically."""
    probe = "Which NFL team represented the AFC at Super Bowl 50? The Denver Broncos, naïvely 24–10."
    same_vocab = student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    same_ids = student_tokenizer(probe)["input_ids"] == teacher_tokenizer(probe)["input_ids"]
    if not (same_vocab and same_ids):
        raise ModelError(
            f"teacher {teacher_name}: its tokenizer ({type(teacher_tokenizer).__name__}, "
            f"{len(teacher_tokenizer)} tokens) differs from the student's ({type(student_tokenizer).__name__}, "
            f"{len(student_tokenizer)} tokens); distillation needs the same tokenizer "
            "(e.g. a bert-base-uncased student with a bert-large-uncased teacher)"
        )


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients: the teacher only provides targets."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
