"""Saving and loading Hugging Face layouts and GGUF files; every kind of bad checkpoint fails clearly."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mindformers import AutoConfig, AutoModel, CheckpointMismatchError, GPT2LMHeadModel, LlamaForCausalLM
from mindformers.checkpoint import load_gguf, load_state_dict
from tests.conftest import HF_MODELS, INTEROP, ids_tensor

LLAMA = os.path.join(INTEROP, "llama", "base")
GPT2 = os.path.join(INTEROP, "gpt2", "base")


def _logits(model, family="llama"):
    return model(ids_tensor(np.load(os.path.join(INTEROP, family, "input_ids.npy")))).asnumpy()


@pytest.mark.parametrize("source, family", [(LLAMA, "llama"), (GPT2, "gpt2"), (os.path.join(HF_MODELS, "qwen2"), None)])
def test_save_load_round_trip_same_names_and_logits(tmp_path, source, family):
    model = AutoModel.from_pretrained(source)
    model.save_pretrained(str(tmp_path))
    # the files carry exactly Hugging Face's tensor names, shapes and the {"format": "pt"} tag
    ours, theirs = load_file(str(tmp_path / "model.safetensors")), load_file(os.path.join(source, "model.safetensors"))
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    # config.json carries the fields transformers reads, with its names
    saved = json.loads((tmp_path / "config.json").read_text())
    reference = json.loads(open(os.path.join(source, "config.json")).read())
    for key in ("model_type", "architectures", "vocab_size", "tie_word_embeddings", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size", "rms_norm_eps",
                "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon", "activation_function",
                "rope_parameters", "bos_token_id", "eos_token_id"):
        if key in reference:
            assert saved.get(key) == reference[key], key  # None: left out, transformers applies its default
    reloaded = AutoModel.from_pretrained(str(tmp_path))
    ids = ids_tensor(np.arange(3, 19).reshape(2, 8))
    np.testing.assert_array_equal(reloaded(ids).asnumpy(), model(ids).asnumpy())


def test_sharded_save_writes_index_and_loads(tmp_path):
    model = LlamaForCausalLM.from_pretrained(LLAMA)
    model.save_pretrained(str(tmp_path), max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(load_file(os.path.join(LLAMA, "model.safetensors")))
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in model.state_dict().values())
    assert not (tmp_path / "model.safetensors").exists()
    np.testing.assert_array_equal(_logits(AutoModel.from_pretrained(str(tmp_path))), _logits(model))
    # saving again unsharded replaces the shards and the index
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]


def test_save_leaves_no_temporary_files_and_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch):
    model = LlamaForCausalLM.from_pretrained(LLAMA)
    model.save_pretrained(str(tmp_path))
    before = (tmp_path / "model.safetensors").read_bytes()

    import mindformers.checkpoint.safetensors_dir as io

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]


def test_missing_weight_file(tmp_path):
    shutil.copy(os.path.join(LLAMA, "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"expected model.safetensors or model.safetensors.index.json; found \['config.json'\]"):
        AutoModel.from_pretrained(str(tmp_path))


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    state = load_file(os.path.join(LLAMA, "model.safetensors"))
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.9.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(LLAMA, "config.json"), tmp_path / "config.json")
    with pytest.raises(CheckpointMismatchError) as err:
        AutoModel.from_pretrained(str(tmp_path))
    message = str(err.value)
    assert "missing 1 tensor(s): model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected 1 tensor(s): model.layers.9.extra.weight" in message


def test_shape_mismatch_is_listed(tmp_path):
    shutil.copy(os.path.join(LLAMA, "model.safetensors"), tmp_path / "model.safetensors")
    config = json.load(open(os.path.join(LLAMA, "config.json")))
    config["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape for 9 tensor\(s\): model.layers.0.mlp.down_proj.weight: checkpoint \(64, 128\) vs model \(64, 96\)"):
        AutoModel.from_pretrained(str(tmp_path))


def test_adapter_for_other_model_family_is_refused():
    with pytest.raises(TypeError, match="needs a GPT2Config"):
        GPT2LMHeadModel.from_pretrained(LLAMA)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path, damage):
    shutil.copy(os.path.join(LLAMA, "config.json"), tmp_path / "config.json")
    data = open(os.path.join(LLAMA, "model.safetensors"), "rb").read()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        AutoModel.from_pretrained(str(tmp_path))


def test_missing_shard_named(tmp_path):
    LlamaForCausalLM.from_pretrained(LLAMA).save_pretrained(str(tmp_path), max_shard_size="200KB")
    victim = sorted(f for f in os.listdir(tmp_path) if f.startswith("model-"))[1]
    os.remove(tmp_path / victim)
    with pytest.raises(FileNotFoundError, match=f"lists the shard {victim}"):
        load_state_dict(str(tmp_path))


def test_unsupported_architecture_and_model_type(tmp_path):
    config = json.load(open(os.path.join(LLAMA, "config.json")))
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'mamba'; supported: \[.*'gpt2', 'llama', .*'qwen2'.*\]"):
        AutoConfig.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForMultipleChoice"]}))
    with pytest.raises(ValueError, match="unsupported architecture 'LlamaForMultipleChoice'; supported: .*LlamaForCausalLM"):
        AutoConfig.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        AutoConfig.from_pretrained(str(tmp_path))


def test_unknown_config_key_is_named_with_valid_keys(tmp_path):
    config = json.load(open(os.path.join(LLAMA, "config.json")))
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_expert": 8}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_expert'\] for LlamaConfig .*valid keys: .*num_hidden_layers"):
        AutoConfig.from_pretrained(str(tmp_path))


def test_gguf_round_trip_through_safetensors(tmp_path, smollm2):
    """The GGUF loader undoes llama.cpp's q/k permutation: the attention of the reloaded copy matches."""
    smollm2.save_pretrained(str(tmp_path), max_shard_size="200MB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    reloaded = AutoModel.from_pretrained(str(tmp_path))
    ids = ids_tensor([[1, 504, 3575, 282, 4649, 314]])
    np.testing.assert_array_equal(reloaded(ids).asnumpy(), smollm2(ids).asnumpy())


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(ValueError, match="not a valid GGUF file"):
        load_gguf(str(path))

