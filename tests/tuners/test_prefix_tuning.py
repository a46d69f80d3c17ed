"""Prefix tuning (mindformers/tuners/prefix_tuning/): PEFT 0.21's adapter (tests/fixtures/interop) gives PEFT's
logits and greedy ids (KV cache and without), our file equals PEFT's, the attention against numpy (prefix keys
without rotary positions, seen by every query; the input's tokens at positions n..), a prefix trained through its
projection saves what PEFT saves (tests/fixtures/peft_reads_ours), pet_config, bad input named, and a Trainer
fine-tune on the chatterbot chats lowers held-out loss."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import PeftModel, PrefixTuningConfig, get_peft_model
from mindformers.tuners.prefix_tuning import PrefixAttention
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
PEFT_DIR = os.path.join(INTEROP, "llama", "adapters", "prefix_tuning")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_and_greedy_ids(tmp_path):
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    assert model.base_model.prefix_positions == 4 and model.base_model.virtual_tokens == 0
    logits = model(ids_tensor(IDS)).asnumpy()
    assert logits.shape == (2, 16, 384)  # no virtual positions: the prefix is keys and values only
    np.testing.assert_allclose(logits, np.load(os.path.join(INTEROP, "llama", "logits_prefix_tuning.npy")), atol=ATOL, rtol=0)
    expected = np.load(os.path.join(FIXTURES, "peft_methods", "generate_prefix_tuning.npy"))
    for use_cache in (True, False):
        ids = np.asarray(model.generate(ids_tensor(IDS), max_new_tokens=8, do_sample=False, use_cache=use_cache))
        np.testing.assert_array_equal(ids, expected)
    with model.disable_adapter():
        assert model.base_model.prefix_positions == 0
        np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")),
                                   atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert list(ours) == list(theirs) == ["prompt_embeddings"]
    np.testing.assert_array_equal(ours["prompt_embeddings"], theirs["prompt_embeddings"])
    layers = model.get_prompt(3)  # PEFT's past key values: layer 1's keys are columns [1, 0] of the table's view
    assert len(layers) == 3 and layers[1][0].shape == (3, 2, 4, 16)
    view = theirs["prompt_embeddings"].reshape(4, 3, 2, 2, 16)
    np.testing.assert_array_equal(layers[1][0].asnumpy()[2], view[:, 1, 0].transpose(1, 0, 2))
    np.testing.assert_array_equal(layers[2][1].asnumpy()[0], view[:, 2, 1].transpose(1, 0, 2))
    with pytest.raises(ValueError, match="PREFIX_TUNING tuner, which cannot be merged .*prompts the attention"):
        model.merge_adapter()


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_with_the_prefix_against_numpy():
    model = get_peft_model(base(), PrefixTuningConfig(num_virtual_tokens=3), seed=0)
    hook = model.base_model.model.layers[2].self_attn.tuner
    assert isinstance(hook, PrefixAttention)
    table = hook.prompt("default").asnumpy().reshape(3, 3, 2, 2, 16)[:, 2]  # [n, 2, kv, d]
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((1, 4, 5, 16), (1, 2, 5, 16), (1, 2, 5, 16)))
    causal = np.triu(np.full((5, 5), np.finfo(np.float32).min, np.float32), 1).reshape(1, 1, 5, 5)
    out = hook(Tensor(q), Tensor(k), Tensor(v), Tensor(causal)).asnumpy()
    keys = np.concatenate([table[:, 0].transpose(1, 0, 2)[None], k], 2)  # [1, kv, 3 + 5, d]
    values = np.concatenate([table[:, 1].transpose(1, 0, 2)[None], v], 2)
    bias = np.concatenate([np.zeros((1, 1, 5, 3), np.float32), causal], 3)
    for h in range(4):  # query head h reads kv head h // 2
        probs = _softmax(q[0, h] @ keys[0, h // 2].T / 4.0 + bias[0, 0])
        np.testing.assert_allclose(out[0, h], probs @ values[0, h // 2], atol=1e-5, rtol=1e-5)
    # the input's tokens sit at positions 3.. : the same ids at explicit positions 3.. give the same logits
    ids = ids_tensor(IDS)
    explicit = model.base_model.construct(ids, None, Tensor(np.broadcast_to(np.arange(3, 19), (2, 16)).astype(np.int32)))
    np.testing.assert_allclose(model(ids).asnumpy(), explicit.asnumpy(), atol=1e-6, rtol=0)


def test_projection_trains_and_saves_what_peft_saves(tmp_path):
    reads = os.path.join(FIXTURES, "peft_reads_ours", "prefix_projection")  # made by our save, read by PEFT
    model = PeftModel.from_pretrained(base(), reads)
    np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(reads, "peft_logits.npz"))["logits"],
                               atol=ATOL, rtol=0)
    config = PrefixTuningConfig(num_virtual_tokens=5, prefix_projection=True, encoder_hidden_size=24)
    trained = get_peft_model(base(), config, seed=0)
    assert trained.get_nb_trainable_parameters()[0] == 5 * 32 + 32 * 24 + 24 + 24 * 192 + 192  # table + MLP
    trained.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape == (5, 3 * 2 * 32)
    reloaded = PeftModel.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(reloaded(ids_tensor(IDS)).asnumpy(), trained(ids_tensor(IDS)).asnumpy(), atol=1e-5, rtol=0)
    zero = get_peft_model(base(), PrefixTuningConfig(num_virtual_tokens=2, init_weights="zero"), seed=0)
    assert not zero.get_prompt_embedding_to_save("default").asnumpy().any()


def test_pet_config_and_bad_input():
    from mindformers.tuners import PromptTuningConfig
    from tests.trainer.conftest import tiny_llama

    pet = tiny_llama()
    pet.config.pet_config = {"pet_type": "ptuning2", "pre_seq_len": 3, "prefix_projection": True, "projection_dim": 8}
    pet.apply_pet_config()
    assert pet.prefix_positions == 3 and pet._tuner.peft_config["default"].encoder_hidden_size == 8
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['dropout_rate'\] for PREFIX_TUNING"):
        PrefixTuningConfig.from_pet_config({"pet_type": "prefix_tuning", "dropout_rate": 0.1})
    with pytest.raises(ValueError, match="a PREFIX_TUNING config cannot be read as PromptTuningConfig"):
        PromptTuningConfig.from_pretrained(PEFT_DIR)
    with pytest.raises(ValueError, match="token_dim 64 does not match the model's key/value width 32"):
        get_peft_model(base(), PrefixTuningConfig(num_virtual_tokens=2, token_dim=64))
    with pytest.raises(TypeError, match="prefix tuning works on Llama-style attention layers; .*GPT2Attention"):
        get_peft_model(AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base")), PrefixTuningConfig())
    long = get_peft_model(base(), PrefixTuningConfig(num_virtual_tokens=120), seed=0)  # context 128
    with pytest.raises(ValueError, match="the prompt has 16 tokens but the model's context is 8 tokens .* less the 120 "
                                         "positions of the prompt adapter"):
        long.generate(ids_tensor(IDS), max_new_tokens=2)
    with pytest.raises(ValueError, match="the active prompt adapter takes 130 positions, but the model's context is 128"):
        get_peft_model(base(), PrefixTuningConfig(num_virtual_tokens=130), seed=0).generate(ids_tensor(IDS), max_new_tokens=2)


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=8, prefix_projection=True), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.1,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))  # SWIFT keys: the MLP too
    assert any(".prefix_encoder.default.transform." in key for key in saved)
