"""Adaption prompt (mindformers/tuners/adaption_prompt/): PEFT 0.21's LLaMA-Adapter (tests/fixtures/interop)
gives PEFT's logits and greedy ids (KV cache and without), our file equals PEFT's and what we save loads in PEFT
(tests/fixtures/peft_reads_ours), identity at init (zero gate), the gated prompt attention against numpy,
pet_config, bad input named, and a Trainer fine-tune on the chatterbot chats lowers held-out loss."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import AdaptionPromptConfig, PeftModel, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
PEFT_DIR = os.path.join(INTEROP, "llama", "adapters", "adaption_prompt")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_and_greedy_ids(tmp_path):
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    layers = model.base_model.model.layers
    assert layers[1].self_attn.tuner is None and layers[2].self_attn.tuner is not None  # the top layer only
    np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_adaption_prompt.npy")),
                               atol=ATOL, rtol=0)
    expected = np.load(os.path.join(FIXTURES, "peft_methods", "generate_adaption_prompt.npy"))
    for use_cache in (True, False):
        ids = np.asarray(model.generate(ids_tensor(IDS), max_new_tokens=8, do_sample=False, use_cache=use_cache))
        np.testing.assert_array_equal(ids, expected)
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs) == ["base_model.model.model.layers.2.self_attn.adaption_gate",
                                              "base_model.model.model.layers.2.self_attn.adaption_prompt"]
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    with pytest.raises(ValueError, match="ADAPTION_PROMPT tuner, which cannot be merged"):
        model.merge_adapter()
    unloaded = model.unload()
    assert unloaded.model.layers[2].self_attn.tuner is None
    np.testing.assert_allclose(unloaded(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")),
                               atol=ATOL, rtol=0)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_identity_at_init_and_the_gated_prompt_against_numpy():
    model = get_peft_model(base(), AdaptionPromptConfig(adapter_len=3, adapter_layers=2), seed=0)
    np.testing.assert_array_equal(model(ids_tensor(IDS)).asnumpy(), base()(ids_tensor(IDS)).asnumpy())  # gate 0
    assert model.get_nb_trainable_parameters()[0] == 2 * (3 * 64 + 1)
    attention = model.base_model.model.layers[1].self_attn
    hook = attention.tuner
    hook.adaption_gate["default"].weight.set_data(Tensor(np.array([0.6], np.float32)))
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((1, 4, 5, 16), (1, 2, 5, 16), (1, 2, 5, 16)))
    causal = np.triu(np.full((5, 5), np.finfo(np.float32).min, np.float32), 1).reshape(1, 1, 5, 5)
    out = hook(Tensor(q), Tensor(k), Tensor(v), Tensor(causal)).asnumpy()
    prompt = hook.adaption_prompt["default"].weight.asnumpy()[0]  # [3, 64]
    prompt_k = (prompt @ attention.k_proj.weight.asnumpy().T).reshape(3, 2, 16)
    prompt_v = (prompt @ attention.v_proj.weight.asnumpy().T).reshape(3, 2, 16)
    for h in range(4):
        plain = _softmax(q[0, h] @ k[0, h // 2].T / 4.0 + causal[0, 0]) @ v[0, h // 2]
        gated = 0.6 * _softmax(q[0, h] @ prompt_k[:, h // 2].T / 4.0) @ prompt_v[:, h // 2]  # no mask, no rotary
        np.testing.assert_allclose(out[0, h], plain + gated, atol=1e-5, rtol=1e-5)


def test_ours_loads_in_peft_pet_config_and_bad_input(tmp_path):
    from mindformers.tuners import LoraConfig
    from tests.trainer.conftest import tiny_llama

    reads = os.path.join(FIXTURES, "peft_reads_ours", "adaption_prompt")  # saved by us, read by PEFT
    model = PeftModel.from_pretrained(base(), reads)
    np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(reads, "peft_logits.npz"))["logits"],
                               atol=ATOL, rtol=0)
    pet = tiny_llama()
    pet.config.pet_config = {"pet_type": "llama_adapter", "adapter_length": 2, "adapter_layers": 1}
    pet.apply_pet_config()
    assert pet.model.layers[1].self_attn.tuner.adaption_prompt["default"].weight.shape == (1, 2, 32)
    with pytest.raises(ValueError, match="AdaptionPromptConfig.adapter_len must be a positive integer, found None"):
        AdaptionPromptConfig(adapter_layers=1)
    with pytest.raises(ValueError, match="adapter_layers 4 exceeds the model's 3 layers"):
        get_peft_model(base(), AdaptionPromptConfig(adapter_len=2, adapter_layers=4))
    with pytest.raises(ValueError, match="a ADAPTION_PROMPT config cannot be read as LoraConfig"):
        LoraConfig.from_pretrained(PEFT_DIR)
    with pytest.raises(TypeError, match="adaption prompt works on Llama-style attention layers; .*GPT2Attention"):
        get_peft_model(AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base")),
                       AdaptionPromptConfig(adapter_len=2, adapter_layers=1))
    with pytest.raises(ValueError, match="o_proj has a bias, which PEFT's adaption prompt adds a second time"):
        get_peft_model(tiny_llama(attention_bias=True), AdaptionPromptConfig(adapter_len=2, adapter_layers=1))


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), AdaptionPromptConfig(adapter_len=8, adapter_layers=2), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.5,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.1.self_attn.adaption_gate" in saved and saved[
        "base_model.model.model.layers.1.self_attn.adaption_gate"][0] != 0
