"""Every preset: its config loads through AutoConfig and through its own class's from_pretrained (and no
other class's), its size matches the published parameter count (arithmetic on the config, no model
built), and a tiny model of each family builds from the preset and from its LoRA run config and runs."""
import glob
import os

import numpy as np
import pytest

from mindformers import (
    AutoConfig,
    AutoModel,
    DeepseekV3Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PanguAlphaConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
    list_presets,
)
from mindformers.tuners.lora.layer import LoraLinear
from tests.conftest import ids_tensor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRESET_CLASSES = {
    "gpt2": GPT2Config, "gpt2_medium": GPT2Config, "gpt2_large": GPT2Config, "gpt2_xl": GPT2Config,
    "gpt2_13b": GPT2Config,
    "llama2_7b": LlamaConfig, "llama3_1_8b": LlamaConfig, "smollm2_135m_instruct": LlamaConfig,
    "qwen2_5_0_5b": Qwen2Config,
    "qwen3_0_6b": Qwen3Config,
    "qwen3_30b_a3b": Qwen3MoeConfig,
    "mistral_7b": MistralConfig,
    "mixtral_8x7b": MixtralConfig,
    "deepseek_v3": DeepseekV3Config,
    "pangualpha_2_6b": PanguAlphaConfig, "pangualpha_13b": PanguAlphaConfig,
}


# ---------------------------------------------------------------- parameter arithmetic
def _layer_norm(width: int) -> int:
    return 2 * width  # weight and bias


def _gpt2_block(h: int, inner: int) -> int:
    """Two LayerNorms, q/k/v + output projections and the MLP, all with biases."""
    return 2 * _layer_norm(h) + (h * 3 * h + 3 * h) + (h * h + h) + (h * inner + inner) + (inner * h + h)


def _attention(c) -> int:
    """Grouped-query attention (with Qwen's q/k biases and Qwen3's per-head q/k norms) or DeepSeek's
    multi-head latent attention."""
    h, heads = c.hidden_size, c.num_attention_heads
    if c.attention_class == "MultiLatentAttention":
        qk, q_rank, kv_rank = c.qk_nope_head_dim + c.qk_rope_head_dim, c.q_lora_rank, c.kv_lora_rank
        # q_proj, or q_a_proj + its RMSNorm + q_b_proj
        q = h * heads * qk if q_rank is None else h * q_rank + q_rank + q_rank * heads * qk
        # kv_a_proj_with_mqa (latent + shared rotary key), its RMSNorm, kv_b_proj (per-head nope key + value)
        kv = h * (kv_rank + c.qk_rope_head_dim) + kv_rank + kv_rank * heads * (c.qk_nope_head_dim + c.v_head_dim)
        return q + kv + heads * c.v_head_dim * h
    q, kv = heads * c.head_dim, c.num_key_value_heads * c.head_dim
    bias = (q + 2 * kv) * (c.attention_bias or c.qkv_bias) + h * c.attention_bias
    return h * q + 2 * h * kv + q * h + bias + 2 * c.head_dim * c.qk_norm


def _mlp(c, layer: int, active: bool) -> int:
    """A dense SwiGLU, or a sparse block: router (+ DeepSeek's correction bias), experts (all of them, or the
    top-k a token uses when ``active``) and shared experts."""
    h = c.hidden_size

    def gated(width: int) -> int:  # gate, up and down projections (+ their biases with mlp_bias)
        return 3 * h * width + (2 * width + h) * c.mlp_bias * (width > 0)

    if c.mlp_class(layer) == "GatedMLP":
        return gated(c.intermediate_size)
    spec = c.moe_spec()
    router = spec.num_experts * h + spec.num_experts * spec.correction_bias
    experts = (spec.top_k if active else spec.num_experts) * 3 * h * spec.intermediate_size  # bias-free
    return router + experts + gated(spec.shared_intermediate_size)


def decoder_layer_count(c, layer: int, active: bool = False) -> int:
    """One pre-RMSNorm decoder layer (models/common/decoder.py)."""
    return 2 * c.hidden_size + _attention(c) + _mlp(c, layer, active)


