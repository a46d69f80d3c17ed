"""SWIFT's NEFTune (mindformers/tuners/neftune/): uniform noise within +-alpha / sqrt(seq_len * hidden) on the
embeddings in training only, the model training in full and saved whole in SWIFT's layout, a second NEFTune
and merging refused, and a Trainer run whose evaluation sees no noise."""
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindformers import AutoModel
from mindformers.tuners import NEFTuneConfig, Swift
from tests.conftest import INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_noise_in_training_only_within_the_bound(tmp_path):
    model = Swift.prepare_model(base(), NEFTuneConfig(noise_alpha=5.0))
    embed = model.base_model.model.embed_tokens
    table = embed.weight.asnumpy()
    ids = np.random.default_rng(0).integers(0, 384, (4, 25)).astype(np.int32)
    model.set_train(False)
    np.testing.assert_array_equal(embed(Tensor(ids)).asnumpy(), table[ids])
    model.set_train(True)
    noise = embed(Tensor(ids)).asnumpy() - table[ids]
    bound = 5.0 / np.sqrt(25 * 64)
    assert np.abs(noise).max() <= bound + 1e-6 and np.abs(noise).max() > 0.9 * bound
    assert abs(noise.mean()) < 0.05 * bound  # uniform around 0
    model.set_train(False)
    # the model trains in full, and SWIFT's file is its whole state
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == total
    logits = model(IDS).asnumpy()
    model.save_pretrained(str(tmp_path))
    assert '"swift_type": "NEFTUNE"' in (tmp_path / "default" / "adapter_config.json").read_text()
    again = Swift.from_pretrained(base(), str(tmp_path))
    np.testing.assert_array_equal(again(IDS).asnumpy(), logits)
    with pytest.raises(ValueError, match="does not support a second NEFTune tuner"):
        Swift.prepare_model(model, {"again": NEFTuneConfig()})
    with pytest.raises(ValueError, match="NEFTUNE tuner, which cannot be merged .*noise while training"):
        model.merge_adapter()


def test_trains_the_model_through_the_trainer(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = tiny_llama()
    model.config.pet_config = {"pet_type": "neftune", "neftune_noise_alpha": 5.0}
    model.apply_pet_config()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, batch_size=4, seq_length=64, learning_rate=1e-2,
                             logging_steps=3, save_steps=0, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    assert trainer.evaluate()["eval_loss"] == before  # no noise in evaluation
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.2  # the whole model trains (LoRA-free: 10.8 -> 10.4)
