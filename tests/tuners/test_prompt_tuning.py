"""Prompt tuning (mindformers/tuners/prompt_tuning/): PEFT 0.21's adapter gives PEFT's logits (virtual positions
included) and PEFT's greedy ids through the KV cache and without it; our file equals PEFT's; TEXT / RANDOM
initialisation; the adapter switched off gives the base model; merging refused; a Trainer fine-tune on the
chatterbot chats lowers held-out loss."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import PeftModel, PromptTuningConfig, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
PEFT_DIR = os.path.join(INTEROP, "llama", "adapters", "prompt_tuning")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_and_greedy_ids(tmp_path):
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    assert model.base_model.virtual_tokens == 4
    logits = model(ids_tensor(IDS)).asnumpy()
    assert logits.shape == (2, 20, 384)  # the virtual positions too, as PEFT returns them
    np.testing.assert_allclose(logits, np.load(os.path.join(INTEROP, "llama", "logits_prompt_tuning.npy")), atol=ATOL, rtol=0)
    expected = np.load(os.path.join(FIXTURES, "peft_methods", "generate_prompt_tuning.npy"))
    for use_cache in (True, False):
        ids = np.asarray(model.generate(ids_tensor(IDS), max_new_tokens=8, do_sample=False, use_cache=use_cache))
        np.testing.assert_array_equal(ids, expected)
    with model.disable_adapter():
        assert model.base_model.virtual_tokens == 0
        np.testing.assert_allclose(model(ids_tensor(IDS)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")),
                                   atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert list(ours) == list(theirs) == ["prompt_embeddings"]
    np.testing.assert_array_equal(ours["prompt_embeddings"], theirs["prompt_embeddings"])
    with pytest.raises(ValueError, match="PROMPT_TUNING tuner, which cannot be merged .*adds inputs"):
        model.merge_adapter()


def test_text_initialisation_and_pet_config(tok):
    from tests.trainer.conftest import tiny_llama

    config = PromptTuningConfig(num_virtual_tokens=7, prompt_tuning_init="TEXT", prompt_tuning_init_text="Answer:",
                                tokenizer_name_or_path="smollm2_135m_instruct")
    model = get_peft_model(tiny_llama(), config, seed=0)
    ids = tok("Answer:")["input_ids"]
    table = model.base_model.model.embed_tokens.weight.asnumpy()
    prompt = model.base_model.model.embed_tokens.prompt_embeddings["default"].weight.asnumpy()
    np.testing.assert_array_equal(prompt, table[(ids * 7)[:7]])  # the text's ids repeated to length
    saved = model.peft_config["default"]
    assert saved.token_dim == 32 and saved.num_layers == 2 and saved.num_attention_heads == 4  # recorded for PEFT
    assert model.get_nb_trainable_parameters()[0] == 7 * 32
    pet = tiny_llama()
    pet.config.pet_config = {"pet_type": "prompt_tuning", "num_virtual_tokens": 3}
    pet.apply_pet_config()
    assert pet.virtual_tokens == 3 and pet(ids_tensor(np.array([[5, 6]]))).shape == (1, 5, pet.config.vocab_size)
    with pytest.raises(ValueError, match="prompt_tuning_init TEXT needs prompt_tuning_init_text and tokenizer_name_or_path"):
        PromptTuningConfig(prompt_tuning_init="TEXT")


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), PromptTuningConfig(num_virtual_tokens=8), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.5,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.01  # a random tiny model: only 8 x 32 numbers train
    assert list(load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))) == ["prompt_embeddings"]


def test_get_prompt_and_the_embedding_to_save():
    from mindformers.tuners import LoraConfig, PromptEncoderConfig

    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    saved = load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))["prompt_embeddings"]
    np.testing.assert_array_equal(model.get_prompt_embedding_to_save("default").asnumpy(), saved)
    assert model.get_prompt(3).shape == (3, 4, 64)
    encoder = get_peft_model(base(), PromptEncoderConfig(num_virtual_tokens=2, encoder_hidden_size=8), seed=0)
    assert encoder.get_prompt_embedding_to_save("default").shape == (2, 64)  # the encoder's output
    lora = get_peft_model(base(), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="'default' is a LORA adapter, not a prompt-learning one"):
        lora.get_prompt(1)
