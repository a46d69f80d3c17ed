"""LoRA on MoE and MLA models, interchangeable with PEFT 0.21 on transformers 5: experts and routers as
``target_parameters``, PEFT's retargeting of MoE module names, file keys and merges.

References: tests/fixtures/peft_moe/make_reference.py (PEFT adapters on the tiny family models).
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import LoraConfig, PeftModel, get_peft_model
from tests.conftest import FIXTURES, ids_tensor

FAMILIES = os.path.join(FIXTURES, "families")
PEFT_MOE = os.path.join(FIXTURES, "peft_moe")
ADAPTERS = {"mixtral_experts": "mixtral", "qwen3_moe_down": "qwen3_moe", "deepseek_v3_all_linear": "deepseek_v3"}
# the settings make_reference.py gave PEFT
SETTINGS = {
    "mixtral_experts": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                            target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
    "qwen3_moe_down": dict(r=2, lora_alpha=4, target_modules="all-linear", target_parameters=["mlp.experts.down_proj"]),
    "deepseek_v3_all_linear": dict(r=4, lora_alpha=16, use_rslora=True, target_modules="all-linear"),
}


def base(family):
    return AutoModel.from_pretrained(os.path.join(FAMILIES, family))


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_peft_adapters_give_peft_logits_unmerged_and_merged(name):
    ref = np.load(os.path.join(PEFT_MOE, name, "reference.npz"))
    model = PeftModel.from_pretrained(base(ADAPTERS[name]), os.path.join(PEFT_MOE, name))
    ids = ids_tensor(ref["input_ids"])
    np.testing.assert_allclose(model(ids).asnumpy(), ref["logits"], atol=1e-4, rtol=0)
    merged = model.merge_and_unload()
    np.testing.assert_allclose(merged(ids).asnumpy(), ref["merged_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_same_settings_adapt_what_peft_adapts(name, tmp_path):
    """The same LoraConfig gives PEFT's adapter_config targets and PEFT's tensor names and shapes, so the
    files are interchangeable (PEFT retargets MoE names: dense gate/up/down layers are left out, experts and
    routers become target_parameters, the fused gate_up_proj gets rank x2)."""
    model = get_peft_model(base(ADAPTERS[name]), LoraConfig(**SETTINGS[name]), seed=0)
    model.save_pretrained(str(tmp_path))
    ours = json.loads((tmp_path / "adapter_config.json").read_text())
    theirs = json.load(open(os.path.join(PEFT_MOE, name, "adapter_config.json")))
    for key in ("target_modules", "target_parameters"):
        assert sorted(ours[key] or []) == sorted(theirs[key] or []), key
    for key in ("rank_pattern", "alpha_pattern", "r", "lora_alpha", "use_rslora"):
        assert ours[key] == theirs[key], key
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    reference = load_file(os.path.join(PEFT_MOE, name, "adapter_model.safetensors"))
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
    # init_lora_weights=True: B is zero, the model starts unchanged
    ids = ids_tensor(np.load(os.path.join(FAMILIES, ADAPTERS[name], "reference.npz"))["input_ids"])
    np.testing.assert_allclose(model(ids).asnumpy(), base(ADAPTERS[name])(ids).asnumpy(), atol=1e-5, rtol=0)


def test_expert_adapter_round_trip_and_training_gradients(tmp_path):
    """Random expert and router factors saved by us reload to the same logits; gradients reach them."""
    import mindspore as ms

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False,
                        target_parameters=["gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    model = get_peft_model(base("mixtral"), config, seed=3)
    ids = ids_tensor(np.load(os.path.join(FAMILIES, "mixtral", "reference.npz"))["input_ids"])
    logits = model(ids).asnumpy()
    assert np.abs(logits - base("mixtral")(ids).asnumpy()).max() > 1e-2
    model.save_pretrained(str(tmp_path))
    keys = sorted(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight" in keys  # gate_up_proj: inner
    assert "base_model.model.model.layers.0.mlp.experts.lora_B.weight" in keys  # down_proj: outer
    assert "base_model.model.model.layers.0.mlp.gate.lora_A.weight" in keys
    reloaded = PeftModel.from_pretrained(base("mixtral"), str(tmp_path))
    np.testing.assert_allclose(reloaded(ids).asnumpy(), logits, atol=1e-6, rtol=0)

    trainable = [p for p in model.base_model.trainable_params()]
    assert trainable and all(".lora_" in p.name for p in trainable)
    grads = ms.grad(lambda i: model(i, labels=i)[0], grad_position=None, weights=trainable)(ids)
    by_name = {p.name: float(np.abs(g.asnumpy()).max()) for p, g in zip(trainable, grads)}
    for part in ("experts.base_layer.lora_A", "experts.lora_B", "gate.lora_A", "q_proj.lora_B"):
        assert max(v for k, v in by_name.items() if part in k) > 0, part


def test_bad_moe_targets_are_explained():
    with pytest.raises(ValueError, match="target_modules name 'gate_proj' but not 'up_proj'; both are fused"):
        get_peft_model(base("qwen3_moe"), LoraConfig(target_modules=["q_proj", "gate_proj"]))
    with pytest.raises(ValueError, match="target_parameters .* match no Parameter of Qwen3ForCausalLM"):
        get_peft_model(base("qwen3"), LoraConfig(target_modules=["q_proj"], target_parameters=["mlp.experts.down_proj"]))
    with pytest.raises(ValueError, match="target_parameters need lora_dropout 0"):
        LoraConfig(target_parameters=["mlp.experts.down_proj"], lora_dropout=0.1)
