"""LoKr (mindformers/tuners/lokr/): PEFT 0.21's adapter (tests/fixtures/peft_methods, full and factorised
Kronecker factors) gives PEFT's logits unmerged and merged, our file equals PEFT's, PEFT's factorisation rule,
the formula against numpy, identity at init both ways, bad input named, and a short fine-tune."""
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from mindformers import AutoModel
from mindformers.tuners import LoKrConfig, LoKrLinear, PeftModel, get_peft_model
from mindformers.tuners.lokr.layer import factorization
from tests.conftest import FIXTURES, INTEROP, ids_tensor
from tests.trainer.conftest import chats, small_chats, tok  # noqa: F401  (fixtures)

ATOL = 1e-4
IDS = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
PEFT_DIR = os.path.join(FIXTURES, "peft_methods", "lokr")


def base():
    return AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))


def test_peft_adapter_gives_peft_logits_merged_and_saved_alike(tmp_path):
    reference = np.load(os.path.join(PEFT_DIR, "peft_logits.npz"))
    model = PeftModel.from_pretrained(base(), PEFT_DIR)
    v, q = model.base_model.model.layers[0].self_attn.v_proj, model.base_model.model.layers[0].self_attn.q_proj
    assert isinstance(v, LoKrLinear) and v.factored["default"] == (True, True) and q.factored["default"] == (False, False)
    np.testing.assert_allclose(model(IDS).asnumpy(), reference["logits"], atol=ATOL, rtol=0)
    model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT_DIR, "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    np.testing.assert_allclose(model.merge_and_unload()(IDS).asnumpy(), reference["merged"], atol=ATOL, rtol=0)


def test_factorisation_formula_and_identity_at_init():
    assert [factorization(n) for n in (256, 128, 127, 64, 32)] == [(16, 16), (8, 16), (1, 127), (8, 8), (4, 8)]
    assert factorization(128, 4) == (4, 32)
    model = get_peft_model(base(), LoKrConfig(r=2, alpha=4, target_modules=["down_proj"], init_weights=False,
                                              decompose_both=True), seed=0)
    layer = model.base_model.model.layers[2].mlp.down_proj  # [64, 128] = kron([8, 8], [8, 16]), both factorised
    f = {s: getattr(layer, s)["default"].weight.asnumpy() for s in ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")}
    delta = np.kron(f["lokr_w1_a"] @ f["lokr_w1_b"], f["lokr_w2_a"] @ f["lokr_w2_b"]) * 2.0
    x = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), x @ (layer.weight.asnumpy() + delta).T, atol=1e-4, rtol=1e-4)
    for init in (True, "lycoris"):
        identity = get_peft_model(base(), LoKrConfig(target_modules=["q_proj"], init_weights=init), seed=0)
        np.testing.assert_array_equal(identity(IDS).asnumpy(), base()(IDS).asnumpy())
    with pytest.raises(ValueError, match="init_weights must be True, False or 'lycoris'"):
        LoKrConfig(init_weights="gaussian")


def test_fine_tune_through_the_trainer_lowers_held_out_loss(tmp_path, small_chats, tok):
    from mindformers import Trainer, TrainingArguments
    from tests.trainer.conftest import tiny_llama

    model = get_peft_model(tiny_llama(), LoKrConfig(r=4, alpha=8), seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, batch_size=4, seq_length=64, learning_rate=0.1,
                             logging_steps=4, save_steps=0, disable_tqdm=True, report_to=[])
    trainer = Trainer(model=model, tokenizer=tok, args=args, train_dataset=small_chats[0], eval_dataset=small_chats[1])
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.02
