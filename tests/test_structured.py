"""Physical removal of attention heads and FFN neurons on real tiny BERT/DistilBERT models: the
pruned model computes what the masked one computes, shrinks, records its shapes, reloads, and
exports to a smaller OpenVINO IR that agrees with torch."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from qacompress.compression.checkpoint import load_qa_model
from qacompress.compression.export import save_model_dir
from qacompress.core.errors import ModelError
from qacompress.model.architecture import require_layout
from qacompress.model.surgery import LayerKeep, current_sizes, linear_weight_count, prune_

N_HEADS, HEAD_SIZE, HIDDEN, FFN = 4, 8, 32, 64

QUESTIONS = ["Who led the parade?", "When did the parade take place in the old town?"]
CONTEXTS = [
    "The parade was led by the purple elephant on Sunday.",
    "Sunday's parade, led by a purple elephant, went through the old town in the morning.",
]


@pytest.fixture(scope="module")
def inputs(tokenizer):
    encoded = tokenizer(QUESTIONS, CONTEXTS, padding=True, return_tensors="pt")
    assert (encoded["attention_mask"] == 0).any()  # the shorter pair is padded
    return dict(encoded)


def model_inputs(model, inputs):
    if model.config.model_type == "distilbert":
        return {k: v for k, v in inputs.items() if k != "token_type_ids"}
    return inputs


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(**model_inputs(model, inputs))
    return out.start_logits, out.end_logits


def masked_reference(model, keep):
    """A deep copy whose removed heads and neurons are zeroed in place (the masked model)."""
    ref = copy.deepcopy(model)
    layout = require_layout(ref)
    with torch.no_grad():
        for layer, spec in zip(layout.layers, keep):
            rows = [h * HEAD_SIZE + i for h in range(N_HEADS) if h not in spec.heads for i in range(HEAD_SIZE)]
            for name in (layer.query, layer.key, layer.value):
                linear = ref.get_submodule(name)
                linear.weight[rows, :] = 0
                linear.bias[rows] = 0
            ref.get_submodule(layer.attention_output).weight[:, rows] = 0
            neurons = [n for n in range(FFN) if n not in spec.neurons]
            ffn_in = ref.get_submodule(layer.ffn_in)
            ffn_in.weight[neurons, :] = 0
            ffn_in.bias[neurons] = 0
            ref.get_submodule(layer.ffn_out).weight[:, neurons] = 0
    return ref


def assert_same_logits(a, b, atol=1e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


KEEP = [
    LayerKeep(heads=[1, 3], neurons=[0, 3, 7, 8, 20, 33, 41, 50, 63]),
    LayerKeep(heads=[0, 2, 3], neurons=list(range(0, 64, 2))),
]
KEEP_EMPTY = [
    LayerKeep(heads=[], neurons=[4, 5, 60]),  # no head left in layer 0
    LayerKeep(heads=[2], neurons=[]),  # no neuron left in layer 1
]


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_distilbert_dir"])
@pytest.mark.parametrize("keep", [KEEP, KEEP_EMPTY], ids=["some", "empty-layers"])
def test_pruned_model_equals_masked_model(request, fixture, keep, inputs):
    model = load_qa_model(str(request.getfixturevalue(fixture))).eval()
    original = logits(model, inputs)
    reference = masked_reference(model, keep)
    expected = logits(reference, inputs)
    # Masking changes the function, so the comparison below is not trivially satisfied.
    assert not torch.allclose(original[0], expected[0], atol=1e-3)

    prune_(model, keep)
    assert_same_logits(logits(model, inputs), expected)

    layout = require_layout(model)
    for layer, spec in zip(layout.layers, keep):
        heads = max(len(spec.heads), 1)  # an empty layer keeps one zeroed unit
        neurons = max(len(spec.neurons), 1)
        for name in (layer.query, layer.key, layer.value):
            assert model.get_submodule(name).weight.shape == (heads * HEAD_SIZE, HIDDEN)
            assert model.get_submodule(name).bias.shape == (heads * HEAD_SIZE,)
        assert model.get_submodule(layer.attention_output).weight.shape == (HIDDEN, heads * HEAD_SIZE)
        assert model.get_submodule(layer.ffn_in).weight.shape == (neurons, HIDDEN)
        assert model.get_submodule(layer.ffn_out).weight.shape == (HIDDEN, neurons)
        holder = model.get_submodule(layer.heads_module)
        count = getattr(holder, "num_attention_heads", None) or holder.n_heads
        assert count == heads
        if not spec.heads:
            assert not model.get_submodule(layer.attention_output).weight.any()
        if not spec.neurons:
            assert not model.get_submodule(layer.ffn_out).weight.any()
    assert model.config.qacompress_pruning == {
        "layers": [
            {"heads": max(len(k.heads), 1), "intermediate_size": max(len(k.neurons), 1)} for k in keep
        ]
    }
    assert current_sizes(model) == model.config.qacompress_pruning["layers"]


def test_kept_weights_are_the_original_ones(tiny_bert_dir):
    model = load_qa_model(str(tiny_bert_dir))
    layout = require_layout(model)
    layer = layout.layers[0]
    query = model.get_submodule(layer.query).weight.detach().clone()
    out = model.get_submodule(layer.attention_output).weight.detach().clone()
    ffn_in = model.get_submodule(layer.ffn_in).weight.detach().clone()
    prune_(model, KEEP)
    torch.testing.assert_close(model.get_submodule(layer.query).weight, torch.cat([query[8:16], query[24:32]]))
    torch.testing.assert_close(
        model.get_submodule(layer.attention_output).weight, torch.cat([out[:, 8:16], out[:, 24:32]], dim=1)
    )
    torch.testing.assert_close(model.get_submodule(layer.ffn_in).weight, ffn_in[KEEP[0].neurons])


def test_prune_needs_one_entry_per_layer(tiny_bert_dir):
    model = load_qa_model(str(tiny_bert_dir))
    with pytest.raises(ValueError, match="expected 2 LayerKeep entries, got 1"):
        prune_(model, KEEP[:1])


def test_prune_refuses_an_unknown_architecture():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ModelError, match="structured pruning"):
        prune_(model, [])


def test_linear_weight_count_before_and_after(tiny_bert_dir):
    model = load_qa_model(str(tiny_bert_dir))
    # 2 layers x (4 attention matrices of 32x32 + 2 FFN matrices of 32x64); embeddings and QA head excluded
    assert linear_weight_count(model) == 2 * (4 * 32 * 32 + 2 * 32 * 64) == 16384
    prune_(model, KEEP)
    expected = sum(4 * HIDDEN * len(k.heads) * HEAD_SIZE + 2 * HIDDEN * len(k.neurons) for k in KEEP)
    assert linear_weight_count(model) == expected == (4 * 32 * 16 + 2 * 32 * 9) + (4 * 32 * 24 + 2 * 32 * 32)


def test_saved_pruned_model_reloads_and_exports_a_smaller_ir(tiny_bert_dir, tokenizer, inputs, tmp_path):
    from transformers import AutoConfig

    from qacompress.ir.runtime import OpenVINOQAModel

    full = load_qa_model(str(tiny_bert_dir)).eval()
    full_dir = save_model_dir(full, tokenizer, tmp_path / "full", export_ir=True)

    model = load_qa_model(str(tiny_bert_dir)).eval()
    prune_(model, KEEP)
    expected = logits(model, inputs)
    pruned_dir = save_model_dir(model, tokenizer, tmp_path / "pruned", export_ir=True)

    saved = json.loads((pruned_dir / "config.json").read_text())
    assert saved["qacompress_pruning"] == {
        "layers": [{"heads": 2, "intermediate_size": 9}, {"heads": 3, "intermediate_size": 32}]
    }
    config = AutoConfig.from_pretrained(pruned_dir)
    assert config.model_type == "bert"
    assert config.num_attention_heads == 4  # the full-size config, shrunk by qacompress_pruning

    reloaded = load_qa_model(str(pruned_dir))
    assert current_sizes(reloaded) == saved["qacompress_pruning"]["layers"]
    assert_same_logits(logits(reloaded, inputs), expected, atol=1e-6)

    runner = OpenVINOQAModel(pruned_dir)
    ov_start, ov_end = runner({k: v.numpy() for k, v in inputs.items()})
    # f32 inference on CPU (the runner asks for INFERENCE_PRECISION_HINT=f32): only summation order
    # and fused kernels differ from torch. Logits of this random model are ~0.3 in magnitude and agree
    # to ~1e-7; 1e-5 leaves room for other CPUs' kernels while a wrong graph (a missing or extra head
    # or neuron changes logits by >1e-3, as the masking test checks) would still fail.
    np.testing.assert_allclose(ov_start, expected[0].numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(ov_end, expected[1].numpy(), atol=1e-5, rtol=1e-4)

    full_bin = (full_dir / "openvino_model.bin").stat().st_size
    pruned_bin = (pruned_dir / "openvino_model.bin").stat().st_size
    removed_bytes = 4 * (linear_weight_count(full) - linear_weight_count(model))
    assert pruned_bin < full_bin
    # The IR shrinks by (at least most of) the removed f32 weights, not just by some metadata.
    assert full_bin - pruned_bin >= 0.9 * removed_bytes


def test_saved_pruned_distilbert_reloads(tiny_distilbert_dir, tokenizer, inputs, tmp_path):
    model = load_qa_model(str(tiny_distilbert_dir)).eval()
    prune_(model, KEEP_EMPTY)
    expected = logits(model, inputs)
    directory = save_model_dir(model, tokenizer, tmp_path / "pruned", export_ir=False)
    reloaded = load_qa_model(str(directory))
    assert current_sizes(reloaded) == [{"heads": 1, "intermediate_size": 3}, {"heads": 1, "intermediate_size": 1}]
    assert_same_logits(logits(reloaded, inputs), expected, atol=1e-6)
