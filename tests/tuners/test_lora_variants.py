"""LoRA variants against Hugging Face PEFT 0.21 (tests/fixtures/peft, made by its make_reference.py):
rsLoRA, DoRA, rank/alpha patterns with exclusions and layer selection, bias="all" on GPT-2, LoRA on the
embedding, modules_to_save on a classifier, and weighted combinations (linear, cat, svd)."""
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindformers import AutoModel, LlamaForSequenceClassification
from mindformers.tuners import PeftModel, get_peft_model_state_dict
from tests.conftest import FIXTURES, INTEROP, ids_tensor

PEFT = os.path.join(FIXTURES, "peft")
ATOL = 1e-4


def load(case, family="llama", model=None):
    model = model or AutoModel.from_pretrained(os.path.join(INTEROP, family, "base"))
    return PeftModel.from_pretrained(model, os.path.join(PEFT, case)), np.load(os.path.join(PEFT, case, "reference.npz"))


def check_round_trip(peft_model, case, tmp_path):
    """What we save has PEFT's keys and values, and reloads to the same model."""
    peft_model.save_pretrained(str(tmp_path))
    ours, theirs = load_file(str(tmp_path / "adapter_model.safetensors")), load_file(os.path.join(PEFT, case, "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case, family, merged_keys", [
    ("rslora", "llama", ["model.layers.0.self_attn.q_proj.weight"]),
    ("dora", "llama", ["model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight"]),
    ("patterns", "llama", ["model.layers.2.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                           "model.layers.0.self_attn.o_proj.weight"]),
    ("bias_all", "gpt2", ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias", "transformer.ln_f.bias"]),
    ("embedding", "llama", ["model.embed_tokens.weight"]),
])
def test_variant_equals_peft(case, family, merged_keys, tmp_path):
    model, ref = load(case, family)
    ids = ids_tensor(ref["input_ids"])
    np.testing.assert_allclose(model(ids).asnumpy(), ref["logits"], atol=ATOL, rtol=0)
    check_round_trip(model, case, tmp_path)
    plain = model.merge_and_unload()
    np.testing.assert_allclose(plain(ids).asnumpy(), ref["logits_merged"], atol=ATOL, rtol=0)
    weights = dict(plain.parameters_and_names())
    for key in merged_keys:
        np.testing.assert_allclose(weights[key].asnumpy(), ref[f"merged.{key}"], atol=1e-5, rtol=0)


def test_pattern_ranks_alphas_and_selection():
    model, _ = load("patterns")
    layers = {n: c for n, c in model.tuner_layers().items()}
    assert not any(".layers.1." in n or "up_proj" in n for n in layers) and len(layers) == 12
    assert layers["model.layers.2.self_attn.q_proj"].r["default"] == 8
    assert layers["model.layers.0.mlp.down_proj"].r["default"] == 2
    assert layers["model.layers.0.mlp.down_proj"].scaling["default"] == 4.0
    assert layers["model.layers.0.self_attn.o_proj"].scaling["default"] == 4.0
    assert layers["model.layers.0.self_attn.k_proj"].scaling["default"] == 2.0


def test_modules_to_save_on_a_classifier(tmp_path):
    ref = np.load(os.path.join(PEFT, "modules_to_save", "reference.npz"))
    base = LlamaForSequenceClassification.from_pretrained(os.path.join(INTEROP, "llama", "base"), num_labels=3,
                                                          pad_token_id=0)
    base.score.weight.set_data(type(base.score.weight)(ref["base.score.weight"]))
    model = PeftModel.from_pretrained(base, os.path.join(PEFT, "modules_to_save"))
    ids = ids_tensor(ref["input_ids"])
    np.testing.assert_allclose(model(ids).asnumpy(), ref["logits"], atol=ATOL, rtol=0)
    assert "base_model.model.score.weight" in get_peft_model_state_dict(model)
    with model.disable_adapter():  # the original head is untouched
        assert np.abs(model(ids).asnumpy() - ref["logits"]).max() > 1e-3
    check_round_trip(model, "modules_to_save", tmp_path)
    plain = model.merge_and_unload()
    np.testing.assert_allclose(plain.score.weight.asnumpy(), ref["merged.score.weight"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(plain(ids).asnumpy(), ref["logits_merged"], atol=ATOL, rtol=0)


def test_weighted_adapters_equal_peft():
    ref = np.load(os.path.join(PEFT, "weighted", "reference.npz"))
    ids = ids_tensor(ref["input_ids"])
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base")),
                                      os.path.join(INTEROP, "llama", "adapters", "adapter1"), adapter_name="adapter1")
    model.load_adapter(os.path.join(INTEROP, "llama", "adapters", "adapter2"), "adapter2")
    model.load_adapter(os.path.join(PEFT, "weighted", "adapter3"), "adapter3")
    model.add_weighted_adapter(["adapter1", "adapter3"], [0.7, 0.3], "weighted_linear", combination_type="linear")
    model.add_weighted_adapter(["adapter1", "adapter2"], [0.7, 0.3], "weighted_svd", combination_type="svd", svd_rank=6)
    model.add_weighted_adapter(["adapter1", "adapter2"], [0.7, 0.3], "weighted_cat", combination_type="cat")
    for name, logits in [("adapter3", "logits_adapter3"), ("weighted_linear", "logits_weighted_linear"),
                         ("weighted_svd", "logits_weighted_svd"),
                         ("weighted_cat", os.path.join(INTEROP, "llama", "logits_weighted_cat_0.7a1_0.3a2.npy"))]:
        model.set_adapter(name)
        expected = np.load(logits) if logits.endswith(".npy") else ref[logits]
        np.testing.assert_allclose(model(ids).asnumpy(), expected, atol=ATOL, rtol=0)
    layer = model.tuner_layers()["model.layers.0.self_attn.q_proj"]
    ba = layer.lora_B["weighted_svd"].weight.asnumpy() @ layer.lora_A["weighted_svd"].weight.asnumpy()
    np.testing.assert_allclose(ba, ref["svd.model.layers.0.self_attn.q_proj.delta_BA"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"needs adapters of equal rank, found ranks \[4, 8\]"):
        model.add_weighted_adapter(["adapter1", "adapter2"], [0.5, 0.5], "bad", combination_type="linear")


@pytest.mark.parametrize("init, a_std", [(True, 1 / np.sqrt(64) / np.sqrt(3)), ("gaussian", 1 / 4)])
def test_initialisation_matches_peft_distributions(init, a_std):
    """PEFT: B starts at zero; A is U(-1/sqrt(in), 1/sqrt(in)) by default and N(0, 1/r) for "gaussian"
    (tests/fixtures/peft/init_gaussian_and_default/init_stats.json); embeddings: A zero, B N(0, 1)."""
    from mindformers.tuners import LoraConfig, get_peft_model

    model = get_peft_model(AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base")),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "embed_tokens"], init_lora_weights=init), seed=0)
    params = dict(model.base_model.parameters_and_names())
    a = np.concatenate([p.asnumpy().ravel() for n, p in params.items() if ".lora_A." in n])
    assert all(not p.asnumpy().any() for n, p in params.items() if ".lora_B." in n)
    assert abs(a.std() - a_std) < 0.1 * a_std
    if init is True:
        assert np.abs(a).max() <= 1 / 8
    assert not params["model.embed_tokens.lora_embedding_A.default.weight"].asnumpy().any()
    assert abs(params["model.embed_tokens.lora_embedding_B.default.weight"].asnumpy().std() - 1) < 0.15


def test_dropout_applies_in_training_mode_only():
    from mindformers.tuners import LoraConfig, get_peft_model

    model = get_peft_model(AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base")),
                           LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.5, init_lora_weights=False), seed=0)
    ids = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
    evaluated = [model(ids).asnumpy() for _ in range(2)]
    np.testing.assert_array_equal(evaluated[0], evaluated[1])
    model.set_train(True)
    trained = [model(ids).asnumpy() for _ in range(2)]
    model.set_train(False)
    assert np.abs(trained[0] - trained[1]).max() > 1e-3 and np.abs(trained[0] - evaluated[0]).max() > 1e-3