def parameter_count(c: PretrainedConfig, active: bool = False) -> int:
    """Scalar parameters of the model ``c`` describes, from the config alone (tied embeddings count once).

    Args:
        c: a config of any family.
        active: count only the experts one token is routed to (MoE "active parameters").
    """
    h, vocab = c.hidden_size, c.vocab_size
    if isinstance(c, GPT2Config):
        embeddings = (vocab + c.max_position_embeddings) * h
        head = 0 if c.tie_word_embeddings else vocab * h
        return embeddings + c.num_hidden_layers * _gpt2_block(h, c.intermediate_size) + _layer_norm(h) + head
    if isinstance(c, PanguAlphaConfig):
        # token, position and top-query embeddings; num_layers - 1 blocks + the top query layer, same shapes
        embeddings = (vocab + 2 * c.max_position_embeddings) * h
        return embeddings + c.num_hidden_layers * _gpt2_block(h, c.intermediate_size) + _layer_norm(h)
    layers = sum(decoder_layer_count(c, i, active) for i in range(c.num_hidden_layers))
    return vocab * h * (2 - c.tie_word_embeddings) + layers + h


def mtp_layer_count(c: DeepseekV3Config) -> int:
    """DeepSeek-V3's multi-token-prediction module as its checkpoint stores it: a decoder layer (sparse),
    the 2h -> h projection, three RMSNorms (enorm, hnorm, the head's norm) and its own embedding and head."""
    h = c.hidden_size
    return decoder_layer_count(c, c.num_hidden_layers) + 2 * h * h + 3 * h + 2 * c.vocab_size * h


# preset -> (published total parameters, where it is published, relative tolerance)
PUBLISHED = {
    "gpt2": (124_439_808, "Hugging Face openai-community/gpt2, num_parameters()", 0.0),
    "gpt2_medium": (354_823_168, "openai-community/gpt2-medium, num_parameters() ('355M')", 0.0),
    "gpt2_large": (774_030_080, "openai-community/gpt2-large, num_parameters() ('774M')", 0.0),
    "gpt2_xl": (1_557_611_200, "openai-community/gpt2-xl, num_parameters() ('1.5B')", 0.0),
    # only the name gives a size: 12.85B, 1.1% below the rounded 13B
    "gpt2_13b": (13e9, "MindFormers' model name gpt2_13b", 0.015),
    "pangualpha_2_6b": (2.6e9, "Zeng et al. 2021, table 1", 0.01),
    # 12.80B, 2.3% below the paper's 13.1B (the same arithmetic gives its 2.6B, and 206.8B for its 207.0B model)
    "pangualpha_13b": (13.1e9, "Zeng et al. 2021, table 1", 0.025),
    "qwen3_0_6b": (0.6e9, "Qwen3-0.6B model card", 0.01),
    "qwen3_30b_a3b": (30.5e9, "Qwen3-30B-A3B model card", 0.01),
    "mistral_7b": (7_241_732_096, "mistralai/Mistral-7B-v0.1, num_parameters() ('7.24B')", 0.0),
    "mixtral_8x7b": (46_702_792_704, "mistralai/Mixtral-8x7B-v0.1, num_parameters() ('46.7B')", 0.0),
    "deepseek_v3": (671e9, "DeepSeek-V3 report: 671B total, without the MTP module", 0.01),
    "llama2_7b": (6_738_415_616, "meta-llama/Llama-2-7b-hf, num_parameters()", 0.0),
    "llama3_1_8b": (8_030_261_248, "meta-llama/Llama-3.1-8B, num_parameters()", 0.0),
    "qwen2_5_0_5b": (494_032_768, "Qwen/Qwen2.5-0.5B, num_parameters()", 0.0),
    "smollm2_135m_instruct": (134_515_008, "HuggingFaceTB/SmolLM2-135M-Instruct, num_parameters()", 0.0),
}


def test_every_preset_is_listed():
    assert set(list_presets()) == set(PRESET_CLASSES) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PRESET_CLASSES))
