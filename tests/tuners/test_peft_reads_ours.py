"""Adapters we save load in Hugging Face PEFT with the same outputs.

tests/fixtures/peft_reads_ours/make_reference.py saved them with this package and recorded PEFT 0.21's
logits after loading them (it also checked PEFT's adapter state equals each file exactly). Here: our
logits on the same folders equal PEFT's, and re-saving still writes the same tensors.
"""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import PeftModel
from tests.conftest import FIXTURES, INTEROP, ids_tensor

OURS = os.path.join(FIXTURES, "peft_reads_ours")
CASES = [("qv_rslora_patterns", "llama"), ("dora_mlp", "llama"), ("embedding", "llama"), ("gpt2_bias_all", "gpt2"),
         ("swift_converted", "llama"), ("swift_converted/first", "llama"),
         ("mixtral_experts", "mixtral"), ("qwen3_moe_all_linear", "qwen3_moe"),  # MoE: experts and routers
         ("ia3_llama", "llama"), ("ia3_gpt2", "gpt2"),
         ("prefix_projection", "llama"), ("adaption_prompt", "llama")]  # prompts in the attention


def base_and_ids(family):
    if family in ("llama", "gpt2"):
        return os.path.join(INTEROP, family, "base"), np.load(os.path.join(INTEROP, family, "input_ids.npy"))
    directory = os.path.join(FIXTURES, "families", family)
    return directory, np.load(os.path.join(directory, "reference.npz"))["input_ids"]


@pytest.mark.parametrize("case, family", CASES)
def test_peft_gives_our_logits_on_our_files(case, family, tmp_path):
    directory = os.path.join(OURS, *case.split("/"))
    base, ids = base_and_ids(family)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base), directory)
    ids = ids_tensor(ids)
    np.testing.assert_allclose(model(ids).asnumpy(), np.load(os.path.join(directory, "peft_logits.npz"))["logits"],
                               atol=1e-4, rtol=0)
    model.save_pretrained(str(tmp_path))
    ours, fixture = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(directory, "adapter_model.safetensors"))
    assert sorted(ours) == sorted(fixture)
    for key in fixture:
        np.testing.assert_array_equal(ours[key], fixture[key])
