"""IA3 (mindformers/tuners/ia3/): PEFT 0.21's adapter gives PEFT's logits and greedy ids, the formula against numpy, the
model unchanged at init, PEFT's file layout both ways, merging, pet_config and family defaults, clear errors,
and a short fine-tune on the chatterbot chats through the Trainer."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel, LlamaConfig, LlamaForCausalLM
from mindformers.tuners import IA3Config, IA3Linear, LoraConfig, PeftModel, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
PEFT_DIR = os.path.join(INTEROP, "llama", "adapters", "ia3")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_and_merges():
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    layer = model.base_model.model.layers[0]
    assert isinstance(layer.mlp.down_proj, IA3Linear) and layer.mlp.down_proj.is_feedforward
    assert not layer.self_attn.k_proj.is_feedforward and type(layer.self_attn.q_proj).__name__ == "Linear"
    expected = np.load(os.path.join(INTEROP, "llama", "logits_ia3.npy"))
    logits = model(ids_tensor(IDS)).asnumpy()
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)
    plain = base()(ids_tensor(IDS)).asnumpy()
    assert np.abs(plain - expected).max() > 0.1  # the adapter changes the model
    greedy = np.load(os.path.join(FIXTURES, "peft_methods", "generate_ia3.npy"))  # PEFT's, KV cache
    np.testing.assert_array_equal(np.asarray(model.generate(ids_tensor(IDS), max_new_tokens=8, do_sample=False)), greedy)
    model.merge_adapter()
    np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), expected, atol=ATOL, rtol=0)
    model.unmerge_adapter()
    np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), expected, atol=ATOL, rtol=0)
    unloaded = model.merge_and_unload()
    assert type(unloaded.model.layers[0].mlp.down_proj).__name__ == "Linear"
    np.testing.assert_allclose(unloaded(ids_tensor(IDS)).asnumpy(), expected, atol=ATOL, rtol=0)


def test_saved_in_peft_layout_and_read_back(tmp_path):
    model = PeftModel.from_pretrained(base(), PEFT_DIR, is_trainable=True)
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()  # base_model.model.model.layers.0.self_attn.k_proj.ia3_l, ...
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    again = PeftModel.from_pretrained(base(), str(tmp_path))
    assert again.peft_config["default"].feedforward_modules == ["down_proj"]
    np.testing.assert_allclose(again(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_ia3.npy")),
                               atol=ATOL, rtol=0)


def test_formula_identity_at_init_and_defaults():
    rng = np.random.default_rng(0)
    model = get_peft_model(base(), IA3Config(init_ia3_weights=False), seed=3)  # family default targets
    config = model.peft_config["default"]
    assert config.target_modules == ["k_proj", "v_proj", "down_proj"] and config.feedforward_modules == ["down_proj"]
    assert model.get_nb_trainable_parameters()[0] == 3 * (32 + 32 + 128)  # one vector per adapted layer
    for layer, x in ((model.base_model.model.layers[1].self_attn.v_proj, rng.normal(size=(5, 64))),
                     (model.base_model.model.layers[1].mlp.down_proj, rng.normal(size=(5, 128)))):
        w, l = layer.weight.asnumpy(), layer.ia3_l["default"].weight.asnumpy()
        expected = (x * l) @ w.T if layer.is_feedforward else (x @ w.T) * l.T
        np.testing.assert_allclose(layer(Tensor(x.astype(np.float32))).asnumpy(), expected, atol=1e-5, rtol=1e-5)
    identity = get_peft_model(base(), IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                feedforward_modules=["down_proj"]))
    np.testing.assert_array_equal(identity(ids_tensor(IDS)).asnumpy(), base()(ids_tensor(IDS)).asnumpy())


def test_gpt2_conv1d_and_pet_config():
    gpt2 = AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base"))
    model = get_peft_model(gpt2, IA3Config(init_ia3_weights=False), seed=0)
    attn, mlp = model.base_model.transformer.h[0].attn.c_attn, model.base_model.transformer.h[0].mlp.c_proj
    assert model.peft_config["default"].fan_in_fan_out and mlp.is_feedforward and not attn.is_feedforward
    assert type(model.base_model.transformer.h[0].attn.c_proj).__name__ == "Conv1D"  # only mlp.c_proj
    ids = ids_tensor(np.load(os.path.join(INTEROP, "gpt2", "input_ids.npy")))
    model.base_model.set_train(False)
    before = model(ids).asnumpy()
    model.merge_adapter()
    np.testing.assert_allclose(model(ids).asnumpy(), before, atol=ATOL, rtol=0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, pet_config={"pet_type": "ia3", "target_modules": ["k_proj", "down_proj"],
                                                            "feedforward_modules": ["down_proj"]})
    llama = LlamaForCausalLM.from_config(config, seed=0)
    assert isinstance(llama.model.layers[0].self_attn.k_proj, IA3Linear)
    assert llama._tuner.peft_config["default"].peft_type == "IA3"


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"feedforward_modules \['up_proj'\] must be a subset of target_modules"):
        get_peft_model(base(), IA3Config(target_modules=["k_proj"], feedforward_modules=["up_proj"]))
    with pytest.raises(ValueError, match="a IA3 config cannot be read as LoraConfig"):
        LoraConfig.from_pretrained(PEFT_DIR)
    with pytest.raises(ValueError, match="is a IA3 adapter"):
        model = PeftModel.from_pretrained(base(), PEFT_DIR)
        model.add_weighted_adapter(["default"], [1.0], "mix", "linear")
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['lora_rank'\] for IA3"):
        IA3Config.from_pet_config({"pet_type": "ia3", "lora_rank": 8})
    with pytest.raises(ValueError, match="pet_config.pet_type 'prefix' is not a registered tuner method"):
        from mindformers.tuners.config import config_from_pet

        config_from_pet({"pet_type": "prefix"})
    with pytest.raises(ValueError, match=r"no default IA3 targets for MixtralForCausalLM \(model_type 'mixtral'"):
        from mindformers import MixtralConfig, MixtralForCausalLM

        moe = MixtralForCausalLM.from_config(MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=32,
                                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                                           num_local_experts=2), seed=0)
        get_peft_model(moe, IA3Config())


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    """pet_config-free: a get_peft_model instance through the Trainer on the chatterbot chats; only the
    vectors move and the checkpoint is a PEFT IA3 adapter."""
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), IA3Config(), seed=0)
    frozen = {n: p.asnumpy().copy() for n, p in model.base_model.parameters_and_names() if not p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, batch_size=4, seq_length=64, learning_rate=0.5,
                             logging_steps=4, save_steps=12, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.05, (before, after)  # a random tiny model: only 6 vectors of 16-128 train
    for name, param in model.base_model.parameters_and_names():
        if name in frozen:
            np.testing.assert_array_equal(param.asnumpy(), frozen[name])
    saved = load_file(str(tmp_path / "checkpoint-12" / "adapter_model.safetensors"))
    assert sorted(saved)[0] == "base_model.model.model.layers.0.mlp.down_proj.ia3_l" and len(saved) == 6
