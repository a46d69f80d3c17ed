"""Directories written by our save_pretrained load in Hugging Face transformers with the same outputs.

tests/fixtures/saved_by_us/make_reference.py saved small random models with this package and recorded
transformers' logits after loading them (it also asserts transformers reported no missing or unexpected
tensors). Here: our logits on those directories equal transformers', and today's save_pretrained still
writes the same config.json and tensors.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from tests.conftest import FIXTURES, ids_tensor

SAVED = os.path.join(FIXTURES, "saved_by_us")
NAMES = ["llama_gqa", "llama3_tied", "qwen2", "gpt2", "gpt2_seqcls", "qwen3", "mistral", "mixtral", "qwen3_moe", "deepseek_v3"]


@pytest.mark.parametrize("name", NAMES)
def test_transformers_gives_our_logits_on_our_directory(name, tmp_path):
    directory = os.path.join(SAVED, name)
    ref = np.load(os.path.join(directory, "hf_logits.npz"))
    model = AutoModel.from_pretrained(directory)
    np.testing.assert_allclose(model(ids_tensor(ref["input_ids"])).asnumpy(), ref["logits"], atol=1e-4, rtol=0)
    model.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text()) == json.load(open(os.path.join(directory, "config.json")))
    ours, fixture = load_file(str(tmp_path / "model.safetensors")), load_file(os.path.join(directory, "model.safetensors"))
    assert sorted(ours) == sorted(fixture)
