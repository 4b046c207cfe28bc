"""NNCF 2 scope names rebuilt for today's models: NNCF's matching rule, module scopes of real tiny
BERT and DistilBERT QA models (with BERT aliases so the seed configs' BERT class names select the
right DistilBERT linears), the encoder layout, and operation scopes traced with NNCF 3's own naming."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qacompress.compression.checkpoint import load_qa_model
from qacompress.core.errors import ModelError
from qacompress.ir.convert import example_inputs
from qacompress.model.architecture import BERT_QA_HEAD_ALIAS, find_layout, require_layout
from qacompress.model.scopes import compile_check, matches, matches_any, module_scopes, op_scopes

BERT_LAYER = "BertForQuestionAnswering/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[{i}]"
DISTIL_LAYER = (
    "DistilBertForQuestionAnswering/DistilBertModel[distilbert]/Transformer[transformer]/ModuleList[layer]"
    "/TransformerBlock[{i}]"
)
SEED_ATTENTION, SEED_FFN_IN, SEED_FFN_OUT = "{re}.*BertAttention.*", "{re}.*BertIntermediate.*", "{re}.*BertOutput.*"


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    return load_qa_model(str(tiny_bert_dir))


@pytest.fixture(scope="module")
def distilbert(tiny_distilbert_dir):
    return load_qa_model(str(tiny_distilbert_dir))


def selected_linears(model: nn.Module, pattern: str) -> set[str]:
    """Names of the nn.Linear modules any of whose scopes match `pattern` (what a movement target selects)."""
    scopes = module_scopes(model)
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and matches_any(scopes[name], [pattern])
    }


# --- NNCF's matching rule ---------------------------------------------------------------------


def test_re_marker_means_regex_search():
    scope = BERT_LAYER.format(i=0) + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]"
    assert matches(scope, ["{re}.*BertAttention.*"])
    # The first published seed config wrote `BertAttention*` ("n" zero or more times): still a match.
    assert matches(scope, ["{re}.*BertAttention*"])
    # search, not match/fullmatch: no leading `.*` needed, and no anchoring at the end
    assert matches(scope, ["{re}BertSelfAttention"])
    assert matches(scope, ["{re}NNCFLinear\\[query\\]$"])
    assert not matches(scope, ["{re}^BertSelfAttention"])
    assert not matches(scope, ["{re}.*BertIntermediate.*", "{re}NNCFLinear\\[key\\]"])
    # one matching pattern among several is enough
    assert matches(scope, ["{re}.*BertIntermediate.*", "{re}\\[query\\]"])


def test_plain_string_means_exact_equality():
    scope = "BertForQuestionAnswering/NNCFLinear[qa_outputs]"
    assert matches(scope, [scope])
    assert not matches(scope, ["NNCFLinear[qa_outputs]"])  # a substring is not enough
    assert not matches(scope, [scope + "/linear_0"])
    # metacharacters are literal without {re}
    assert not matches("BertForQuestionAnsweringX", ["BertForQuestionAnswering."])
    assert matches("a.b", ["a.b"])
    assert not matches("axb", ["a.b"])
    assert not matches(scope, [])


def test_matches_any_over_alternative_names():
    assert matches_any(("DistilBert/x", "BertOutput/y"), ["{re}BertOutput"])
    assert not matches_any(("DistilBert/x", "Other/y"), ["{re}BertOutput"])
    assert not matches_any((), ["{re}.*"])


def test_compile_check():
    assert compile_check("{re}.*BertAttention.*") is None
    assert compile_check("plain[unbalanced") is None  # not a regex
    assert "unterminated" in compile_check("{re}.*[unbalanced")


# --- module scopes -----------------------------------------------------------------------------


def test_bert_module_scopes_are_nncf2_names(bert):
    scopes = module_scopes(bert)
    assert scopes[""] == ("BertForQuestionAnswering",)
    assert scopes["bert.encoder.layer.1.attention.self.query"] == (
        "BertForQuestionAnswering/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[1]"
        "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]",
    )
    assert scopes["bert.embeddings.word_embeddings"] == (
        "BertForQuestionAnswering/BertModel[bert]/BertEmbeddings[embeddings]/NNCFEmbedding[word_embeddings]",
    )
    assert scopes["bert.encoder.layer.0.output.LayerNorm"] == (BERT_LAYER.format(i=0) + "/BertOutput[output]/LayerNorm[LayerNorm]",)
    assert scopes["qa_outputs"] == (BERT_QA_HEAD_ALIAS,)
    # Every module has a scope, and for BERT the alias is the scope itself (one name each).
    assert set(scopes) == {name for name, _ in bert.named_modules()}
    assert all(len(names) == 1 for names in scopes.values())


def test_distilbert_linears_carry_the_bert_alias(distilbert):
    scopes = module_scopes(distilbert)
    assert scopes["distilbert.transformer.layer.1.attention.q_lin"] == (
        DISTIL_LAYER.format(i=1) + "/DistilBertSelfAttention[attention]/NNCFLinear[q_lin]",
        BERT_LAYER.format(i=1) + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]",
    )
    assert scopes["distilbert.transformer.layer.0.ffn.lin1"][1] == (
        BERT_LAYER.format(i=0) + "/BertIntermediate[intermediate]/NNCFLinear[dense]"
    )
    assert scopes["distilbert.transformer.layer.0.ffn.lin2"][1] == BERT_LAYER.format(i=0) + "/BertOutput[output]/NNCFLinear[dense]"
    assert scopes["distilbert.transformer.layer.0.attention.out_lin"][1] == (
        BERT_LAYER.format(i=0) + "/BertAttention[attention]/BertSelfOutput[output]/NNCFLinear[dense]"
    )
    assert scopes["qa_outputs"] == ("DistilBertForQuestionAnswering/NNCFLinear[qa_outputs]", BERT_QA_HEAD_ALIAS)
    # Modules with no BERT role keep only their own name.
    assert len(scopes["distilbert.transformer.layer.0.sa_layer_norm"]) == 1
    assert len(scopes["distilbert.embeddings.word_embeddings"]) == 1


def test_seed_patterns_select_the_same_roles_in_bert_and_distilbert(bert, distilbert):
    expected_bert = {
        SEED_ATTENTION: {
            f"bert.encoder.layer.{i}.attention.{m}"
            for i in range(2)
            for m in ("self.query", "self.key", "self.value", "output.dense")
        },
        SEED_FFN_IN: {f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)},
        SEED_FFN_OUT: {f"bert.encoder.layer.{i}.output.dense" for i in range(2)},
    }
    expected_distil = {
        SEED_ATTENTION: {
            f"distilbert.transformer.layer.{i}.attention.{m}" for i in range(2) for m in ("q_lin", "k_lin", "v_lin", "out_lin")
        },
        SEED_FFN_IN: {f"distilbert.transformer.layer.{i}.ffn.lin1" for i in range(2)},
        SEED_FFN_OUT: {f"distilbert.transformer.layer.{i}.ffn.lin2" for i in range(2)},
    }
    for pattern in expected_bert:
        assert selected_linears(bert, pattern) == expected_bert[pattern], pattern
        assert selected_linears(distilbert, pattern) == expected_distil[pattern], pattern
    # `BertOutput` must not pick the attention output projection (`BertSelfOutput`) of either family.
    assert not any("attention" in name for name in selected_linears(bert, SEED_FFN_OUT))
    assert not any("out_lin" in name for name in selected_linears(distilbert, SEED_FFN_OUT))
    # The 2023-02 spelling selects the same attention linears.
    assert selected_linears(distilbert, "{re}.*BertAttention*") == expected_distil[SEED_ATTENTION]
    # The seed ignored scopes reach the DistilBERT QA head and layer norms too.
    assert selected_linears(distilbert, "{re}.*qa_outputs.*") == {"qa_outputs"}
    norms = {
        name
        for name, names in module_scopes(distilbert).items()
        if isinstance(distilbert.get_submodule(name), nn.LayerNorm) and matches_any(names, ["{re}.*LayerNorm.*"])
    }
    assert len(norms) == 1 + 2 * 2  # embeddings + (sa_layer_norm, output_layer_norm) per layer


# --- encoder layout ----------------------------------------------------------------------------


def test_find_layout_bert(bert):
    layout = find_layout(bert)
    assert layout.family == "bert"
    assert len(layout.layers) == 2
    assert layout.head_size == 32 // 4
    assert layout.qa_head == "qa_outputs"
    layer = layout.layers[1]
    assert (layer.index, layer.heads_module) == (1, "bert.encoder.layer.1.attention.self")
    assert layer.query == "bert.encoder.layer.1.attention.self.query"
    assert layer.attention_output == "bert.encoder.layer.1.attention.output.dense"
    assert (layer.ffn_in, layer.ffn_out) == ("bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense")
    assert layer.role_of("bert.encoder.layer.1.attention.self.value") == "value"
    assert layer.role_of("bert.encoder.layer.0.attention.self.value") is None
    assert len(layout.roles()) == 2 * 6
    for name in layout.roles():
        assert isinstance(bert.get_submodule(name), nn.Linear)
    assert require_layout(bert) == layout


def test_find_layout_distilbert(distilbert):
    layout = find_layout(distilbert)
    assert layout.family == "distilbert"
    assert len(layout.layers) == 2 and layout.head_size == 8 and layout.qa_head == "qa_outputs"
    layer = layout.layers[0]
    assert layer.heads_module == "distilbert.transformer.layer.0.attention"
    assert (layer.query, layer.key, layer.value) == tuple(
        f"distilbert.transformer.layer.0.attention.{n}" for n in ("q_lin", "k_lin", "v_lin")
    )
    assert (layer.ffn_in, layer.ffn_out) == ("distilbert.transformer.layer.0.ffn.lin1", "distilbert.transformer.layer.0.ffn.lin2")
    assert layout.bert_alias("distilbert.transformer.layer.0.ffn.lin2") == BERT_LAYER.format(i=0) + "/BertOutput[output]/NNCFLinear[dense]"
    assert layout.bert_alias("distilbert.embeddings") is None


def test_non_encoder_module_has_no_layout():
    model = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 4), nn.ReLU()]), nn.Linear(4, 2))
    assert find_layout(model) is None
    with pytest.raises(ModelError, match="BERT-like or DistilBERT"):
        require_layout(model)
    # module scopes still work (no aliases) on an unknown architecture
    scopes = module_scopes(model)
    assert scopes["1.0"] == ("Sequential/ModuleList[1]/NNCFLinear[0]",)
    assert scopes["1.1"] == ("Sequential/ModuleList[1]/ReLU[1]",)


# --- operation scopes --------------------------------------------------------------------------


def test_op_scopes_map_nncf3_names_to_nncf2_scopes(bert, tokenizer):
    bert.train()
    ops = op_scopes(bert, example_inputs(tokenizer, 24))
    assert bert.training, "op_scopes must restore the training flag"
    # NNCF 3 drops the layer index from the node name and counts calls instead; NNCF 2 counted per module.
    assert ops["bert/encoder/attention/output/add/1"] == (
        BERT_LAYER.format(i=1) + "/BertAttention[attention]/BertSelfOutput[output]/add_0",
        BERT_LAYER.format(i=1) + "/BertAttention[attention]/BertSelfOutput[output]/__add___0",
    )
    assert ops["bert/encoder/output/add/0"][1] == BERT_LAYER.format(i=0) + "/BertOutput[output]/__add___0"
    assert ops["bert/encoder/output/LayerNorm/layer_norm/1"] == (
        BERT_LAYER.format(i=1) + "/BertOutput[output]/LayerNorm[LayerNorm]/layer_norm_0",
    )
    assert ops["bert/encoder/attention/self/query/linear/1"] == (
        BERT_LAYER.format(i=1) + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]/linear_0",
    )
    assert ops["bert/embeddings/word_embeddings/embedding/0"] == (
        "BertForQuestionAnswering/BertModel[bert]/BertEmbeddings[embeddings]/NNCFEmbedding[word_embeddings]/embedding_0",
    )
    # Two embedding adds in one module: NNCF 2 numbered them __add___0, __add___1.
    assert ops["bert/embeddings/add/1"][1].endswith("BertEmbeddings[embeddings]/__add___1")
    assert ops["qa_outputs/linear/0"] == ("BertForQuestionAnswering/NNCFLinear[qa_outputs]/linear_0",)
    # The seed config's ignored scopes select residual adds and the first layer norm of each module.
    adds = sorted(n for n, old in ops.items() if matches_any(old, ["{re}.*__add___[0-1]"]))
    assert adds == sorted(
        ["bert/embeddings/add/0", "bert/embeddings/add/1"]
        + [f"bert/encoder/{m}/add/{i}" for m in ("attention/output", "output") for i in range(2)]
    )
    norms = [n for n, old in ops.items() if matches_any(old, ["{re}.*layer_norm_0"])]
    assert len(norms) == 1 + 2 * 2 and all("layer_norm" in n for n in norms)


def test_op_scopes_distilbert(distilbert, tokenizer):
    inputs = example_inputs(tokenizer, 24)
    inputs.pop("token_type_ids", None)
    ops = op_scopes(distilbert, inputs)
    assert ops["distilbert/transformer/add/3"] == (
        DISTIL_LAYER.format(i=1) + "/add_1",
        DISTIL_LAYER.format(i=1) + "/__add___1",
    )
    assert ops["distilbert/transformer/ffn/lin2/linear/1"] == (DISTIL_LAYER.format(i=1) + "/FFN[ffn]/NNCFLinear[lin2]/linear_0",)
    adds = sorted(n for n, old in ops.items() if matches_any(old, ["{re}.*__add___[0-1]"]))
    assert adds == ["distilbert/embeddings/add/0"] + [f"distilbert/transformer/add/{i}" for i in range(4)]


def test_op_scopes_does_not_change_the_model(bert, tokenizer):
    inputs = example_inputs(tokenizer, 16)
    bert.eval()
    with torch.no_grad():
        before = bert(**inputs).start_logits
    op_scopes(bert, inputs)
    with torch.no_grad():
        after = bert(**inputs).start_logits
    assert torch.equal(before, after)
    from nncf.torch.function_hook.wrapper import is_wrapped

    assert not is_wrapped(bert)
