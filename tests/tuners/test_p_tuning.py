"""P-tuning (mindformers/tuners/p_tuning/): PEFT 0.21's saved adapter (the encoder's output) gives PEFT's
logits and greedy ids; MLP and LSTM encoders have torch's parameter counts and train through the Trainer's compiled step;
what we save is PEFT's layout (only ``prompt_embeddings``) and reloads with equal logits."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import PeftModel, PromptEncoderConfig, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_and_greedy_ids():
    model = PeftModel.from_pretrained(base(), os.path.join(INTEROP, "llama", "adapters", "p_tuning"))
    np.testing.assert_allclose(model(IDS).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_p_tuning.npy")),
                               atol=1e-4, rtol=0)
    expected = np.load(os.path.join(FIXTURES, "peft_methods", "generate_p_tuning.npy"))  # PEFT's, KV cache
    np.testing.assert_array_equal(np.asarray(model.generate(IDS, max_new_tokens=8, do_sample=False)), expected)


@pytest.mark.parametrize("kind, trainable", [("MLP", 4 * 64 + (64 * 16 + 16) + (16 * 16 + 16) + (16 * 64 + 64)),
                                             # 2-layer bidirectional LSTM of 16 (two bias vectors, as torch) + head
                                             ("LSTM", 4 * 64 + 2 * (64 * 80 + 128) + 2 * (64 * 48 + 128)
                                              + (32 * 32 + 32) + (32 * 64 + 64))])
def test_encoders_save_their_output_in_peft_layout(kind, trainable, tmp_path):
    config = PromptEncoderConfig(num_virtual_tokens=4, encoder_reparameterization_type=kind, encoder_hidden_size=16)
    model = get_peft_model(base(), config, seed=0)
    assert model.get_nb_trainable_parameters()[0] == trainable
    logits = model(IDS).asnumpy()
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].shape == (4, 64)
    again = PeftModel.from_pretrained(base(), str(tmp_path))
    np.testing.assert_allclose(again(IDS).asnumpy(), logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="P_TUNING tuner, which cannot be merged"):
        again.merge_adapter()


def test_lstm_encoder_trains_through_the_trainer(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), PromptEncoderConfig(num_virtual_tokens=6, encoder_reparameterization_type="LSTM",
                                                             encoder_hidden_size=16), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.05,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.01
    # a training checkpoint keeps the encoder itself (PEFT's file would hold only its output), so it resumes
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    assert "model.embed_tokens.prompt_encoder.default.embedding.weight" in saved and len(saved) > 10
    args.max_steps, args.overwrite_output_dir = 9, False
    resumed = Trainer(model=get_peft_model(tiny_llama(), PromptEncoderConfig(
        num_virtual_tokens=6, encoder_reparameterization_type="LSTM", encoder_hidden_size=16), seed=1), tokenizer=tok,
        args=args, train_dataset=small_chats[0])
    assert resumed.train(resume_training=True).global_step == 9
