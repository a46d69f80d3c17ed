"""PEFT-style API: get_peft_model, adapters in and out, status reports, state-dict helpers, LoRA+ groups,
the pet_config switch, config files from other PEFT versions, and bad input."""
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest

from mindformers import AutoConfig, AutoModel
from mindformers.tuners import (
    LoraConfig,
    PeftModel,
    cast_mixed_precision_params,
    create_optimizer_param_groups,
    get_layer_status,
    get_model_status,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from tests.conftest import FIXTURES, INTEROP, ids_tensor

LLAMA = os.path.join(INTEROP, "llama", "base")
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
ADAPTER1 = os.path.join(INTEROP, "llama", "adapters", "adapter1")


def base():
    return AutoModel.from_pretrained(LLAMA)


def test_get_peft_model_counts_and_trains_only_adapters():
    model = get_peft_model(base(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), seed=0)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 3 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4) and total == 160_192 + trainable
    names = [n for n, p in model.base_model.parameters_and_names() if p.requires_grad]
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")),
                               atol=1e-4, rtol=0)  # B starts at zero: the model is unchanged


def test_save_load_and_adapter_management(tmp_path):
    model = PeftModel.from_pretrained(base(), ADAPTER1, is_trainable=True)
    assert model.get_nb_trainable_parameters()[0] > 0
    model.load_adapter(os.path.join(INTEROP, "llama", "adapters", "adapter2"), "adapter2")
    assert model.active_adapters == ["default"]
    first = model(IDS).asnumpy()
    model.set_adapter("adapter2")
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_adapter2.npy")), atol=1e-4)
    with model.disable_adapter():
        np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")), atol=1e-4)
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["adapter2", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "LORA"
    reloaded = PeftModel.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(reloaded(IDS).asnumpy(), first, atol=1e-6, rtol=0)
    model.delete_adapter("adapter2")
    assert list(model.peft_config) == ["default"] and not any("adapter2" in n for n, _ in model.parameters_and_names())
    assert model.get_base_model() is model.base_model


def test_state_dict_helpers_and_inject_in_place():
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), base())
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "LoraLinear"
    set_peft_model_state_dict(model, get_peft_model_state_dict(PeftModel.from_pretrained(base(), ADAPTER1)))
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_adapter1.npy")), atol=1e-4)


def test_layer_and_model_status():
    model = PeftModel.from_pretrained(base(), ADAPTER1)
    layers = get_layer_status(model)
    assert len(layers) == 6 and layers[0].name == "model.layers.0.self_attn.q_proj"
    assert layers[0].active_adapters == ["default"] and layers[0].requires_grad == {"default": False}
    model.merge_adapter()
    status = get_model_status(model)
    assert (status.num_adapter_layers, status.active_adapters, status.merged_adapters) == (6, ["default"], ["default"])
    assert status.peft_types == {"default": "LORA"} and status.trainable_params == 0


def test_cast_mixed_precision_keeps_adapters_in_float32():
    model = get_peft_model(base(), LoraConfig(r=4, target_modules=["q_proj"]))
    cast_mixed_precision_params(model, ms.float16)
    params = dict(model.base_model.parameters_and_names())
    assert params["model.layers.0.self_attn.q_proj.weight"].dtype == ms.float16
    assert params["model.layers.0.self_attn.q_proj.lora_A.default.weight"].dtype == ms.float32


def test_lora_plus_groups_follow_peft():
    reference = json.load(open(os.path.join(FIXTURES, "peft", "lora_plus", "loraplus_groups.json")))
    model = get_peft_model(base(), LoraConfig(r=4, target_modules=["embed_tokens", "q_proj", "v_proj"]))
    groups = {g["name"]: g for g in create_optimizer_param_groups(model, 1e-4, 16, loraplus_lr_embedding=1e-6)}
    for ref in reference["cases"]["llama embed_tokens+q_proj+v_proj"]["param_groups"]:
        if not ref["params"]:
            assert ref["peft_group"] not in groups
            continue
        ours = groups[ref["peft_group"]]
        assert ours["lr"] == pytest.approx(ref["lr"])
        expected = sorted(p[len("base_model.model."):] + ("" if p.endswith(".weight") else ".weight") for p in ref["params"])
        assert sorted(p.name for p in ours["params"]) == expected