def test_preset_loads_through_its_class_and_no_other(name):
    cls = PRESET_CLASSES[name]
    config = cls.from_pretrained(name)
    assert type(config) is cls and config == AutoConfig.from_pretrained(name)
    assert type(PretrainedConfig.from_pretrained(name)) is cls  # the base class takes any preset
    for other in set(PRESET_CLASSES.values()) - {cls}:
        with pytest.raises(TypeError, match=rf"'{name}' holds a {cls.__name__} \(model_type '{cls.model_type}'\), "
                                            rf"not a {other.__name__}"):
            other.from_pretrained(name)


def test_from_pretrained_sources_and_overrides(tmp_path):
    """Overrides in any spelling, as AutoConfig takes them; a directory, its config.json and a YAML read alike."""
    config = MixtralConfig.from_pretrained("mixtral_8x7b", num_layers=1, n_kv_heads=4, output_router_logits=True)
    assert (config.num_hidden_layers, config.num_key_value_heads, config.num_local_experts) == (1, 4, 8)
    assert config.aux_loss_settings() == (0.02, 8, 2)
    path = config.save_pretrained(str(tmp_path))
    assert MixtralConfig.from_pretrained(str(tmp_path)) == config == MixtralConfig.from_pretrained(path)
    yaml = os.path.join(REPO, "configs", "mixtral", "finetune_8x7b_lora.yaml")
    assert MixtralConfig.from_pretrained(yaml).pet_config["target_modules"] == ["q_proj", "v_proj"]
    # Qwen3Config derives from LlamaConfig, yet a Qwen3 preset is not a Llama config
    message = (r"'qwen3_0_6b' holds a Qwen3Config \(model_type 'qwen3'\), not a LlamaConfig \(model_type 'llama'\); "
               r"load it with Qwen3Config.from_pretrained\('qwen3_0_6b'\) or AutoConfig.from_pretrained\('qwen3_0_6b'\)")
    with pytest.raises(TypeError, match=message):
        LlamaConfig.from_pretrained("qwen3_0_6b")
    with pytest.raises(TypeError, match="holds a GPT2Config .* not a LlamaConfig"):
        LlamaConfig.from_pretrained("gpt2", num_layers=2)  # the class is checked before the overrides
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_layers'\] for GPT2Config"):
        GPT2Config.from_pretrained("gpt2_13b", n_layers=2)
    with pytest.raises(KeyError, match="'gpt2_14b' is neither a local path nor a known preset"):
        GPT2Config.from_pretrained("gpt2_14b")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_one(name):
    count = parameter_count(AutoConfig.from_pretrained(name))
    published, source, tolerance = PUBLISHED[name]
    assert _close(count, published, tolerance), f"{name}: {count:,} vs {published:,.0f} ({source})"


def test_sizes_beside_the_total():
    """Qwen3-0.6B without its (tied) embedding, the MoE models' active parameters (the experts a token is
    routed to), DeepSeek-V3 with its multi-token-prediction module, GPT-2 13B's exact size."""
    qwen3 = AutoConfig.from_pretrained("qwen3_0_6b")
    assert parameter_count(qwen3) == 596_049_920
    assert round((parameter_count(qwen3) - qwen3.vocab_size * qwen3.hidden_size) / 1e9, 2) == 0.44
    assert _close(parameter_count(AutoConfig.from_pretrained("qwen3_30b_a3b"), active=True), 3.3e9, 0.02)  # 3.35B
    assert _close(parameter_count(AutoConfig.from_pretrained("mixtral_8x7b"), active=True), 12.9e9, 0.01)
    deepseek = AutoConfig.from_pretrained("deepseek_v3")
    assert _close(parameter_count(deepseek, active=True), 37e9, 0.02)  # 37.55B; the report says 37B
    assert _close(parameter_count(deepseek) + mtp_layer_count(deepseek), 685e9, 0.01)  # 684.5B
    assert parameter_count(AutoConfig.from_pretrained("gpt2_13b")) == 12_853_386_240


def _close(count: int, published: float, tolerance: float) -> bool:
    return abs(count - published) <= tolerance * published


