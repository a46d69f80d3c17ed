"""SWIFT's Side-Tuning (mindformers/tuners/side/): ms-swift's SideModule against numpy (its alpha starts at 0, so
the two halves weigh 0.5), SWIFT's save layout and reload, LoRA + Side together through Swift.prepare_model,
refusals named (merge, PEFT files, image side networks, bad targets, unknown fields), and a fine-tune
through the Trainer's compiled step."""
import json
import os
from math import erf, sqrt

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.models.common.attention import attention_bias
from mindformers.tuners import LoRAConfig, SideConfig, Swift, get_peft_model
from mindformers.utils import write_parameter
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer import conftest as trainer_fixtures

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def swift_side(side, x, x_main):
    """ms-swift's SideModule.forward with its Mlp side net, in numpy."""
    w1, b1 = side.side_net.fc1.weight.asnumpy(), side.side_net.fc1.bias.asnumpy()
    w2, b2 = side.side_net.fc2.weight.asnumpy(), side.side_net.fc2.bias.asnumpy()
    h = x @ w1.T + b1
    h = 0.5 * h * (1 + np.vectorize(erf)(h / sqrt(2)))  # torch.nn.GELU()
    a = 1 / (1 + np.exp(-side.alpha.asnumpy()))
    return a * x_main + (1 - a) * (h @ w2.T + b2)


def test_swift_formula_and_initialisation_on_a_module_and_a_decoder_layer():
    model = Swift.prepare_model(base(), SideConfig(target_modules=r"model\.layers\.(1|2\.mlp)"), seed=0)
    mlp, layer = model.base_model.model.layers[2].mlp, model.base_model.model.layers[1]
    assert type(mlp).__name__ == "SideGatedMLP" and type(layer).__name__ == "SideDecoderLayer"
    side = mlp.side_default
    assert side.alpha.shape == () and float(side.alpha.asnumpy()) == 0.0  # SWIFT: nn.Parameter(torch.tensor(0.0))
    for linear in (side.side_net.fc1, side.side_net.fc2):  # torch.nn.Linear's init: U(+-1/sqrt(fan_in))
        assert linear.weight.shape == (64, 64) and np.abs(linear.weight.asnumpy()).max() <= 1 / 8
        assert 0.1 < np.abs(linear.bias.asnumpy()).max() <= 1 / 8
    x = np.random.default_rng(0).normal(size=(2, 5, 64)).astype(np.float32)
    with model.disable_adapter():
        y = mlp(Tensor(x)).asnumpy()
    np.testing.assert_allclose(mlp(Tensor(x)).asnumpy(), 0.5 * y + swift_side(side, x, 0 * y), atol=1e-5)  # sigmoid(0)
    write_parameter(side.alpha, np.array(1.3, np.float32))  # a trained alpha
    np.testing.assert_allclose(mlp(Tensor(x)).asnumpy(), swift_side(side, x, y), atol=1e-5)
    # a decoder layer returns (hidden, router logits): element 0 is blended, the side net reads the layer input
    cos, sin = model.base_model.model.rotary(Tensor(np.arange(5, dtype=np.int32).reshape(1, 5).repeat(2, 0)))
    args = (Tensor(x), cos, sin, attention_bias(None, None, 2, 5, 5))
    with model.disable_adapter():
        plain, logits = layer(*args)
    out, none = layer(*args)
    assert none is None and logits is None
    np.testing.assert_allclose(out.asnumpy(), swift_side(layer.side_default, x, plain.asnumpy()), atol=1e-5)
    trainable = sorted(n for n, p in model.base_model.parameters_and_names() if p.requires_grad)
    assert trainable[:5] == ["model.layers.1.side_default.alpha", "model.layers.1.side_default.side_net.fc1.bias",
                             "model.layers.1.side_default.side_net.fc1.weight",
                             "model.layers.1.side_default.side_net.fc2.bias",
                             "model.layers.1.side_default.side_net.fc2.weight"] and len(trainable) == 10
    plain_logits = base()(IDS).asnumpy()
    assert np.abs(model(IDS).asnumpy() - plain_logits).max() > 0.1  # a half-weight random side net from the start
    # a second side net on the same layer (by argument name) blends after the first, as SWIFT's nested forwards do
    model.add_adapter("second", SideConfig(target_modules=r"model\.layers\.1", source_hidden_pos="x"), seed=5)
    assert layer.adapter_names == ["default", "second"] and layer.side_second.source_pos == 0
    np.testing.assert_allclose(layer(*args)[0].asnumpy(),
                               swift_side(layer.side_second, x, swift_side(layer.side_default, x, plain.asnumpy())),
                               atol=1e-5)
    unloaded = model.unload()
    assert type(unloaded.model.layers[1]).__name__ == "DecoderLayer"
    np.testing.assert_array_equal(unloaded(IDS).asnumpy(), plain_logits)



def test_ms_swift_saved_side_gives_swift_logits_and_saves_alike(tmp_path):
    """ms-swift's own Side (tests/fixtures/swift_methods, made by its script) on a decoder layer and an MLP."""
    swift_dir = os.path.join(FIXTURES, "swift_methods", "side")
    model = Swift.from_pretrained(base(), swift_dir)
    assert type(model.base_model.model.layers[2].mlp).__name__ == "SideGatedMLP"
    reference = np.load(os.path.join(swift_dir, "swift_logits.npy"))
    np.testing.assert_allclose(model(IDS).asnumpy(), reference, atol=1e-4, rtol=0)
    assert np.abs(base()(IDS).asnumpy() - reference).max() > 0.1
    model.save_pretrained(str(tmp_path))
    ours = load_file(str(tmp_path / "default" / "adapter_model.safetensors"))
    theirs = load_file(os.path.join(swift_dir, "default", "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(theirs) == 10
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])

