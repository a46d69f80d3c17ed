"""The tuner core serves every registered method from what the method declares (TunerMethod): adapter paths,
PEFT file keys, per-family default targets, pet_config by name."""
import pytest

from mindformers import (
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from mindformers.registry import TUNERS
from mindformers.tuners import LoraConfig, get_peft_model
from mindformers.tuners.config import config_from_pet
from mindformers.tuners.tuner_model import is_adapter_path, to_peft_key

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("model, expected", [
    (lambda: LlamaForCausalLM.from_config(LlamaConfig(**SMALL), seed=0), {"q_proj", "v_proj"}),
    (lambda: Qwen3ForCausalLM.from_config(Qwen3Config(**SMALL, head_dim=8), seed=0), {"q_proj", "v_proj"}),
    (lambda: GPT2LMHeadModel.from_config(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4), seed=0), {"c_attn"}),
    (lambda: DeepseekV3ForCausalLM.from_config(DeepseekV3Config(
        **SMALL, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2, moe_intermediate_size=16), seed=0),
     {"q_b_proj", "kv_b_proj"}),
], ids=["llama", "qwen3", "gpt2", "deepseek_v3"])
def test_lora_without_target_modules_takes_the_family_default(model, expected):
    tuned = get_peft_model(model(), LoraConfig(r=2), seed=0)
    adapted = {path.split(".")[-1] for path, cell in tuned.base_model.cells_and_names()
               if type(cell).__name__ == "LoraLinear"}
    assert adapted == expected


def test_paths_and_peft_keys_come_from_the_registered_methods():
    assert set(TUNERS.names()) >= {"LORA", "IA3"}
    for path in ("model.layers.0.self_attn.q_proj.lora_A.default.weight", "model.layers.0.mlp.down_proj.ia3_l.x.weight",
                 "score.modules_to_save.default.weight"):
        assert is_adapter_path(path), path
    assert not is_adapter_path("model.layers.0.self_attn.q_proj.weight")
    assert to_peft_key("model.layers.0.self_attn.q_proj.lora_A.a1.weight", "a1") == \
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert to_peft_key("model.layers.0.q_proj.lora_magnitude_vector.a1.weight", "a1") == \
        "base_model.model.model.layers.0.q_proj.lora_magnitude_vector"
    assert to_peft_key("model.layers.0.mlp.down_proj.ia3_l.a1.weight", "a1") == \
        "base_model.model.model.layers.0.mlp.down_proj.ia3_l"


def test_pet_config_picks_a_method_by_mindformers_or_peft_name():
    assert isinstance(config_from_pet({"pet_type": "lora", "lora_rank": 4}), LoraConfig)
    assert config_from_pet({"pet_type": "LORA", "r": 4}).r == 4
    assert config_from_pet({"pet_type": "ia3"}).peft_type == "IA3"
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['rnak'\] for LORA; valid: .*lora_rank"):
        config_from_pet({"pet_type": "lora", "rnak": 4})