def test_pet_config_in_yaml_builds_lora_model(tmp_path):
    yaml_path = tmp_path / "finetune.yaml"
    yaml_path.write_text(
        "model:\n  model_config:\n    model_type: llama\n    vocab_size: 384\n    hidden_size: 64\n"
        "    intermediate_size: 128\n    num_layers: 3\n    num_heads: 4\n    n_kv_heads: 2\n"
        f"    checkpoint_name_or_path: {LLAMA}\n"
        "    pet_config: {pet_type: lora, lora_rank: 8, lora_alpha: 16, lora_dropout: 0.05, target_modules: '.*q_proj|.*v_proj'}\n")
    model = AutoModel.from_pretrained(str(yaml_path))
    q = model.model.layers[2].self_attn.q_proj
    assert type(q).__name__ == "LoraLinear" and q.r["default"] == 8 and q.scaling["default"] == 2.0
    assert type(model.model.layers[2].self_attn.k_proj).__name__ == "Linear"
    trainable = [n for n, p in model.parameters_and_names() if p.requires_grad]
    assert len(trainable) == 12 and all(".lora_" in n for n in trainable)
    with pytest.raises(ValueError, match=r"pet_config.pet_type 'prefix' is not a registered tuner method; known: \[.*'lora'"):
        AutoModel.from_pretrained(LLAMA, pet_config={"pet_type": "prefix"})


def test_config_from_newer_peft_is_tolerated_and_unsupported_features_refused(tmp_path, caplog):
    shutil.copytree(ADAPTER1, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "future_option": 3}))
    PeftModel.from_pretrained(base(), str(tmp_path / "a"))
    assert "ignoring fields this version does not know: ['future_option']" in caplog.text
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**config, "lora_bias": True}))
    with pytest.raises(ValueError, match=r"not supported by mindformers: \{'lora_bias': True\}"):
        PeftModel.from_pretrained(base(), str(tmp_path / "a"))


def test_bad_input_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"target_modules \['qproj'\] matched no layer of LlamaForCausalLM; .*q_proj"):
        get_peft_model(base(), LoraConfig(target_modules=["qproj"]))
    with pytest.raises(ValueError, match="LoRA rank r must be a positive integer, found 0"):
        LoraConfig(r=0)
    model = PeftModel.from_pretrained(base(), ADAPTER1)
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'; adapters: \['default'\]"):
        model.set_adapter("nope")
    other = AutoModel.from_config(AutoConfig.from_pretrained(LLAMA, hidden_size=32, num_heads=2, n_kv_heads=1))
    with pytest.raises(ValueError, match=r"does not fit adapter 'default' of LlamaForCausalLM: wrong shape 12: .*q_proj.lora_A.weight: file \(4, 64\) vs model \(4, 32\)"):
        PeftModel.from_pretrained(other, ADAPTER1)
    with pytest.raises(TypeError, match="unsupported tuner config"):
        model.add_adapter("x", object())
    with pytest.raises(FileNotFoundError, match="no adapter_config.json in"):
        PeftModel.from_pretrained(base(), str(tmp_path))
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("default", LoraConfig(target_modules=["q_proj"]))


def test_merging_a_tuner_that_cannot_merge_is_refused():
    """A method registered as not mergeable (prompt-style tuners are) cannot be merged into the weights."""
    import dataclasses
    from typing import ClassVar

    from mindformers.registry import TUNERS
    from mindformers.tuners.config import TunerConfig
    from mindformers.tuners.tuner_layer import TunerMethod

    @dataclasses.dataclass
    class NoWeightsConfig(TunerConfig):
        peft_type: ClassVar[str] = "TEST_NO_MERGE"

    TUNERS.register(TunerMethod("TEST_NO_MERGE", NoWeightsConfig, lambda *args: None, mergeable=False),
                    name="TEST_NO_MERGE")
    try:
        model = PeftModel(base(), {"prompt": NoWeightsConfig()})
        with pytest.raises(ValueError, match="adapter 'prompt' is a TEST_NO_MERGE tuner, which cannot be merged"):
            model.merge_adapter(["prompt"])
    finally:
        TUNERS._items.pop("TEST_NO_MERGE")  # pylint: disable=protected-access
