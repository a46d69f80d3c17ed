"""LoRA adapters written by Hugging Face PEFT 0.21 give PEFT's outputs here (tests/fixtures/interop)."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import AutoPeftModelForCausalLM, PeftModel, Swift, get_peft_model_state_dict
from tests.conftest import INTEROP, ids_tensor

ATOL = 1e-4
LLAMA_IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
GPT2_IDS = np.load(os.path.join(INTEROP, "gpt2", "input_ids.npy"))


def llama(adapter):
    base = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    return PeftModel.from_pretrained(base, os.path.join(INTEROP, "llama", *adapter.split("/")))


@pytest.mark.parametrize("adapter, logits", [
    ("adapters/adapter1", "logits_adapter1.npy"),            # q/v r=4, scaling 2
    ("adapters/adapter2", "logits_adapter2.npy"),            # all-linear r=8, 21 expanded paths
    ("adapters_weighted/weighted_cat", "logits_weighted_cat_0.7a1_0.3a2.npy"),  # mixed target names, r=12
])
def test_llama_adapters_equal_peft(adapter, logits):
    model = llama(adapter)
    np.testing.assert_allclose(model(ids_tensor(LLAMA_IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", logits)),
                               atol=ATOL, rtol=0)


def test_gpt2_fan_in_fan_out_adapter_and_merge_equal_peft():
    base = AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base"))
    model = PeftModel.from_pretrained(base, os.path.join(INTEROP, "gpt2", "adapters", "lora_c_attn"))
    np.testing.assert_allclose(model(ids_tensor(GPT2_IDS)).asnumpy(),
                               np.load(os.path.join(INTEROP, "gpt2", "logits_lora_c_attn.npy")), atol=ATOL, rtol=0)
    merged = model.merge_and_unload()
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    np.testing.assert_allclose(merged(ids_tensor(GPT2_IDS)).asnumpy(),
                               np.load(os.path.join(INTEROP, "gpt2", "logits_merged_lora_c_attn.npy")), atol=ATOL, rtol=0)


def test_merged_weights_and_logits_equal_peft():
    model = llama("adapters/adapter1")
    unmerged = model(ids_tensor(LLAMA_IDS)).asnumpy()
    model.merge_adapter()
    merged_logits = model(ids_tensor(LLAMA_IDS)).asnumpy()
    np.testing.assert_allclose(merged_logits, unmerged, atol=ATOL, rtol=0)
    np.testing.assert_allclose(merged_logits, np.load(os.path.join(INTEROP, "llama", "logits_merged_adapter1.npy")),
                               atol=ATOL, rtol=0)
    weights = dict(model.base_model.parameters_and_names())
    for proj in ("q_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        np.testing.assert_allclose(weights[name].asnumpy(),
                                   np.load(os.path.join(INTEROP, "llama", f"merged_adapter1.{name}.npy")), atol=1e-5, rtol=0)
    model.unmerge_adapter()
    np.testing.assert_allclose(model(ids_tensor(LLAMA_IDS)).asnumpy(), unmerged, atol=1e-5, rtol=0)
    plain = model.merge_and_unload()
    assert type(plain.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    assert sorted(plain.state_dict()) == sorted(load_file(os.path.join(INTEROP, "llama", "base", "model.safetensors")))


def test_greedy_ids_with_adapter_equal_reference():
    model = llama("adapters/adapter1")
    model.base_model.generation_mode = "pynative"
    out = model.generate(LLAMA_IDS, max_new_tokens=12, eos_token_id=[])
    np.testing.assert_array_equal(out, np.load(os.path.join(INTEROP, "llama", "generate_adapter1.npy")))
    model.base_model.generation_mode = "jit"  # the compiled step bakes in the adapter; switching recompiles
    np.testing.assert_array_equal(model.generate(LLAMA_IDS, max_new_tokens=12, eos_token_id=[]),
                                  np.load(os.path.join(INTEROP, "llama", "generate_adapter1.npy")))
    with model.disable_adapter():
        np.testing.assert_array_equal(model.generate(LLAMA_IDS, max_new_tokens=12, eos_token_id=[]),
                                      np.load(os.path.join(INTEROP, "llama", "generate_base.npy")))


def test_saved_keys_round_trip_peft_names():
    model = llama("adapters/adapter2")
    ours = get_peft_model_state_dict(model)
    theirs = load_file(os.path.join(INTEROP, "llama", "adapters", "adapter2", "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs) and len(ours) == 42
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_auto_peft_model_finds_the_relative_base():
    model = AutoPeftModelForCausalLM.from_pretrained(os.path.join(INTEROP, "llama", "adapters", "adapter1"))
    np.testing.assert_allclose(model(ids_tensor(LLAMA_IDS)).asnumpy(),
                               np.load(os.path.join(INTEROP, "llama", "logits_adapter1.npy")), atol=ATOL, rtol=0)


def test_swift_from_pretrained_reads_peft_directories():
    base = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    model = Swift.from_pretrained(base, os.path.join(INTEROP, "llama", "adapters", "adapter1"))
    np.testing.assert_allclose(model(ids_tensor(LLAMA_IDS)).asnumpy(),
                               np.load(os.path.join(INTEROP, "llama", "logits_adapter1.npy")), atol=ATOL, rtol=0)
