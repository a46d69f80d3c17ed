"""SWIFT's LLaMA-Pro (mindformers/tuners/llama_pro/): block expansion with zeroed o_proj / down_proj leaves the
model unchanged (logits and greedy ids through the grown KV cache), only the new blocks train and are saved
under their new layer paths (SWIFT's state), the expanded model reloads from them, and bad splits are named."""
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindformers import AutoModel
from mindformers.tuners import LLaMAProConfig, Swift
from tests.conftest import INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_expansion_is_identity_at_first_and_saves_the_new_blocks(tmp_path):
    plain = base()
    expected, expected_ids = plain(IDS).asnumpy(), np.asarray(plain.generate(IDS, max_new_tokens=6, do_sample=False))
    model = Swift.prepare_model(base(), LLaMAProConfig(num_new_blocks=3))
    assert model.config.num_hidden_layers == 6 and len(model.base_model.model.layers) == 6
    np.testing.assert_allclose(model(IDS).asnumpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(model.generate(IDS, max_new_tokens=6, do_sample=False)), expected_ids)
    trainable = [n for n, p in model.base_model.parameters_and_names() if p.requires_grad]
    assert {n.split(".")[2] for n in trainable} == {"1", "3", "5"} and len(trainable) == 3 * 9  # 9 tensors a layer
    rng = np.random.default_rng(0)
    for name, param in model.base_model.parameters_and_names():
        if param.requires_grad:  # as if trained
            param.set_data(Tensor((param.asnumpy() + rng.normal(0, 0.05, param.shape)).astype(np.float32)))
    trained = model(IDS).asnumpy()
    assert np.abs(trained - expected).max() > 1e-3
    model.save_pretrained(str(tmp_path))
    again = Swift.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(again(IDS).asnumpy(), trained, atol=1e-5, rtol=0)


def test_bad_splits_are_named():
    with pytest.raises(ValueError, match="num_new_blocks 2 must divide the 3 layers"):
        Swift.prepare_model(base(), LLaMAProConfig(num_new_blocks=2))
    with pytest.raises(ValueError, match="num_new_blocks must be a positive integer"):
        LLaMAProConfig()
    with pytest.raises(TypeError, match="LLaMA-Pro expands the decoder layers of Llama-style models"):
        Swift.prepare_model(AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base")), LLaMAProConfig(num_new_blocks=3))


def test_trains_through_the_trainer(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama()
    model.config.pet_config = {"pet_type": "llama_pro", "num_new_blocks": 2}
    model.apply_pet_config()
    assert model.config.num_hidden_layers == 4
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=3, save_steps=0, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.02
