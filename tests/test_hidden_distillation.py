"""Layer-wise (hidden-state) distillation: the loss against a hand computation, CoFi-style layer
matching when depths differ, and the trainer adding it with its weight on real tiny BERT models."""

from __future__ import annotations

import pytest
import torch

from qacompress.cli import main
from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.distillation import DistillationConfig, freeze_teacher, hidden_distillation_loss


def hand_mse(a, b, mask):
    """Mean over non-padding tokens of the mean squared difference per hidden unit, by loops."""
    total, count = 0.0, 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if mask[i, j]:
                total += float(((a[i, j] - b[i, j]) ** 2).mean())
                count += 1
    return total / count


def states(layers, seed):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 5, 4, generator=generator) for _ in range(layers + 1))  # + embeddings


MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def test_same_depth_pairs_layers_one_to_one_and_skips_embeddings():
    student, teacher = states(3, 0), states(3, 1)
    expected = sum(hand_mse(s, t, MASK) for s, t in zip(student[1:], teacher[1:])) / 3
    assert hidden_distillation_loss(student, teacher, MASK).item() == pytest.approx(expected, rel=1e-6)
    # Padding is excluded: changing padded positions does not change the loss.
    changed = tuple(s.clone() for s in student)
    for s in changed:
        s[1, 3:] += 100.0
    assert hidden_distillation_loss(changed, teacher, MASK).item() == pytest.approx(expected, rel=1e-6)
    # Embeddings (index 0) are not distilled.
    assert hidden_distillation_loss((student[0] + 5,) + student[1:], teacher, MASK).item() == pytest.approx(expected, rel=1e-6)
    assert hidden_distillation_loss(teacher, teacher, MASK).item() == 0.0


def test_deeper_teacher_layers_match_the_closest_student_layer():
    student = states(2, 0)
    teacher_layers = states(4, 1)
    # Teacher layers 2 and 4 are chosen (evenly spaced); make teacher layer 2 a copy of student layer 2
    # and teacher layer 4 a copy of student layer 1 plus noise: each picks its closest student layer.
    teacher = list(teacher_layers)
    teacher[2] = student[2].clone()
    teacher[4] = student[1] + 0.01
    loss = hidden_distillation_loss(student, tuple(teacher), MASK)
    expected = (0.0 + hand_mse(student[1], teacher[4], MASK)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # A fixed pairing (teacher layer 2k with student layer k) would pay the large mismatches instead.
    fixed = (hand_mse(student[1], teacher[2], MASK) + hand_mse(student[2], teacher[4], MASK)) / 2
    assert fixed > 10 * loss.item()


def test_trainer_adds_the_weighted_hidden_loss(tiny_bert_dir, tokenizer, tmp_path):
    from transformers import AutoConfig

    from qacompress.training.arguments import QACompressTrainingArguments
    from qacompress.training.trainer import QACompressTrainer

    config = AutoConfig.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = load_qa_model(str(tiny_bert_dir), config=config)
    torch.manual_seed(5)
    from transformers import BertForQuestionAnswering

    teacher = freeze_teacher(BertForQuestionAnswering(config))
    enc = tokenizer(["Who?", "When was it?"], ["It was Ann.", "On Sunday morning."], padding=True, return_tensors="pt")
    batch = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["start_positions"], batch["end_positions"] = torch.tensor([4, 5]), torch.tensor([5, 7])
    losses = {}
    for weight in (0.0, 2.0):
        args = QACompressTrainingArguments(output_dir=str(tmp_path / str(weight)), report_to="none", use_cpu=True,
                                           distillation_weight=0.5, hidden_distillation_weight=weight)  # fmt: skip
        trainer = QACompressTrainer(
            model=student, args=args, processing_class=tokenizer, teacher=teacher,
            distillation=DistillationConfig(0.5, 2.0, weight),
        )  # fmt: skip
        trainer.model.train()
        losses[weight] = trainer.compute_loss(trainer.model, dict(batch)).item()
    with torch.no_grad():
        s = student(**{k: v for k, v in batch.items() if "positions" not in k}, output_hidden_states=True)
        t = teacher(**{k: v for k, v in batch.items() if "positions" not in k}, output_hidden_states=True)
    hidden = sum(hand_mse(a, b, batch["attention_mask"]) for a, b in zip(s.hidden_states[1:], t.hidden_states[1:])) / 2
    assert hidden > 1e-3
    assert losses[2.0] == pytest.approx(losses[0.0] + 2.0 * hidden, rel=1e-5)


def test_hidden_distillation_needs_a_teacher_of_the_same_width(tiny_bert_dir, tokenizer, squad_dir, tmp_path, capsys):
    from transformers import BertConfig, BertForQuestionAnswering

    wide = tmp_path / "wide"
    BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=64)).save_pretrained(wide)  # fmt: skip
    tokenizer.save_pretrained(wide)
    status = main([
        "train", "--model_name_or_path", str(tiny_bert_dir), "--teacher_model_name_or_path", str(wide),
        "--hidden_distillation_weight", "1.0", "--train_file", str(squad_dir / "v1.1" / "train.json"),
        "--do_train", "--max_train_samples", "4", "--max_seq_length", "64", "--doc_stride", "16",
        "--output_dir", str(tmp_path / "out"), "--compression", "none",
    ])  # fmt: skip
    assert status == 2
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("qacompress: error")]
    assert len(errors) == 1 and "hidden size 48 differs from the student's 32" in errors[0]
