"""FourierFT (mindformers/tuners/fourierft/): PEFT 0.21's adapters (tests/fixtures/peft_methods, made by its
script; PEFT saves only the spectra and redraws the frequencies with torch.randperm, which we reproduce) give
PEFT's logits unmerged and merged on Llama and GPT-2's Conv1D; what we save loads in PEFT with our logits
(ours/, made by make_ours.py); the formula against numpy; identity at init; pet_config; bad input named;
and a short fine-tune on the chatterbot chats."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import FourierFTConfig, FourierFTLinear, PeftModel, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer import conftest as trainer_fixtures

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures
ATOL = 1e-4
METHODS = os.path.join(FIXTURES, "peft_methods")


def base(family="llama"):
    return AutoModel.from_pretrained(os.path.join(INTEROP, family, "base"))


def ids(family="llama"):
    return ids_tensor(np.load(os.path.join(INTEROP, family, "input_ids.npy")))


@pytest.mark.parametrize("case, family, keys", [("fourierft", "llama", 9), ("fourierft_gpt2", "gpt2", 6)])
def test_peft_adapter_gives_peft_logits_merged_and_saved_alike(case, family, keys, tmp_path):
    directory = os.path.join(METHODS, case)
    reference = np.load(os.path.join(directory, "peft_logits.npz"))
    model = PeftModel.from_pretrained(base(family), directory)
    if family == "llama":  # n_frequency_pattern
        assert model.base_model.model.layers[1].mlp.down_proj.fourierft_spectrum["default"].weight.shape == (500,)
    np.testing.assert_allclose(model(ids(family)).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    assert np.abs(base(family)(ids(family)).asnumpy() - reference["logits"]).max() > 0.1
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(directory, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(theirs) == keys
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    merged = model.merge_and_unload()
    np.testing.assert_allclose(merged(ids(family)).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case, family", [("fourierft", "llama"), ("fourierft_gpt2", "gpt2")])
def test_peft_gives_our_logits_on_our_files(case, family):
    directory = os.path.join(METHODS, "ours", case)  # PEFT loaded these and recorded its logits
    model = PeftModel.from_pretrained(base(family), directory)
    np.testing.assert_allclose(model(ids(family)).asnumpy(), np.load(os.path.join(directory, "peft_logits.npz"))["logits"],
                               atol=ATOL, rtol=0)


def test_formula_frequencies_identity_at_init_and_pet_config():
    model = get_peft_model(base(), FourierFTConfig(n_frequency=200, scaling=10.0, target_modules=["q_proj", "up_proj"]),
                           seed=0)
    layer = model.base_model.model.layers[0].self_attn.q_proj  # [64, 64]; PEFT's default random_loc_seed 777
    rows, cols = layer.indices["default"].asnumpy().T
    torch_perm = np.load(os.path.join(METHODS, "torch_random.npz"))["randperm_4096_200_777"]
    np.testing.assert_array_equal(rows * 64 + cols, torch_perm)  # torch.randperm(64 * 64)[:200]
    spectrum = layer.fourierft_spectrum["default"].weight.asnumpy().astype(np.float64)
    dense = np.zeros((64, 64))
    dense[rows, cols] = spectrum
    delta = np.fft.ifft2(dense).real * 10.0
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), x @ (layer.weight.asnumpy() + delta).T, atol=1e-5, rtol=1e-5)
    up = model.base_model.model.layers[0].mlp.up_proj  # [128, 64]: row = i // 64, column = i % 64
    assert up.indices["default"].asnumpy()[:, 0].max() > 64 and up.indices["default"].asnumpy()[:, 1].max() < 64
    assert model.get_nb_trainable_parameters()[0] == 3 * 2 * 200
    assert np.abs(model(ids()).asnumpy() - base()(ids()).asnumpy()).max() > 1e-3  # default init: N(0, 1) spectra
    identity = get_peft_model(base(), FourierFTConfig(n_frequency=100, init_weights=True), seed=0)
    np.testing.assert_array_equal(identity(ids()).asnumpy(), base()(ids()).asnumpy())  # spectra start at zero
    from mindformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         pet_config={"pet_type": "fourierft", "n_frequency": 64})  # family default: q_proj, v_proj
    llama = LlamaForCausalLM.from_config(config, seed=0)
    assert isinstance(llama.model.layers[1].self_attn.v_proj, FourierFTLinear)
    assert llama._tuner.peft_config["default"].n_frequency == 64


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['r'\] for FOURIERFT; valid: .*n_frequency"):
        FourierFTConfig.from_pet_config({"pet_type": "fourierft", "r": 8})
    with pytest.raises(ValueError, match="a VERA config cannot be read as FourierFTConfig"):
        FourierFTConfig.from_pretrained(os.path.join(METHODS, "vera"))
    with pytest.raises(ValueError, match="random_loc_seed must be an integer .* found None"):
        FourierFTConfig(random_loc_seed=None)
    with pytest.raises(ValueError, match=r"n_frequency must be in \[1, out \* in = 2048\] for this \[32, 64\] layer, "
                                         "found 3000"):
        get_peft_model(base(), FourierFTConfig(n_frequency=3000, target_modules=["k_proj"]))
    with pytest.raises(ValueError, match="matched no linear layer"):
        get_peft_model(base(), FourierFTConfig(target_modules=["query"]))


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments

    config = FourierFTConfig(n_frequency=256, scaling=100.0, init_weights=True,
                             target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    model = get_peft_model(trainer_fixtures.tiny_llama(), config, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.05,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print("fourierft eval loss", before, after)
    assert after < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    assert np.abs(saved["base_model.model.model.layers.0.self_attn.q_proj.fourierft_spectrum"]).max() > 0
