"""Fixtures of the serving tests: a tiny Llama with SmolLM2's tokenizer saved as a model directory, and
random LoRA adapters saved by the tuner API (PEFT and SWIFT files) with different ranks and targets."""
import os

import pytest

from mindformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from mindformers.tuners import LoRAConfig, LoraConfig, Swift, get_peft_model

TINY = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
            max_position_embeddings=256)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (rank, targets, file format): 8 adapters, ranks 2..16, some on a few layers, one in SWIFT's layout
ADAPTERS = {
    "qv-4": (4, ["q_proj", "v_proj"], "peft"),
    "all-8": (8, ALL_LINEAR, "peft"),
    "down-2": (2, ["down_proj"], "peft"),
    "attn-16": (16, ["q_proj", "k_proj", "v_proj", "o_proj"], "peft"),
    "mlp-6": (6, ["gate_proj", "up_proj", "down_proj"], "peft"),
    "all-3": (3, ALL_LINEAR, "peft"),
    "o-8": (8, ["o_proj"], "peft"),
    "swift-4": (4, ["q_proj", "k_proj", "v_proj"], "swift"),
}


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama (hidden 64) with SmolLM2's vocabulary and random weights."""
    return LlamaForCausalLM.from_config(LlamaConfig(**TINY), seed=seed)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained("smollm2_135m_instruct")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    out = str(tmp_path_factory.mktemp("tiny_model"))
    tiny_model().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory):
    """Adapter name -> directory of every adapter in ``ADAPTERS`` (A and B random, so each changes outputs)."""
    root = str(tmp_path_factory.mktemp("adapters"))
    dirs = {}
    for seed, (name, (rank, targets, kind)) in enumerate(ADAPTERS.items(), start=1):
        config_class = LoraConfig if kind == "peft" else LoRAConfig  # LoRAConfig: SWIFT's files
        config = config_class(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        if kind == "peft":
            get_peft_model(tiny_model(), config, seed=seed).save_pretrained(os.path.join(root, name))
            dirs[name] = os.path.join(root, name)
        else:
            Swift.prepare_model(tiny_model(), {name: config}, seed=seed).save_pretrained(os.path.join(root, "swift"))
            dirs[name] = os.path.join(root, "swift", name)
    return dirs
