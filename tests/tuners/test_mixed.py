"""PEFT's PeftMixedModel: a LoRA and a LoHa adapter active together give PeftMixedModel's logits (the interop
LoRA adapter1 on q/v and a LoHa on k/down_proj made by tests/fixtures/peft_methods/make_reference.py); LoRA and
IA3 together (which PEFT refuses) equal both merged into the weights; prompt methods and two methods on one layer
are refused by name."""
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindformers import AutoModel
from mindformers.tuners import IA3Config, LoHaConfig, LoraConfig, PeftMixedModel, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
LOHA = os.path.join(FIXTURES, "peft_methods", "mixed_loha")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_lora_and_loha_active_together_equal_peft_mixed():
    model = PeftMixedModel.from_pretrained(base(), os.path.join(INTEROP, "llama", "adapters", "adapter1"), "lora")
    model.load_adapter(LOHA, "loha")
    model.set_adapter(["lora", "loha"])
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(LOHA, "peft_mixed_logits.npz"))["logits"],
                               atol=1e-4, rtol=0)
    model.set_adapter(["lora"])
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_adapter1.npy")),
                               atol=1e-4, rtol=0)


def test_lora_and_ia3_active_together_equal_both_merged():
    model = PeftMixedModel.from_pretrained(base(), os.path.join(INTEROP, "llama", "adapters", "adapter1"), "lora")
    model.add_adapter("ia3", IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]))
    rng = np.random.default_rng(0)
    for name, param in model.base_model.parameters_and_names():
        if ".ia3_l." in name:  # away from the identity it starts at
            param.set_data(Tensor((1 + rng.normal(0, 0.3, param.shape)).astype(np.float32)))
    model.set_adapter(["lora", "ia3"])
    both = model(IDS).asnumpy()
    model.set_adapter(["lora"])
    assert np.abs(model(IDS).asnumpy() - both).max() > 1e-3
    model.set_adapter(["lora", "ia3"])
    merged = model.merge_and_unload(["lora", "ia3"])
    np.testing.assert_allclose(merged(IDS).asnumpy(), both, atol=1e-4, rtol=0)


def test_what_cannot_mix_is_refused():
    from mindformers.tuners import PromptTuningConfig

    mixed = get_peft_model(base(), LoraConfig(target_modules=["q_proj"]), mixed=True)
    assert isinstance(mixed, PeftMixedModel)
    with pytest.raises(ValueError, match="peft_type 'PROMPT_TUNING' is not compatible with PeftMixedModel"):
        mixed.add_adapter("prompt", PromptTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match=r"LOHA cannot adapt model.layers.0.self_attn.q_proj \(LoraLinear\)"):
        mixed.add_adapter("loha", LoHaConfig(target_modules=["q_proj", "k_proj"]))
