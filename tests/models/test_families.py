"""Qwen3, Mistral (sliding window), Mixtral, Qwen3-MoE and DeepSeek-V3 equal Hugging Face transformers 5.23.

References: tests/fixtures/families/make_reference.py (tiny random models saved by transformers, their
logits, losses, load-balancing losses and greedy generations).
"""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mindformers import (
    AutoConfig,
    AutoModel,
    CheckpointMismatchError,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from tests.conftest import FIXTURES, ids_tensor

FAMILIES = os.path.join(FIXTURES, "families")
ATOL = 1e-4
CLASSES = {
    "qwen3": Qwen3ForCausalLM,
    "qwen3_window": Qwen3ForCausalLM,  # full attention in layer 0, a 5-token window in layers 1-2
    "mistral": MistralForCausalLM,
    "mixtral": MixtralForCausalLM,
    "qwen3_moe": Qwen3MoeForCausalLM,
    "deepseek_v3": DeepseekV3ForCausalLM,
    "deepseek_v3_plain_q": DeepseekV3ForCausalLM,
}
WITH_AUX = ("mixtral", "qwen3_moe")  # families whose transformers reference includes the load-balancing loss
LARGEST_DIFFERENCE = {}  # family -> largest |logit difference| seen (printed at the end of the module)


def load(name, **overrides):
    if name in WITH_AUX:
        overrides.setdefault("output_router_logits", True)
    return AutoModel.from_pretrained(os.path.join(FAMILIES, name), **overrides)


def reference(name):
    return np.load(os.path.join(FAMILIES, name, "reference.npz"))


@pytest.fixture(scope="module", params=list(CLASSES))
def family(request):
    name = request.param
    return name, load(name), reference(name)


def test_logits_and_loss_equal_transformers(family):
    name, model, ref = family
    assert type(model) is CLASSES[name]
    out = model(ids_tensor(ref["input_ids"]), labels=ids_tensor(ref["input_ids"]))
    diff = np.abs(out[1].asnumpy() - ref["logits"]).max()
    LARGEST_DIFFERENCE[name] = max(diff, LARGEST_DIFFERENCE.get(name, 0.0))
    assert diff < ATOL, f"{name}: largest logit difference {diff}"
    assert abs(float(out[0].asnumpy()) - float(ref["loss"])) < 1e-5
    if name in WITH_AUX:
        assert len(out) == 3 and abs(float(out[2].asnumpy()) - float(ref["aux_loss"])) < 1e-5
        assert float(ref["aux_loss"]) > 0.5  # the aux term is a real part of the reference loss


def test_padding_mask_and_ignored_labels_equal_transformers(family):
    """Row 1 is right-padded: the padded positions are masked from attention, their labels are -100 and
    the load-balancing loss leaves them out."""
    name, model, ref = family
    mask = ref["masked_attention_mask"]
    out = model(ids_tensor(ref["masked_input_ids"]), ids_tensor(mask), labels=ids_tensor(ref["masked_labels"]))
    real = mask.astype(bool)
    diff = np.abs(out[1].asnumpy()[real] - ref["masked_logits"][real]).max()
    LARGEST_DIFFERENCE[name] = max(diff, LARGEST_DIFFERENCE.get(name, 0.0))
    assert diff < ATOL
    assert abs(float(out[0].asnumpy()) - float(ref["masked_loss"])) < 1e-5
    if name in WITH_AUX:
        assert abs(float(out[2].asnumpy()) - float(ref["masked_aux_loss"])) < 1e-5
        assert abs(float(ref["masked_aux_loss"]) - float(ref["aux_loss"])) > 1e-3  # the mask matters


def test_greedy_ids_equal_transformers_with_and_without_cache(family):
    """Both rows in one batch with the KV cache (compiled), and row 0 alone without it (eager: nothing to
    compile); the next test's batch reuses these graphs."""
    name, model, ref = family
    prompts = [list(ref["input_ids"][r, :12]) for r in range(2)]
    cached = model.generate(prompts, max_new_tokens=10, eos_token_id=[])
    uncached = model.generate(prompts[:1], max_new_tokens=10, eos_token_id=[], use_cache=False)
    for r in range(2):
        np.testing.assert_array_equal(cached[r], ref["greedy"][r], err_msg=f"{name} row {r} with the cache")
    np.testing.assert_array_equal(uncached[0], ref["greedy"][0], err_msg=f"{name} row 0 without the cache")


def test_left_padded_batch_equals_single_rows(family):
    name, model, ref = family
    short = list(ref["input_ids"][1, :7])
    batch = model.generate([list(ref["input_ids"][0, :12]), short], max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    np.testing.assert_array_equal(batch[0], ref["greedy"][0])
    alone = model.generate([short], max_new_tokens=10, eos_token_id=[], use_cache=False)
    np.testing.assert_array_equal(batch[1, 5:], alone[0])
    assert (batch[1, :5] == 0).all()


@pytest.mark.parametrize("name, no_window", [("mistral", dict(sliding_window=None)),
                                             ("qwen3_window", dict(use_sliding_window=False))])
def test_sliding_window_changes_prefill_and_decode(name, no_window):
    """The windows (Mistral 6, Qwen3 5 on its upper layers) are shorter than the 20-token inputs and the
    22-token generations; without them the logits and greedy ids differ, so the matches above exercise them."""
    ref = reference(name)
    full = load(name, **no_window)
    assert full.config.attention_window() is None
    assert np.abs(full(ids_tensor(ref["input_ids"])).asnumpy() - ref["logits"]).max() > 1e-2
    prompt = [list(ref["input_ids"][0, :12])]
    assert (full.generate(prompt, max_new_tokens=10, eos_token_id=[])[0] != ref["greedy"][0]).any()


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_fused_expert_checkpoints_of_transformers_5_load(name):
    """transformers 5's own layout (3-D experts.gate_up_proj / down_proj) gives the same model."""
    model = AutoModel.from_pretrained(os.path.join(FAMILIES, name + "_fused"))
    ref = reference(name)
    np.testing.assert_allclose(model(ids_tensor(ref["input_ids"])).asnumpy(), ref["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["mixtral", "qwen3_moe", "deepseek_v3", "qwen3", "mistral"])
def test_saved_like_transformers_saves(name, tmp_path):
    """save_pretrained writes the tensors transformers writes (experts one by one, Mixtral's
    block_sparse_moe/w1/w2/w3 names) and a config.json that reads back to the same config."""
    model = load(name)
    model.save_pretrained(str(tmp_path))
    ours = load_file(str(tmp_path / "model.safetensors"))
    theirs = load_file(os.path.join(FAMILIES, name, "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    saved = json.loads((tmp_path / "config.json").read_text())
    hf = json.load(open(os.path.join(FAMILIES, name, "config.json")))
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads"):
        assert saved[key] == hf[key]
    assert AutoConfig.from_pretrained(str(tmp_path)) == model.config


def test_mla_cache_holds_the_latents():
    model = load("deepseek_v3")
    # 3 layers; one "head" of kv_lora_rank (12) latents and one of qk_rope_head_dim (8) rotary keys
    assert model.kv_cache_spec() == (3, 1, 12, 8)
    assert load("qwen3").kv_cache_spec() == (3, 2, 16, 16)


def test_missing_expert_tensor_is_named(tmp_path):
    directory = tmp_path / "mixtral"
    shutil.copytree(os.path.join(FAMILIES, "mixtral"), directory)
    state = load_file(str(directory / "model.safetensors"))
    del state["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"model\.layers\.1\.mlp.* lacks 1 expert tensor\(s\): "
                                                      r"model\.layers\.1\.mlp\.experts\.2\.w3\.weight"):
        AutoModel.from_pretrained(str(directory))


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match=r"num_experts_per_tok \(5\) must be between 1 and num_local_experts \(4\)"):
        MixtralConfig(num_local_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match=r"num_experts_per_tok \(9\) must be between 1 and num_experts \(8\)"):
        Qwen3MoeConfig(num_experts=8, num_experts_per_tok=9)
    for window in (0, -4):
        with pytest.raises(ValueError, match="sliding_window must be a positive number of tokens"):
            MistralConfig(sliding_window=window)
    with pytest.raises(ValueError, match="sliding_window must be an integer or null, found float 2.5"):
        MistralConfig(sliding_window=2.5)
    with pytest.raises(ValueError, match="sliding_window must be a positive"):
        Qwen3Config(use_sliding_window=True, sliding_window=0)
    small = dict(hidden_size=32, num_heads=4, num_layers=2, n_routed_experts=8, n_group=4, topk_group=2,
                 num_experts_per_tok=2)
    with pytest.raises(ValueError, match=r"qk_rope_head_dim \(7\) must be even"):
        DeepseekV3Config(qk_rope_head_dim=7, **small)
    with pytest.raises(ValueError, match=r"head_dim \(16\) is the rotary head and must equal qk_rope_head_dim \(8\)"):
        DeepseekV3Config(qk_rope_head_dim=8, head_dim=16, **small)
    with pytest.raises(ValueError, match="kv_lora_rank must be a positive integer, found 0"):
        DeepseekV3Config(kv_lora_rank=0, **small)
    with pytest.raises(ValueError, match="q_lora_rank must be a positive integer or null"):
        DeepseekV3Config(q_lora_rank=0, **small)
    with pytest.raises(ValueError, match=r"qk_head_dim \(20\) must equal qk_nope_head_dim \+ qk_rope_head_dim \(16\)"):
        DeepseekV3Config(qk_nope_head_dim=8, qk_rope_head_dim=8, qk_head_dim=20, **small)
    with pytest.raises(ValueError, match=r"n_group \(3\) must divide n_routed_experts \(8\)"):
        DeepseekV3Config(**{**small, "n_group": 3})
    with pytest.raises(ValueError, match="scoring_func='softmax' is not supported"):
        DeepseekV3Config(scoring_func="softmax", **small)


def test_moe_layer_choice_follows_transformers():
    config = Qwen3MoeConfig(num_layers=6, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
                            mlp_only_layers=[3])
    assert [config.mlp_class(i) for i in range(6)] == ["GatedMLP", "SparseMoeBlock", "GatedMLP", "GatedMLP",
                                                       "GatedMLP", "SparseMoeBlock"]
    deepseek = DeepseekV3Config(num_layers=4, first_k_dense_replace=2, hidden_size=32, num_heads=4,
                                n_routed_experts=4, n_group=2, topk_group=1, num_experts_per_tok=2)
    assert [deepseek.mlp_class(i) for i in range(4)] == ["GatedMLP", "GatedMLP", "SparseMoeBlock", "SparseMoeBlock"]


def test_head_dim_equal_to_hidden_over_heads_survives_a_round_trip(tmp_path):
    # Qwen3's head_dim defaults to 128: a given 16 that happens to equal hidden / heads stays 16 after
    # save_pretrained -> from_pretrained and replace() (it was once taken for a derived value and lost)
    from mindformers import LlamaConfig

    config = Qwen3MoeConfig(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=16)
    config.save_pretrained(str(tmp_path))
    assert AutoConfig.from_pretrained(str(tmp_path)).head_dim == 16
    assert config.replace(num_hidden_layers=2).head_dim == 16
    assert LlamaConfig(hidden_size=64, num_attention_heads=4).replace(hidden_size=128).head_dim == 32


def test_zz_report_largest_differences(capsys):
    """Prints the largest logit difference per family (README's family table quotes these)."""
    with capsys.disabled():
        print("\nlargest |logit difference| vs transformers:",
              {k: float(f"{v:.1e}") for k, v in sorted(LARGEST_DIFFERENCE.items())})


def test_router_logits_give_the_aux_loss():
    """model.router_logits (the public expert-load statistics) are the logits the aux loss is made of."""
    from mindformers.models.common.moe import load_balancing_loss

    model, ref = load("qwen3_moe"), reference("qwen3_moe")
    logits = model.router_logits(ids_tensor(ref["input_ids"]))
    assert len(logits) == 2 and logits[0].shape == (40, 8)  # layers 0 and 2 are sparse, layer 1 dense
    aux = load_balancing_loss(logits, 8, 2)
    assert abs(float(aux.asnumpy()) - float(ref["aux_loss"])) < 1e-5
    assert load("qwen3").router_logits(ids_tensor(ref["input_ids"])) == ()
