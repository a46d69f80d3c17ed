"""LoHa (mindformers/tuners/loha/): PEFT 0.21's adapter (tests/fixtures/peft_methods, made by its script)
gives PEFT's logits unmerged and merged, our files equal PEFT's, the formula against numpy, identity at init,
pet_config, bad input named, and a short fine-tune on the chatterbot chats."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import LoHaConfig, LoHaLinear, PeftModel, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
PEFT_DIR = os.path.join(FIXTURES, "peft_methods", "loha")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_merged_and_saved_alike(tmp_path):
    reference = np.load(os.path.join(PEFT_DIR, "peft_logits.npz"))
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    layer = model.base_model.model.layers[1].self_attn.v_proj
    assert isinstance(layer, LoHaLinear) and layer.hada_w1_a["default"].weight.shape == (32, 2)  # rank_pattern
    np.testing.assert_allclose(model(IDS).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    assert np.abs(base()(IDS).asnumpy() - reference["logits"]).max() > 0.1
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(theirs) == 36
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    merged = model.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    np.testing.assert_allclose(merged(IDS).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


def test_formula_identity_at_init_and_pet_config():
    model = get_peft_model(base(), LoHaConfig(r=2, alpha=6, target_modules=["o_proj"], init_weights=False), seed=0)
    layer = model.base_model.model.layers[0].self_attn.o_proj
    f = {s: getattr(layer, s)["default"].weight.asnumpy() for s in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * 3.0
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), x @ (layer.weight.asnumpy() + delta).T, atol=1e-5, rtol=1e-5)
    identity = get_peft_model(base(), LoHaConfig(target_modules=["q_proj", "v_proj"]), seed=0)
    np.testing.assert_array_equal(identity(IDS).asnumpy(), base()(IDS).asnumpy())  # hada_w2_b starts at zero
    assert identity.get_nb_trainable_parameters()[0] == 3 * 2 * 2 * 8 * (64 + 64 + 32 + 64) // 2
    from mindformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         pet_config={"pet_type": "loha", "loha_rank": 4})  # family default: q_proj, v_proj
    llama = LlamaForCausalLM.from_config(config, seed=0)
    assert isinstance(llama.model.layers[1].self_attn.v_proj, LoHaLinear)
    assert llama._tuner.peft_config["default"].r == 4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"LoHaConfig.rank_dropout must be in \[0, 1\), found 1.5"):
        LoHaConfig(rank_dropout=1.5)
    with pytest.raises(ValueError, match="a LOHA config cannot be read as LoraConfig"):
        from mindformers.tuners import LoraConfig

        LoraConfig.from_pretrained(PEFT_DIR)
    with pytest.raises(TypeError, match="LoHaLinear adapts Linear layers .* not Conv1D"):
        get_peft_model(AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base")), LoHaConfig())


def test_rank_and_module_dropout_in_training_only():
    import mindspore as ms

    ms.set_seed(0)
    model = get_peft_model(base(), LoHaConfig(r=2, target_modules=["o_proj"], init_weights=False, rank_dropout=0.5), seed=0)
    layer = model.base_model.model.layers[0].self_attn.o_proj
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    plain = x @ layer.weight.asnumpy().T
    update = layer(Tensor(x)).asnumpy() - plain  # not training: the whole update
    model.set_train(True)
    trained = layer(Tensor(x)).asnumpy() - plain
    # per output row, the least-squares factor trained = ratio * update over the 3 inputs: 0 (dropped) or
    # 1 / kept (an elementwise quotient is float32 noise where an update element is near 0)
    ratio = (trained * update).sum(0) / (update * update).sum(0)
    kept = ratio > 0.5
    assert 10 < kept.sum() < 54
    np.testing.assert_allclose(ratio[kept], 64 / kept.sum(), rtol=1e-3)  # PEFT's LoHa rescales the kept rows
    np.testing.assert_allclose(ratio[~kept], 0, atol=1e-4)
    skipping = get_peft_model(base(), LoHaConfig(r=2, target_modules=["o_proj"], init_weights=False, module_dropout=0.5), seed=0)
    layer = skipping.base_model.model.layers[0].self_attn.o_proj
    skipping.set_train(True)
    seen = {bool(np.abs(layer(Tensor(x)).asnumpy() - plain).max() > 1e-6) for _ in range(12)}
    assert seen == {True, False}  # some steps add the whole update, others skip it
    skipping.set_train(False)
    model.set_train(False)


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), LoHaConfig(r=4, alpha=8), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.1,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.hada_w2_b" in saved
