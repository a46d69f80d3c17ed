"""LongLoRA (mindformers/tuners/longlora/, SWIFT's LongLoRAConfig): shifted sparse attention against numpy
while training and full attention outside it, LoRA identity at init, the embeddings and norms trained and saved
in SWIFT's layout, a round trip through Swift.from_pretrained, mixing with a LoRA, PEFT conversion and bad input
refused by name, and a Trainer fine-tune on the chatterbot chats whose held-out loss falls."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import LongLoRAConfig, LoRAConfig, Swift
from mindformers.tuners.longlora import ShiftedSparseAttention, s2_groups
from tests.conftest import INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))  # [2, 16]


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def _attention(q, k, v, bias):
    """Causal softmax attention of one head: q [s, d], k/v [s, d], bias [s, s]."""
    scores = q @ k.T / np.sqrt(q.shape[-1]) + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


def test_shifted_sparse_attention_against_numpy_and_full_attention_outside_training():
    assert s2_groups(16, 4, False) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert s2_groups(16, 4, True) == [(0, 2), (2, 6), (6, 10), (10, 14), (14, 16)]  # no wrap-around group
    model = Swift.prepare_model(base(), LongLoRAConfig(r=2, target_modules=["q_proj", "v_proj"]), seed=0)
    hook = model.base_model.model.layers[0].self_attn.tuner
    assert isinstance(hook, ShiftedSparseAttention)
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(1, 4, 16, 16)), rng.normal(size=(1, 2, 16, 16)), rng.normal(size=(1, 2, 16, 16))
    causal = np.triu(np.full((16, 16), np.finfo(np.float32).min), 1)
    args = [Tensor(x.astype(np.float32)) for x in (q, k, v, causal.reshape(1, 1, 16, 16))]
    model.set_train(True)
    trained = hook(*args).asnumpy()
    for h in range(4):  # heads 0, 1 in groups of 4; heads 2, 3 in groups shifted by 2; kv head h // 2
        for a, b in s2_groups(16, 4, h >= 2):
            expected = _attention(q[0, h, a:b], k[0, h // 2, a:b], v[0, h // 2, a:b], causal[a:b, a:b])
            np.testing.assert_allclose(trained[0, h, a:b], expected, atol=1e-5, rtol=1e-5)
    model.set_train(False)
    full = hook(*args).asnumpy()
    for h in range(4):
        np.testing.assert_allclose(full[0, h], _attention(q[0, h], k[0, h // 2], v[0, h // 2], causal), atol=1e-5, rtol=1e-5)
    # the model: LoRA starts at zero, so outside training it is the base model; training attention differs
    np.testing.assert_allclose(model(IDS).asnumpy(), base()(IDS).asnumpy(), atol=1e-6, rtol=0)
    model.set_train(True)
    assert np.abs(model(IDS).asnumpy() - base()(IDS).asnumpy()).max() > 1e-2
    model.set_train(False)


def test_trains_embeddings_and_norms_saves_and_loads_in_swift_layout(tmp_path):
    configs = {"first_tuner": LoRAConfig(r=2, target_modules=["o_proj"], init_lora_weights=False),
               "second_tuner": LongLoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False)}
    model = Swift.prepare_model(base(), configs, seed=3)
    trainable = {name for name, p in model.base_model.parameters_and_names() if p.requires_grad}
    assert "model.embed_tokens.weight" in trainable and "model.norm.weight" in trainable
    assert "model.layers.2.post_attention_layernorm.weight" in trainable and "lm_head.weight" not in trainable
    both = model(IDS).asnumpy()
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "second_tuner" / "adapter_model.safetensors"))
    assert "model.embed_tokens.weight" in saved and "model.layers.0.self_attn.q_proj.lora_A.second_tuner.weight" in saved
    assert len(saved) == 1 + 1 + 3 * 2 + 3 * 2 * 2  # embeddings, final norm, 2 norms and 2 LoRA pairs per layer
    assert '"swift_type": "LONGLORA"' in (tmp_path / "second_tuner" / "adapter_config.json").read_text()
    # the trained embeddings come back with the adapter
    saved["model.embed_tokens.weight"] = saved["model.embed_tokens.weight"] + 0.01
    from safetensors.numpy import save_file

    save_file(saved, str(tmp_path / "second_tuner" / "adapter_model.safetensors"), metadata={"format": "pt"})
    again = Swift.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(again.base_model.model.embed_tokens.weight.asnumpy(), saved["model.embed_tokens.weight"])
    assert np.abs(again(IDS).asnumpy() - both).max() > 1e-4
    with pytest.raises(ValueError, match="LONGLORA tuner, which PEFT does not have"):
        Swift.save_to_peft_format(str(tmp_path), str(tmp_path / "converted"))
    merged = Swift.merge_and_unload(again)
    assert merged.model.layers[0].self_attn.tuner is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"group_size_ratio must be in \(0, 1\], found 1.5"):
        LongLoRAConfig(group_size_ratio=1.5)
    with pytest.raises(ValueError, match="model_type must be 'llama'"):
        LongLoRAConfig(model_type="qwen")
    with pytest.raises(ValueError, match="embedder_and_normalizer 'wte' selects no parameter"):
        Swift.prepare_model(base(), LongLoRAConfig(target_modules=["q_proj"], embedder_and_normalizer="wte"))
    with pytest.raises(TypeError, match="LongLoRA works on Llama-style attention layers; .*GPT2Attention"):
        Swift.prepare_model(AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base")), LongLoRAConfig())
    model = Swift.prepare_model(base(), LongLoRAConfig(target_modules=["q_proj"], group_size_ratio=0.05), seed=0)
    model.set_train(True)
    with pytest.raises(ValueError, match="a 16-token sequence with group_size_ratio 0.05 gives groups of 0 tokens"):
        model(IDS)
    model.set_train(False)


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = Swift.prepare_model(tiny_llama(), LongLoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.02,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    assert "model.embed_tokens.weight" in saved