def test_lora_plus_side_in_swift_layout_reload_and_refusals(tmp_path):
    configs = {"first_tuner": LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               "second_tuner": SideConfig(dim=64, target_modules=r"model\.layers\.2", source_hidden_pos="x")}
    model = Swift.prepare_model(base(), configs, seed=1)
    assert model.active_adapters == ["first_tuner", "second_tuner"]
    write_parameter(model.base_model.model.layers[2].side_second_tuner.alpha, np.array(0.8, np.float32))
    both = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner"])
    lora_only = model(IDS).asnumpy()
    model.set_active_adapters(["first_tuner", "second_tuner"])
    assert np.abs(both - lora_only).max() > 0.1
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "second_tuner" / "adapter_model.safetensors"))
    assert sorted(saved) == [f"model.layers.2.side_second_tuner.{k}" for k in (
        "alpha", "side_net.fc1.bias", "side_net.fc1.weight", "side_net.fc2.bias", "side_net.fc2.weight")]
    assert saved["model.layers.2.side_second_tuner.alpha"].shape == () and saved[
        "model.layers.2.side_second_tuner.alpha"] == np.float32(0.8)
    config = (tmp_path / "second_tuner" / "adapter_config.json").read_text()
    assert '"swift_type": "SIDE"' in config and '"side_module_name": "mlp"' in config
    with open(os.path.join(FIXTURES, "swift_methods", "side", "default", "adapter_config.json"), encoding="utf-8") as f:
        swift_fields = set(json.load(f))
    assert swift_fields <= set(json.loads(config))  # every field ms-swift writes (model_key_mapping null included)
    with pytest.raises(ValueError, match="not supported by mindformers: {'model_key_mapping'"):
        SideConfig.from_dict({**json.loads(config), "model_key_mapping": {"mlp": "model.layers.{}.mlp"}})
    again = Swift.from_pretrained(base(), str(tmp_path))
    assert sorted(again.active_adapters) == ["first_tuner", "second_tuner"]
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-5, rtol=0)
    prompt = IDS.shape[1]  # cached decoding blends each step's layer input: the uncached forward's greedy ids
    ids = np.asarray(again.generate(IDS[:1], max_new_tokens=4, do_sample=False, eos_token_id=[]))
    np.testing.assert_array_equal(again(ids_tensor(ids)).asnumpy()[0, prompt - 1:-1].argmax(-1), ids[0, prompt:])
    with pytest.raises(ValueError, match="SIDE tuner, which cannot be merged .*no form in the weights"):
        again.merge_adapter(["second_tuner"])
    Swift.merge(again, "first_tuner")  # the LoRA merges beside the side network, which stays a module
    np.testing.assert_allclose(again(IDS).asnumpy(), both, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="'second_tuner' is a SIDE tuner, which PEFT does not have; it stays in SWIFT"):
        Swift.save_to_peft_format(str(tmp_path), str(tmp_path / "converted"))
    with pytest.raises(ValueError, match="SIDE tuner, which PEFT does not have"):
        get_peft_model(base(), SideConfig(target_modules=r"model\.norm")).save_pretrained(str(tmp_path / "peft"))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['dimension'\] for SIDE; valid: .*dim"):
        SideConfig.from_pet_config({"pet_type": "side", "dimension": 64, "target_modules": "model.norm"})
    with pytest.raises(ValueError, match="matched no module of LlamaForCausalLM .*model.embed_tokens"):
        Swift.prepare_model(base(), SideConfig(target_modules=r".*\.ffn"))
    with pytest.raises(ValueError, match="side_module_name must be one of \\('mlp',\\).*found 'resnet'"):
        SideConfig(target_modules="model.norm", side_module_name="resnet")
    with pytest.raises(ValueError, match="'fcn4' is one of SWIFT's image side networks"):
        SideConfig(target_modules="model.norm", side_module_name="fcn4")
    with pytest.raises(ValueError, match=r"cannot target model.layers \(CellList\): a CellList has no forward"):
        Swift.prepare_model(base(), SideConfig(target_modules=r"model\.layers"))
    with pytest.raises(ValueError, match="cannot target model .*run through its layers"):
        Swift.prepare_model(base(), SideConfig(target_modules="model"))
    with pytest.raises(ValueError, match="source_hidden_pos 'hidden' is not a required argument of model.layers.0"):
        Swift.prepare_model(base(), SideConfig(target_modules=r"model\.layers\.0", source_hidden_pos="hidden"))
    with pytest.raises(ValueError, match="a RESTUNING config cannot be read as SideConfig"):
        SideConfig.from_dict({"swift_type": "RESTUNING", "target_modules": "model.norm"})


def test_trains_through_the_trainer_from_pet_config(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    model = trainer_fixtures.tiny_llama()
    model.config.pet_config = {"pet_type": "side", "target_modules": r"model\.layers\.1"}
    model.apply_pet_config()
    assert type(model.model.layers[1]).__name__ == "SideDecoderLayer"
    assert model.model.layers[1].side_default.side_net.fc1.weight.shape == (32, 32)  # dim: the hidden size
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=3, save_steps=6, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    alpha = model.model.layers[1].side_default.alpha
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.02  # 10.84 -> 10.80 in six steps
    assert float(alpha.asnumpy()) != 0.0  # alpha learns
