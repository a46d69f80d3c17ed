"""VeRA (mindformers/tuners/vera/): PEFT 0.21's adapters (tests/fixtures/peft_methods, made by its script) give
PEFT's logits unmerged and merged, with the shared projections read from the file or, with
save_projection=False, drawn from projection_prng_key exactly as PEFT draws them with torch; what we save
loads in PEFT with our logits (ours/, made by make_ours.py); the formula against numpy; identity at init;
pet_config; bad input named; and a short fine-tune on the chatterbot chats."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import PeftModel, VeraConfig, VeraLinear, get_peft_model
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer import conftest as trainer_fixtures

chats, small_chats, tok = trainer_fixtures.chats, trainer_fixtures.small_chats, trainer_fixtures.tok  # fixtures
ATOL = 1e-4
METHODS = os.path.join(FIXTURES, "peft_methods")


def base(family="llama"):
    return AutoModel.from_pretrained(os.path.join(INTEROP, family, "base"))


def ids(family="llama"):
    return ids_tensor(np.load(os.path.join(INTEROP, family, "input_ids.npy")))


@pytest.mark.parametrize("case, family, keys", [("vera", "llama", 26), ("vera_no_projection", "llama", 12),
                                                ("vera_gpt2", "gpt2", 14)])
def test_peft_adapter_gives_peft_logits_merged_and_saved_alike(case, family, keys, tmp_path):
    directory = os.path.join(METHODS, case)
    reference = np.load(os.path.join(directory, "peft_logits.npz"))
    model = PeftModel.from_pretrained(base(family), directory)
    np.testing.assert_allclose(model(ids(family)).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    assert np.abs(base(family)(ids(family)).asnumpy() - reference["logits"]).max() > 0.1
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(directory, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and len(theirs) == keys  # projections only when save_projection
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    merged = model.merge_and_unload()
    np.testing.assert_allclose(merged(ids(family)).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["vera", "vera_no_projection"])
def test_peft_gives_our_logits_on_our_files(case):
    directory = os.path.join(METHODS, "ours", case)  # PEFT loaded these and recorded its logits
    model = PeftModel.from_pretrained(base(), directory)
    np.testing.assert_allclose(model(ids()).asnumpy(), np.load(os.path.join(directory, "peft_logits.npz"))["logits"],
                               atol=ATOL, rtol=0)


def test_two_adapters_each_with_their_projections_switch_disable_and_delete():
    model = PeftModel.from_pretrained(base(), os.path.join(METHODS, "vera"))
    model.load_adapter(os.path.join(METHODS, "vera_no_projection"), "second")  # r=4, other key and targets
    first, second = (np.load(os.path.join(METHODS, case, "peft_logits.npz"))["logits"] for case in ("vera", "vera_no_projection"))
    np.testing.assert_allclose(model(ids()).asnumpy(), first, atol=ATOL, rtol=0)
    model.set_adapter("second")
    np.testing.assert_allclose(model(ids()).asnumpy(), second, atol=ATOL, rtol=0)
    with model.disable_adapter():
        np.testing.assert_array_equal(model(ids()).asnumpy(), base()(ids()).asnumpy())
    model.delete_adapter("default")
    assert not any("default" in path for path, _ in model.parameters_and_names())
    np.testing.assert_allclose(model(ids()).asnumpy(), second, atol=ATOL, rtol=0)


def test_projections_are_peft_s_shared_frozen_and_sliced():
    model = get_peft_model(base(), VeraConfig(r=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                                              projection_prng_key=3), seed=0)
    theirs = load_file(os.path.join(METHODS, "vera", "adapter_model.safetensors"))  # PEFT's draw for key 3
    layers = [cell for _, cell in model.cells_and_names() if isinstance(cell, VeraLinear)]
    assert len(layers) == 12
    first = layers[0]
    np.testing.assert_array_equal(first.vera_A["default"].weight.asnumpy(), theirs["base_model.vera_A"])  # [8, 128]
    np.testing.assert_array_equal(first.vera_B["default"].weight.asnumpy(), theirs["base_model.vera_B"])  # [128, 8]
    assert all(layer.vera_A["default"].weight is first.vera_A["default"].weight for layer in layers)
    trainable = {path for path, p in model.parameters_and_names() if p.requires_grad}
    assert not any("vera_A" in path or "vera_B" in path for path in trainable)
    assert model.get_nb_trainable_parameters()[0] == 3 * (64 + 32 + 128 + 64 + 4 * 8)  # lambda_b [out] + lambda_d [r]


def test_formula_identity_at_init_and_pet_config():
    model = get_peft_model(base(), VeraConfig(r=4, target_modules=["k_proj", "up_proj"], init_weights=False), seed=0)
    layer = model.base_model.model.layers[0].self_attn.k_proj  # [32, 64] of projections [128, 4] / [4, 64]
    f = {s: getattr(layer, s)["default"].weight.asnumpy().astype(np.float64)
         for s in ("vera_A", "vera_B", "vera_lambda_b", "vera_lambda_d")}
    assert f["vera_A"].shape == (4, 64) and f["vera_B"].shape == (128, 4)
    np.testing.assert_array_equal(f["vera_lambda_b"], 1.0)  # init_weights=False: ones and N(0, 1)
    delta = np.diag(f["vera_lambda_b"]) @ f["vera_B"][:32] @ np.diag(f["vera_lambda_d"]) @ f["vera_A"][:, :64]
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), x @ (layer.weight.asnumpy() + delta).T, atol=1e-5, rtol=1e-5)
    identity = get_peft_model(base(), VeraConfig(r=16, target_modules=["q_proj", "down_proj"]), seed=0)
    np.testing.assert_array_equal(identity(ids()).asnumpy(), base()(ids()).asnumpy())  # lambda_b starts at zero
    d = identity.base_model.model.layers[2].mlp.down_proj.vera_lambda_d["default"].weight.asnumpy()
    np.testing.assert_allclose(d, 0.1)  # d_initial
    from mindformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         pet_config={"pet_type": "vera", "vera_rank": 4})  # family default: q_proj, v_proj
    llama = LlamaForCausalLM.from_config(config, seed=0)
    assert isinstance(llama.model.layers[1].self_attn.v_proj, VeraLinear)
    assert llama._tuner.peft_config["default"].r == 4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"unknown pet_config key\(s\) \['vera_alpha'\] for VERA; valid: .*d_initial"):
        VeraConfig.from_pet_config({"pet_type": "vera", "vera_alpha": 2})
    with pytest.raises(ValueError, match="a LOHA config cannot be read as VeraConfig"):
        VeraConfig.from_pretrained(os.path.join(METHODS, "loha"))
    with pytest.raises(ValueError, match="a VERA config cannot be read as LoHaConfig"):
        from mindformers.tuners import LoHaConfig

        LoHaConfig.from_pretrained(os.path.join(METHODS, "vera"))
    with pytest.raises(ValueError, match="bias must be 'none', 'all' or 'vera_only', found 'lora_only'"):
        VeraConfig(bias="lora_only")
    model = get_peft_model(base(), VeraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="does not fit adapter 'other'.*wrong shape 5: .*base_model.vera_A: file "
                                         r"\(8, 128\) vs model \(4, 64\)"):
        model.load_adapter(os.path.join(METHODS, "vera"), "other", config=VeraConfig(r=4, target_modules=["q_proj"]))


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments

    config = VeraConfig(r=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], d_initial=1.0)
    model = get_peft_model(trainer_fixtures.tiny_llama(), config, seed=0)
    projection = model.base_model.model.layers[0].self_attn.q_proj.vera_A["default"].weight.asnumpy()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.1,
                             logging_steps=4, save_steps=8, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    print("vera eval loss", before, after)
    assert after < before - 0.05
    saved = load_file(str(tmp_path / "checkpoint-8" / "adapter_model.safetensors"))
    np.testing.assert_array_equal(saved["base_model.vera_A"], projection)  # frozen
    assert np.abs(saved["base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_b"]).max() > 0