# ---------------------------------------------------------------- tiny models of each new family
# Overrides go through config.replace(), which keeps the values __post_init__ derived from the preset's
# size (head_dim 128, one layer_types entry per preset layer, DeepSeek's qk_head_dim), so a tiny size
# restates them: head_dim for the Llama-style families, None to re-derive the others.
TINY = {  # preset -> (overrides, its LoRA run config, modules adapted in every layer)
    "gpt2_medium": (dict(num_layers=2, hidden_size=32, num_heads=4, vocab_size=64, seq_length=64),
                    "gpt2/finetune_355m_lora.yaml", ["attn.c_attn", "attn.c_proj"]),
    "pangualpha_2_6b": (dict(num_layers=2, hidden_size=32, ffn_hidden_size=48, num_heads=4, vocab_size=64,
                             seq_length=64), "pangualpha/finetune_2_6b_lora.yaml",
                        ["attention.dense1", "attention.dense2", "attention.dense3", "attention.projection"]),
    "qwen3_0_6b": (dict(num_layers=2, hidden_size=32, intermediate_size=48, num_heads=4, n_kv_heads=2, head_dim=16,
                        layer_types=None, vocab_size=64), "qwen3/finetune_0_6b_lora.yaml",
                   ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
    "qwen3_30b_a3b": (dict(num_layers=2, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_heads=4,
                           n_kv_heads=2, head_dim=16, layer_types=None, num_experts=4, num_experts_per_tok=2,
                           vocab_size=64),
                      "qwen3_moe/finetune_30b_a3b_lora.yaml", ["self_attn.q_proj", "self_attn.v_proj"]),
    "mistral_7b": (dict(num_layers=2, hidden_size=32, intermediate_size=48, num_heads=4, n_kv_heads=2, head_dim=8,
                        vocab_size=64, sliding_window=4), "mistral/finetune_7b_lora.yaml",
                   ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
    "mixtral_8x7b": (dict(num_layers=2, hidden_size=32, intermediate_size=32, num_heads=4, n_kv_heads=2, head_dim=8,
                          vocab_size=64), "mixtral/finetune_8x7b_lora.yaml", ["self_attn.q_proj", "self_attn.v_proj"]),
    "deepseek_v3": (dict(num_layers=2, first_k_dense_replace=1, hidden_size=32, intermediate_size=48,
                         moe_intermediate_size=16, num_heads=4, n_kv_heads=4, n_routed_experts=8, n_group=2,
                         topk_group=1, num_experts_per_tok=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                         qk_rope_head_dim=4, v_head_dim=8, head_dim=None, qk_head_dim=None, vocab_size=64),
                    "deepseek_v3/finetune_671b_lora.yaml", ["self_attn.q_b_proj", "self_attn.kv_b_proj"]),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_preset_builds_runs_and_counts_as_computed(name):
    """A random model of the preset's family at a tiny size: its parameters are what parameter_count says,
    and at initialisation (std 0.02) it predicts nearly uniformly, so the loss is about ln(vocab_size)."""
    overrides = TINY[name][0]
    config = AutoConfig.from_pretrained(name, **overrides)
    model = AutoModel.from_config(config, seed=0)
    assert model.num_parameters() == parameter_count(config)
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 12))
    loss, logits = model(ids_tensor(ids), labels=ids_tensor(ids))[:2]
    assert logits.shape == (2, 12, 64)
    assert abs(float(loss.asnumpy()) - np.log(64)) < 0.05, float(loss.asnumpy())


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_lora_run_config_adapts_its_targets(name):
    """The LoRA run config's pet_config adapts the attention projections it names in every layer, and the
    adapters start at zero (the model's output is the base model's)."""
    overrides, run, per_layer = TINY[name]
    config = AutoConfig.from_pretrained(os.path.join(REPO, "configs", run), **overrides)
    model = AutoModel.from_config(config, seed=0)
    adapted = [n for n, cell in model.cells_and_names() if isinstance(cell, LoraLinear)]
    per_module = {module: sum(n.endswith("." + module) for n in adapted) for module in per_layer}
    assert per_module == dict.fromkeys(per_layer, config.num_hidden_layers), adapted
    assert len(adapted) == config.num_hidden_layers * len(per_layer), adapted
    base = AutoModel.from_config(config.replace(pet_config=None), seed=0)
    ids = ids_tensor(np.random.default_rng(1).integers(0, 64, size=(1, 8)))
    np.testing.assert_allclose(model(ids).asnumpy(), base(ids).asnumpy(), atol=1e-6)
