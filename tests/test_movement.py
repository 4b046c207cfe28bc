"""Movement pruning on real tiny BERT/DistilBERT models: the warm-up schedule, masks and their
straight-through gradient, the regulariser, target selection from a seed-like NNCF config, and the
resolution of masks into whole heads and FFN neurons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.config import MovementSparsityConfig, parse_compression_config
from qacompress.compression.movement import MaskedLinear, attach_movement_pruning, detach_movement_pruning
from qacompress.core.errors import ConfigError
from qacompress.core.ondisk import MOVEMENT_ATTR
from qacompress.model.architecture import require_layout

HEAD_SIZE = 8  # tiny models: hidden 32, 4 heads


def seed_like(block=(8, 8), **params) -> MovementSparsityConfig:
    """The seed JPQD config's movement section, with blocks that fit the tiny models' 32x32 weights."""
    section = {
        "algorithm": "movement_sparsity",
        "params": {
            "warmup_start_epoch": 1,
            "warmup_end_epoch": 3,
            "importance_regularization_factor": 0.1,
            "steps_per_epoch": 10,
            **params,
        },
        "sparse_structure_by_scopes": [
            {"mode": "block", "sparse_factors": list(block), "target_scopes": "{re}.*BertAttention.*"},
            {"mode": "per_dim", "axis": 0, "target_scopes": "{re}.*BertIntermediate.*"},
            {"mode": "per_dim", "axis": 1, "target_scopes": "{re}.*BertOutput.*"},
        ],
        "ignored_scopes": ["{re}.*NNCFEmbedding.*", "{re}.*qa_outputs.*", "{re}.*LayerNorm.*"],
    }
    parsed = parse_compression_config([section], source="seed-like.json")
    assert parsed.warnings == []
    return parsed.movement_sparsity


@pytest.fixture
def bert(tiny_bert_dir):
    return load_qa_model(str(tiny_bert_dir))


def bert_linears(prefix="bert.encoder.layer", layers=2):
    return {
        f"{prefix}.{i}.{rel}"
        for i in range(layers)
        for rel in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    }


# ---- schedule -----------------------------------------------------------------------------------


def test_schedule_threshold_and_factor_follow_the_concave_warmup(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0, power=3))
    assert pruner.warmup_bounds() == (10, 30)  # epochs 1..3 at 10 steps per epoch

    for step in (0, 5, 9):
        pruner.set_step(step)
        assert pruner.threshold == -math.inf
        assert pruner.regularization_factor == 0.0

    pruner.set_step(10)  # warm-up starts: initial threshold, no regularisation yet
    assert pruner.threshold == pytest.approx(-1.0, abs=1e-12)
    assert pruner.regularization_factor == pytest.approx(0.0, abs=1e-12)

    # half-way: concave polynomial 1 - (1 - 0.5)^3 = 0.875 of the way from -1 to 0
    pruner.set_step(20)
    assert pruner.threshold == pytest.approx(-1.0 + 0.875 * (0.0 - (-1.0)))
    assert pruner.threshold == pytest.approx(-0.125)
    assert pruner.regularization_factor == pytest.approx(0.0875)

    # a quarter: 1 - 0.75^3 = 0.578125
    pruner.set_step(15)
    assert pruner.threshold == pytest.approx(-1.0 + 0.578125)
    assert pruner.regularization_factor == pytest.approx(0.1 * 0.578125)

    for step in (30, 31, 100):
        pruner.set_step(step)
        assert pruner.threshold == pytest.approx(0.0, abs=1e-12)
        # Masks are final after warm-up, so the regulariser is off (NNCF dropped it once frozen).
        assert pruner.regularization_factor == 0.0


def test_schedule_needs_steps_per_epoch(bert):
    config = seed_like(init_importance_threshold=-1.0)
    config.steps_per_epoch = None
    pruner = attach_movement_pruning(bert, config)
    with pytest.raises(RuntimeError, match="steps_per_epoch"):
        pruner.set_step(0)


def _expand_by_hand(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Each score copied to every weight of its block (rows // small rows, cols // small cols)."""
    if len(shape) == 1:
        r = shape[0] // small.shape[0]
        return np.array([small[i // r] for i in range(shape[0])])
    r, c = shape[0] // small.shape[0], shape[1] // small.shape[1]
    return np.array([[small[i // r, j // c] for j in range(shape[1])] for i in range(shape[0])])


def fine_grained() -> MovementSparsityConfig:
    """One score per weight (no sparse_structure_by_scopes): every expanded score is distinct."""
    config = seed_like()
    config.sparse_structure_by_scopes = []
    return config


@pytest.mark.parametrize("structured", [True, False], ids=["blocks", "fine"])
def test_adaptive_init_threshold_is_the_kth_smallest_expanded_score(bert, structured):
    pruner = attach_movement_pruning(bert, seed_like() if structured else fine_grained())  # no init threshold
    assert pruner.init_threshold is None
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in list(pruner.scores.values()) + list(pruner.bias_scores.values()):
            p.copy_(torch.randn(p.shape, generator=gen))

    expanded = []
    for name, t in pruner.targets.items():
        linear = bert.get_submodule(name)
        expanded.append(_expand_by_hand(pruner.scores[t.key].detach().numpy(), tuple(linear.weight.shape)).ravel())
        if t.prune_bias:
            expanded.append(_expand_by_hand(pruner.bias_scores[t.key].detach().numpy(), tuple(linear.bias.shape)))
    flat = np.sort(np.concatenate(expanded))
    n_weights = sum(bert.get_submodule(name).weight.numel() for name in pruner.targets)
    assert flat.size > n_weights  # bias scores take part too
    k = int(0.001 * flat.size) + 1
    expected = float(flat[k - 1])
    if not structured:
        assert flat[k - 2] < expected < flat[k]  # distinct neighbours: an off-by-one in k would show

    pruner.set_step(5)  # before warm-up: not computed yet
    assert pruner.init_threshold is None
    pruner.set_step(10)
    assert pruner.init_threshold == pytest.approx(expected, abs=1e-6)
    assert pruner.threshold == pytest.approx(expected, abs=1e-6)
    # About 0.1% of the weights are masked right at the start of the warm-up.
    share = (flat <= expected).mean()
    assert 0 < share <= 0.002
    # Later steps keep the initial threshold rather than recomputing it.
    with torch.no_grad():
        for p in pruner.scores.values():
            p.add_(5.0)
    pruner.set_step(20)
    assert pruner.init_threshold == pytest.approx(expected, abs=1e-6)
    assert pruner.threshold == pytest.approx(expected + 0.875 * (0.0 - expected), abs=1e-6)


# ---- masks --------------------------------------------------------------------------------------

QUERY0 = "bert.encoder.layer.0.attention.self.query"
FFN_IN0 = "bert.encoder.layer.0.intermediate.dense"
FFN_OUT0 = "bert.encoder.layer.0.output.dense"


def test_masks_expand_block_scores_to_the_weight_shape(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0))
    t = pruner.targets[QUERY0]
    assert pruner.scores[t.key].shape == (4, 4)
    assert pruner.bias_scores[t.key].shape == (4,)
    with torch.no_grad():
        pruner.scores[t.key].copy_(torch.arange(16, dtype=torch.float32).view(4, 4) - 7.5)  # -7.5 .. 7.5
        pruner.bias_scores[t.key].copy_(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    pruner.threshold = 0.0
    weight_mask, bias_mask = pruner.masks(QUERY0)
    assert weight_mask.shape == (32, 32)
    assert bias_mask.shape == (32,)
    for r in range(32):
        for c in range(32):
            assert weight_mask[r, c].item() == float((r // 8) * 4 + (c // 8) - 7.5 > 0), (r, c)
        assert bias_mask[r].item() == float((r // 8) % 2 == 1)

    # The patched forward really uses the masked weight and bias.
    linear = bert.get_submodule(QUERY0)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    expected = x @ (linear.weight * weight_mask).T + linear.bias * bias_mask
    torch.testing.assert_close(linear(x).detach(), expected.detach())
    assert not torch.allclose(linear(x), F.linear(x, linear.weight, linear.bias))

    # Rows (axis 0) and columns (axis 1) of the FFN pair.
    t_in, t_out = pruner.targets[FFN_IN0], pruner.targets[FFN_OUT0]
    assert (t_in.mode, t_in.factors, t_in.prune_bias) == ("per_dim", (1, 32), True)
    assert (t_out.mode, t_out.factors, t_out.prune_bias) == ("per_dim", (32, 1), False)
    with torch.no_grad():
        pruner.scores[t_in.key].copy_(torch.where(torch.arange(64) % 3 == 0, 1.0, -1.0).view(64, 1))
        pruner.scores[t_out.key].copy_(torch.where(torch.arange(64) < 10, 1.0, -1.0).view(1, 64))
    mask_in, _ = pruner.masks(FFN_IN0)
    mask_out, bias_out = pruner.masks(FFN_OUT0)
    assert bias_out is None
    assert mask_in.shape == (64, 32) and mask_out.shape == (32, 64)
    assert torch.equal(mask_in, (torch.arange(64) % 3 == 0).float().view(64, 1).expand(64, 32))
    assert torch.equal(mask_out, (torch.arange(64) < 10).float().view(1, 64).expand(32, 64))


def test_straight_through_gradient_of_scores(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0))
    t = pruner.targets[QUERY0]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        pruner.scores[t.key].copy_(torch.randn(4, 4, generator=gen))
        pruner.bias_scores[t.key].copy_(torch.randn(4, generator=gen))
    pruner.threshold = 0.0
    linear = bert.get_submodule(QUERY0)
    x = torch.randn(5, 32, generator=gen)
    target = torch.randn(5, 32, generator=gen)

    def loss_of(out):
        return ((out - target) ** 2).sum() + out.tanh().sum()

    bert.zero_grad()
    loss_of(linear(x)).backward()
    score_grad = pruner.scores[t.key].grad.clone()
    bias_score_grad = pruner.bias_scores[t.key].grad.clone()

    # Reference: gradient of the same loss with respect to the effective (masked) weight and bias.
    weight_mask, bias_mask = (m.detach() for m in pruner.masks(QUERY0))
    assert 0 < weight_mask.mean() < 1  # some blocks masked, some not
    w_eff = (linear.weight.detach() * weight_mask).requires_grad_()
    b_eff = (linear.bias.detach() * bias_mask).requires_grad_()
    grad_w, grad_b = torch.autograd.grad(loss_of(F.linear(x, w_eff, b_eff)), (w_eff, b_eff))
    expected = (grad_w * linear.weight.detach()).view(4, 8, 4, 8).sum(dim=(1, 3))
    expected_bias = (grad_b * linear.bias.detach()).view(4, 8).sum(dim=1)
    torch.testing.assert_close(score_grad, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias_score_grad, expected_bias, rtol=1e-5, atol=1e-5)
    # The gradient reaches masked blocks too (that is what lets a pruned block come back).
    masked_blocks = pruner.scores[t.key].detach() <= 0
    assert masked_blocks.any()
    assert (score_grad[masked_blocks] != 0).all()


# ---- regulariser ------------------------------------------------------------------------------


def test_regularization_matches_the_documented_formula(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0))
    pruner.set_step(5)
    assert pruner.regularization().item() == 0.0  # factor 0 before warm-up

    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in list(pruner.scores.values()) + list(pruner.bias_scores.values()):
            p.copy_(torch.randn(p.shape, generator=gen))
    pruner.set_step(20)
    factor = pruner.regularization_factor
    assert factor == pytest.approx(0.0875)

    per_layer = []
    for t in pruner.targets.values():
        s = torch.sigmoid(pruner.scores[t.key].detach()).numpy().astype(np.float64)
        loss = 0.5 * t.factors[0] * t.factors[1] * s.mean()
        if t.prune_bias:
            b = torch.sigmoid(pruner.bias_scores[t.key].detach()).numpy().astype(np.float64)
            loss += 0.5 * t.factors[0] * b.mean()
        per_layer.append(loss)
    assert len(per_layer) == 12
    expected = factor * float(np.mean(per_layer))
    reg = pruner.regularization()
    assert reg.item() == pytest.approx(expected, rel=1e-5)

    # It pushes scores down: its gradient on every score is positive.
    reg.backward()
    assert all((p.grad > 0).all() for p in pruner.scores.values())


# ---- target selection -------------------------------------------------------------------------


def test_attach_selects_the_encoder_linears_with_the_configured_modes(bert):
    ids = torch.tensor([[101, 2054, 2003, 1996, 3437, 102, 1996, 3437, 2003, 2182, 102]])
    bert.eval()
    with torch.no_grad():
        plain_logits = bert(input_ids=ids).start_logits
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}

    pruner = attach_movement_pruning(bert, seed_like())
    assert getattr(bert, MOVEMENT_ATTR) is pruner
    assert set(pruner.targets) == bert_linears()
    for name, t in pruner.targets.items():
        if ".attention." in name:
            assert (t.mode, t.factors, t.prune_bias) == ("block", (8, 8), True), name
            assert pruner.scores[t.key].shape == (4, 4)
        elif name.endswith("intermediate.dense"):
            assert (t.mode, t.factors, t.prune_bias) == ("per_dim", (1, 32), True), name
            assert pruner.scores[t.key].shape == (64, 1)
        else:
            assert name.endswith(".output.dense")
            assert (t.mode, t.factors, t.prune_bias) == ("per_dim", (32, 1), False), name
            assert pruner.scores[t.key].shape == (1, 64)
    # Score parameters are part of the model (so the optimizer and checkpoints see them).
    params = dict(bert.named_parameters())
    score_names = {n for n in params if n.endswith((".weight_score", ".bias_score"))}
    assert len(score_names) == 12 + 10  # weight scores + bias scores (none for per-column BertOutput)
    assert {n.rsplit(".", 1)[0] for n in score_names} == bert_linears()  # each in its MaskedLinear
    assert all(isinstance(bert.get_submodule(n), MaskedLinear) for n in bert_linears())
    for n, p in before.items():
        assert torch.equal(params[n], p)

    # Dense before warm-up (threshold -inf): the same logits as the plain model.
    assert pruner.threshold == -math.inf
    with torch.no_grad():
        torch.testing.assert_close(bert(input_ids=ids).start_logits, plain_logits)
        pruner.threshold = 0.0  # all scores are 0: everything masked, the logits change
        assert not torch.allclose(bert(input_ids=ids).start_logits, plain_logits)
    detach_movement_pruning(bert)
    assert not hasattr(bert, MOVEMENT_ATTR)
    assert not any(n.endswith("_score") for n, _ in bert.named_parameters())
    assert not any(isinstance(m, MaskedLinear) for m in bert.modules())
    with torch.no_grad():
        torch.testing.assert_close(bert(input_ids=ids).start_logits, plain_logits)


def test_masked_linears_are_modules_that_copies_and_replicas_carry(bert):
    """Each masked linear owns its scores, so a deep copy (and, by the same token, a DataParallel
    replica on another device) masks with its own scores and threshold, never the original's; the
    swap back to `nn.Linear` keeps the very weight parameters (the optimizer's references stay valid)."""
    import copy

    ids = torch.tensor([[101, 2054, 2003, 1996, 3437, 102, 1996, 3437, 2003, 2182, 102]])
    bert.eval()
    pruner = attach_movement_pruning(bert, seed_like())
    assert "MaskedLinear(in_features=32, out_features=32, bias=True, factors=(8, 8), prune_bias=True)" in repr(bert)
    twin = copy.deepcopy(bert)
    twin_pruner = getattr(twin, MOVEMENT_ATTR)
    assert all(twin_pruner.linears[n] is twin.get_submodule(n) for n in bert_linears())
    with torch.no_grad():
        before = bert(input_ids=ids).start_logits
        twin_pruner.threshold = 0.0  # all scores are 0: the copy masks everything ...
        assert not torch.allclose(twin(input_ids=ids).start_logits, before)
        torch.testing.assert_close(bert(input_ids=ids).start_logits, before)  # ... the original nothing
        for p in twin_pruner.scores.values():
            p.fill_(1.0)  # the copy's own scores bring its weights back
        torch.testing.assert_close(twin(input_ids=ids).start_logits, before)
        assert all((p == 0).all() for p in pruner.scores.values())

    query = bert.get_submodule(QUERY0)
    weight, bias = query.weight, query.bias
    detach_movement_pruning(bert)
    plain = bert.get_submodule(QUERY0)
    assert type(plain) is torch.nn.Linear and plain.weight is weight and plain.bias is bias


def test_attach_works_on_distilbert_through_bert_aliases(tiny_distilbert_dir):
    model = load_qa_model(str(tiny_distilbert_dir))
    pruner = attach_movement_pruning(model, seed_like())
    names = {
        f"distilbert.transformer.layer.{i}.{rel}"
        for i in range(2)
        for rel in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2")
    }
    assert set(pruner.targets) == names
    modes = {n.rsplit(".", 1)[-1]: (t.mode, t.factors) for n, t in pruner.targets.items()}
    assert modes == {
        "q_lin": ("block", (8, 8)),
        "k_lin": ("block", (8, 8)),
        "v_lin": ("block", (8, 8)),
        "out_lin": ("block", (8, 8)),
        "lin1": ("per_dim", (1, 32)),
        "lin2": ("per_dim", (32, 1)),
    }


def test_block_that_does_not_divide_the_weight_is_a_config_error(bert):
    with pytest.raises(ConfigError) as info:
        attach_movement_pruning(bert, seed_like(block=(5, 5)), source="seed-like.json")
    assert info.value.key == "movement_sparsity.sparse_structure_by_scopes[0].sparse_factors"
    assert info.value.file == "seed-like.json"
    assert "32x32" in str(info.value) and "sparse_factors" in str(info.value)
    assert not hasattr(bert, MOVEMENT_ATTR)


def test_scope_that_matches_nothing_is_a_config_error(bert):
    config = seed_like()
    config.sparse_structure_by_scopes[2].target_scopes = ["{re}.*RobertaOutput.*"]
    with pytest.raises(ConfigError) as info:
        attach_movement_pruning(bert, config, source="c.json")
    assert info.value.key == "movement_sparsity.sparse_structure_by_scopes[2].target_scopes"
    assert "RobertaOutput" in str(info.value)

    config = seed_like()
    config.ignored_scopes = config.ignored_scopes + ["BertForQuestionAnswering/NNCFLinear[classifier]"]
    with pytest.raises(ConfigError) as info:
        attach_movement_pruning(bert, config, source="c.json")
    assert info.value.key == "movement_sparsity.ignored_scopes"
    assert not hasattr(bert, MOVEMENT_ATTR)


# ---- structure --------------------------------------------------------------------------------


def test_resolve_structure_keeps_whole_heads_and_neurons(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0))
    layout = require_layout(bert)
    with torch.no_grad():
        for p in list(pruner.scores.values()) + list(pruner.bias_scores.values()):
            p.fill_(-3.0)

    def scores(name, bias=False):
        key = pruner.targets[name].key
        return (pruner.bias_scores if bias else pruner.scores)[key]

    l0, l1 = layout.layers
    with torch.no_grad():
        # layer 0: one 8x8 block of head 2's query rows survives, nothing else of the attention
        scores(l0.query)[2, 1] = 2.0
        # layer 0 FFN: neuron 5 survives through its ffn_in row, neuron 17 through its ffn_out column
        scores(l0.ffn_in)[5, 0] = 2.0
        scores(l0.ffn_out)[0, 17] = 2.0
        # layer 1: head 3 survives through an output-projection column block, head 1 through key biases
        scores(l1.attention_output)[0, 3] = 2.0
        scores(l1.key, bias=True)[1] = 2.0
        # layer 1 FFN: neuron 40 survives through its ffn_in bias only
        scores(l1.ffn_in, bias=True)[40] = 2.0
    pruner.set_step(30)  # end of warm-up: threshold 0
    assert pruner.threshold == 0.0

    keep, leftovers = pruner.resolve_structure(bert, layout)
    assert [k.heads for k in keep] == [[2], [1, 3]]
    assert [k.neurons for k in keep] == [[5, 17], [40]]
    assert leftovers == {}  # every target is a head or FFN linear


def test_resolve_structure_everything_pruned_and_nothing_pruned(bert):
    pruner = attach_movement_pruning(bert, seed_like(init_importance_threshold=-1.0))
    layout = require_layout(bert)
    pruner.set_step(30)
    with torch.no_grad():
        for p in list(pruner.scores.values()) + list(pruner.bias_scores.values()):
            p.fill_(-1.0)
    keep, _ = pruner.resolve_structure(bert, layout)
    assert [(k.heads, k.neurons) for k in keep] == [([], []), ([], [])]
    with torch.no_grad():
        for p in pruner.scores.values():
            p.fill_(1.0)
    keep, _ = pruner.resolve_structure(bert, layout)
    assert [(k.heads, k.neurons) for k in keep] == [(list(range(4)), list(range(64)))] * 2
