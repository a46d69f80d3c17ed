"""Fixtures of the Trainer tests: SmolLM2's real tokenizer, chatterbot chats, and tiny random Llama models
with SmolLM2's vocabulary (so real text trains a model that compiles in seconds)."""
import importlib.util
import json
import os

import pytest

from mindformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from mindformers.utils import ASSETS_DIR

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 32) with SmolLM2's vocabulary and random weights."""
    return LlamaForCausalLM.from_config(LlamaConfig(**{**TINY, **overrides}), seed=seed)


def tiny_classifier(num_labels: int = 2, seed: int = 0) -> LlamaForSequenceClassification:
    return LlamaForSequenceClassification.from_config(LlamaConfig(**TINY, num_labels=num_labels), seed=seed)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tok():
    from mindformers import AutoTokenizer

    return AutoTokenizer.from_pretrained("smollm2_135m_instruct")


@pytest.fixture(scope="session")
def chats(tmp_path_factory):
    """The English chatterbot chats as (train.jsonl, eval.jsonl), made by scripts/prepare_chatterbot.py."""
    if not os.path.isdir(os.path.join(ASSETS_DIR, "chatterbot", "english")):
        pytest.skip(f"{ASSETS_DIR}/chatterbot is missing: run `python scripts/get_assets.py`")
    spec = importlib.util.spec_from_file_location("prepare_chatterbot", os.path.join(REPO, "scripts", "prepare_chatterbot.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("chatterbot")
    module.main(["--out", str(out), "--languages", "english", "--seed", "0"])
    return str(out / "train.jsonl"), str(out / "eval.jsonl")


@pytest.fixture(scope="session")
def small_chats(chats, tmp_path_factory):
    """The first 24 training chats and 8 evaluation chats."""
    out = tmp_path_factory.mktemp("small_chats")
    return (write_jsonl(out / "train.jsonl", read_jsonl(chats[0])[:24]),
            write_jsonl(out / "eval.jsonl", read_jsonl(chats[1])[:8]))
