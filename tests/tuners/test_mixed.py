"""PEFT's PeftMixedModel: a LoRA and a LoHa adapter active together give PeftMixedModel's logits (the interop
LoRA adapter1 on q/v and a LoHa on k/down_proj made by tests/fixtures/peft_methods/make_reference.py); methods
PEFT does not mix, and two methods on one layer, are refused by name."""
import os

import numpy as np
import pytest

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


def test_what_cannot_mix_is_refused():
    mixed = get_peft_model(base(), LoraConfig(target_modules=["q_proj"]), mixed=True)
    assert isinstance(mixed, PeftMixedModel)
    with pytest.raises(ValueError, match="peft_type 'IA3' is not compatible with PeftMixedModel"):
        mixed.add_adapter("ia3", IA3Config(target_modules=["k_proj"]))
    with pytest.raises(ValueError, match=r"LOHA cannot adapt model.layers.0.self_attn.q_proj \(LoraLinear\)"):
        mixed.add_adapter("loha", LoHaConfig(target_modules=["q_proj", "k_proj"]))
