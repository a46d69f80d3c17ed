"""SWIFT's Adapter (mindformers/tuners/adapter/): ms-swift's formula and initialisation, SWIFT's save layout,
the seed's LoRA + Adapter example through Swift.prepare_model, activation per adapter, clear refusals (merge,
PEFT files), and training through the Trainer's compiled step."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import AdapterConfig, LoRAConfig, Swift, get_peft_model
from tests.conftest import INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1 + np.vectorize(erf)(x / sqrt(2)))


def test_formula_and_swift_initialisation():
    model = Swift.prepare_model(base(), AdapterConfig(dim=64, target_modules=["mlp"], adapter_length=16), seed=0)
    mlp = model.base_model.model.layers[1].mlp
    assert type(mlp).__name__ == "AdapterGatedMLP" and mlp.gate_proj.weight.name == "model.layers.1.mlp.gate_proj.weight"
    adapter = mlp.adapter_default
    w1, b1 = adapter.linear1.weight.asnumpy(), adapter.linear1.bias.asnumpy()
    w2, b2 = adapter.linear2.weight.asnumpy(), adapter.linear2.bias.asnumpy()
    assert np.abs(w1).max() <= np.sqrt(6 / (64 + 16)) and np.abs(b1).max() < 1e-5  # Xavier-uniform, N(0, 1e-6)
    x = np.random.default_rng(0).normal(size=(2, 3, 64)).astype(np.float32)
    with model.disable_adapter():
        y = mlp(Tensor(x)).asnumpy()
    expected = y + _gelu(y @ w1.T + b1) @ w2.T + b2
    np.testing.assert_allclose(mlp(Tensor(x)).asnumpy(), expected, atol=1e-5, rtol=1e-5)
    trainable = [n for n, p in model.base_model.parameters_and_names() if p.requires_grad]
    assert len(trainable) == 3 * 4 and all(".adapter_default.linear" in n for n in trainable)
    plain = base()(IDS).asnumpy()
    assert np.abs(model(IDS).asnumpy() - plain).max() > 1e-3  # SWIFT's initialisation changes the model
    unloaded = model.unload()
    assert type(unloaded.model.layers[1].mlp).__name__ == "GatedMLP"
    np.testing.assert_array_equal(unloaded(IDS).asnumpy(), plain)


def test_the_seed_example_lora_plus_adapter_saves_and_loads_in_swift_layout(tmp_path):
    configs = {"first_tuner": LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               "second_tuner": AdapterConfig(dim=64, target_modules=r"model\.layers\.\d+", hidden_pos=0,
                                             adapter_length=8)}
    model = Swift.prepare_model(base(), configs, seed=1)
    assert model.active_adapters == ["first_tuner", "second_tuner"]
    both = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner"])
    lora_only = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner", "second_tuner"])
    assert np.abs(both - lora_only).max() > 1e-3
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "second_tuner" / "adapter_model.safetensors"))
    assert sorted(saved)[:2] == ["model.layers.0.adapter_second_tuner.linear1.bias",
                                 "model.layers.0.adapter_second_tuner.linear1.weight"] and len(saved) == 12
    config = (tmp_path / "second_tuner" / "adapter_config.json").read_text()
    assert '"swift_type": "ADAPTER"' in config and '"hidden_pos": 0' in config
    again = Swift.from_pretrained(base(), str(tmp_path))
    assert sorted(again.active_adapters) == ["first_tuner", "second_tuner"]
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-5, rtol=0)
    Swift.merge(again, "first_tuner")  # the LoRA merges beside the Adapter, which stays a module
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-4, rtol=0)


def test_refusals_are_named(tmp_path):
    model = Swift.prepare_model(base(), AdapterConfig(dim=64, target_modules=["mlp"]), seed=0)
    with pytest.raises(ValueError, match="ADAPTER tuner, which cannot be merged .*no form in the weights"):
        model.merge_adapter()
    peft = get_peft_model(base(), AdapterConfig(dim=64, target_modules=["mlp"]))
    with pytest.raises(ValueError, match="ADAPTER tuner, which PEFT does not have"):
        peft.save_pretrained(str(tmp_path / "peft"))
    model.save_pretrained(str(tmp_path / "swift"))
    with pytest.raises(ValueError, match="ADAPTER tuner, which PEFT does not have; it stays in SWIFT's layout"):
        Swift.save_to_peft_format(str(tmp_path / "swift"), str(tmp_path / "converted"))
    with pytest.raises(ValueError, match="method_name 'feed_forward_chunk' is not supported"):
        AdapterConfig(dim=64, target_modules=["mlp"], method_name="feed_forward_chunk")
    with pytest.raises(ValueError, match="act_layer must be one of"):
        AdapterConfig(dim=64, target_modules=["mlp"], act_layer="gelu_fast_magic")
    with pytest.raises(ValueError, match="matched no module of LlamaForCausalLM"):
        Swift.prepare_model(base(), AdapterConfig(target_modules=["ffn"]))


def test_trains_through_the_trainer_from_pet_config(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama()
    model.config.pet_config = {"pet_type": "adapter", "target_modules": ["mlp"], "adapter_length": 8}
    model.apply_pet_config()
    assert type(model.model.layers[0].mlp).__name__ == "AdapterGatedMLP" and model.config.hidden_size == 32
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=3, save_steps=6, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before
