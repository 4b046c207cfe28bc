"""Where the attention heads and FFN neurons of a transformer encoder live.

Structured pruning, NNCF scope aliases and physical removal all need the same map: for each layer,
which `nn.Linear` layers project queries, keys and values (one row block per head), which one mixes
the heads back (one column block per head), and which pair forms the feed-forward network (one row of
the first and one column of the second per neuron). Supported families: BERT-like encoders (BERT,
RoBERTa, XLM-R, ELECTRA, MiniLM, CamemBERT: `attention.self.query` ... `output.dense`) and DistilBERT
(`attention.q_lin` ... `ffn.lin2`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from qacompress.core.errors import ModelError

#: Relative module paths of each role inside one encoder layer, per family.
FAMILIES: dict[str, dict[str, str]] = {
    "bert": {
        "heads": "attention.self",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    "distilbert": {
        "heads": "attention",
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attention_output": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
    },
}

ROLES = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")
#: Embedding modules every token reads (BERT, RoBERTa, DistilBERT names): small tables whose rounding
#: would reach every input, so the INT8 IR keeps them float.
SHARED_EMBEDDINGS = ("position_embeddings", "token_type_embeddings")

#: The scope each role has in a BERT model under NNCF 2's naming. Seed configs name BERT classes
#: (`BertAttention`, `BertIntermediate`, `BertOutput`); matching them against these aliases makes
#: the same config select the same layers of a DistilBERT or RoBERTa.
_BERT_LAYER = "BertForQuestionAnswering/BertModel[bert]/BertEncoder[encoder]/ModuleList[layer]/BertLayer[{i}]"
BERT_ALIASES: dict[str, str] = {
    "query": _BERT_LAYER + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[query]",
    "key": _BERT_LAYER + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[key]",
    "value": _BERT_LAYER + "/BertAttention[attention]/BertSelfAttention[self]/NNCFLinear[value]",
    "attention_output": _BERT_LAYER + "/BertAttention[attention]/BertSelfOutput[output]/NNCFLinear[dense]",
    "ffn_in": _BERT_LAYER + "/BertIntermediate[intermediate]/NNCFLinear[dense]",
    "ffn_out": _BERT_LAYER + "/BertOutput[output]/NNCFLinear[dense]",
}
BERT_QA_HEAD_ALIAS = "BertForQuestionAnswering/NNCFLinear[qa_outputs]"


@dataclass(frozen=True)
class EncoderLayer:
    """Module names (as in `model.named_modules()`) of one layer and of its prunable linears."""

    index: int
    module: str  # the layer itself, an entry of the encoder's ModuleList
    heads_module: str
    query: str
    key: str
    value: str
    attention_output: str
    ffn_in: str
    ffn_out: str

    def role_of(self, module_name: str) -> str | None:
        for role in ROLES:
            if getattr(self, role) == module_name:
                return role
        return None


@dataclass(frozen=True)
class EncoderLayout:
    """The prunable structure of a QA model: its layers, head size and QA head."""

    family: str
    layers: tuple[EncoderLayer, ...]
    head_size: int
    qa_head: str | None

    def roles(self) -> dict[str, tuple[EncoderLayer, str]]:
        """Module name -> (layer, role) for every prunable linear."""
        return {getattr(layer, role): (layer, role) for layer in self.layers for role in ROLES}

    def bert_alias(self, module_name: str) -> str | None:
        if module_name == self.qa_head:
            return BERT_QA_HEAD_ALIAS
        found = self.roles().get(module_name)
        if found is None:
            return None
        layer, role = found
        return BERT_ALIASES[role].format(i=layer.index)


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def find_layout(model: nn.Module) -> EncoderLayout | None:
    """The encoder layout of `model`, or None when its architecture is not one we know."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        for family, paths in FAMILIES.items():
            first = f"{list_name}.0"
            if not all(isinstance(_get(model, f"{first}.{paths[r]}"), nn.Linear) for r in ROLES):
                continue
            layers = tuple(
                EncoderLayer(
                    index=i,
                    module=f"{list_name}.{i}",
                    heads_module=f"{list_name}.{i}.{paths['heads']}",
                    **{role: f"{list_name}.{i}.{paths[role]}" for role in ROLES},
                )
                for i in range(len(module))
            )
            head_size = hidden // heads if heads and hidden else 0
            qa_head = "qa_outputs" if isinstance(_get(model, "qa_outputs"), nn.Linear) else None
            return EncoderLayout(family=family, layers=layers, head_size=head_size, qa_head=qa_head)
    return None


def require_layout(model: nn.Module) -> EncoderLayout:
    """Like `find_layout`, but a model we cannot prune structurally is a user error."""
    layout = find_layout(model)
    if layout is None or layout.head_size == 0:
        raise ModelError(
            f"{type(model).__name__}: structured pruning needs a BERT-like or DistilBERT encoder "
            f"(supported families: {', '.join(FAMILIES)}); this architecture is not one of them"
        )
    return layout


def input_names(config) -> tuple[str, ...]:
    """The inputs the model's forward takes: `token_type_ids` only where the model has token types
    (DistilBERT has none; a `type_vocab_size` of 0 means none)."""
    has_types = getattr(config, "type_vocab_size", 0) > 0 and config.model_type != "distilbert"
    return ("input_ids", "attention_mask", "token_type_ids") if has_types else ("input_ids", "attention_mask")
