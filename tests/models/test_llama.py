"""Llama family: logits and losses equal Hugging Face transformers' on the same weights."""
import json
import os
import shutil

import numpy as np
import mindspore as ms
import pytest

from mindformers import (
    AutoConfig,
    AutoModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    Qwen2ForCausalLM,
)
from tests.conftest import FIXTURES, HF_MODELS, INTEROP, ids_tensor

ATOL = 1e-4


def test_interop_llama_gqa_logits_equal_transformers():
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
    logits = model(ids_tensor(ids)).asnumpy()
    np.testing.assert_allclose(logits, np.load(os.path.join(INTEROP, "llama", "logits_base.npy")), atol=ATOL, rtol=0)


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
    ref = np.load(os.path.join(INTEROP, "llama", "logits_base.npy")).astype(np.float64)
    labels = ids.copy()
    labels[0, 5:9] = -100
    loss, _ = model(ids_tensor(ids), labels=ids_tensor(labels))
    # numpy: position t predicts label t+1, ignored labels excluded from the mean
    logp = ref[:, :-1] - np.log(np.exp(ref[:, :-1]).sum(-1, keepdims=True))
    target = labels[:, 1:]
    keep = target != -100
    expected = -logp[keep, target[keep]].mean()
    assert abs(float(loss.asnumpy()) - expected) < 1e-5


@pytest.mark.parametrize("name, cls", [("llama3_rope", LlamaForCausalLM), ("qwen2", Qwen2ForCausalLM)])
def test_variants_equal_transformers(name, cls):
    """llama3 rope scaling + attention bias + untied head; Qwen2 q/k/v biases + tied head."""
    directory = os.path.join(HF_MODELS, name)
    ref = np.load(os.path.join(directory, "reference.npz"))
    model = AutoModel.from_pretrained(directory)
    assert type(model) is cls
    loss, logits = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]), labels=ids_tensor(ref["input_ids"]))
    np.testing.assert_allclose(logits.asnumpy(), ref["logits"], atol=ATOL, rtol=0)
    assert abs(float(loss.asnumpy()) - float(ref["loss"])) < 1e-5


def test_llama3_rope_scaling_changes_logits():
    directory = os.path.join(HF_MODELS, "llama3_rope")
    ref = np.load(os.path.join(directory, "reference.npz"))
    plain = AutoModel.from_pretrained(directory, rope_scaling=None)
    logits = plain(ids_tensor(ref["input_ids"])).asnumpy()
    assert np.abs(logits - ref["logits"]).max() > 1e-2  # the scaling is not a no-op on this input


def test_sequence_classification_equals_transformers():
    directory = os.path.join(HF_MODELS, "llama_seqcls")
    ref = np.load(os.path.join(directory, "reference.npz"))
    model = AutoModel.from_pretrained(directory)
    assert isinstance(model, LlamaForSequenceClassification)
    loss, logits = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]), labels=ids_tensor(ref["labels"]))
    np.testing.assert_allclose(logits.asnumpy(), ref["logits"], atol=ATOL, rtol=0)
    assert abs(float(loss.asnumpy()) - float(ref["loss"])) < 1e-5


def test_classifier_from_causal_checkpoint_initialises_score_head():
    model = LlamaForSequenceClassification.from_pretrained(os.path.join(INTEROP, "llama", "base"), num_labels=4)
    assert model.score.weight.shape == (4, 64)
    assert np.abs(model.score.weight.asnumpy()).sum() > 0
    base = LlamaForCausalLM.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    np.testing.assert_array_equal(model.model.norm.weight.asnumpy(), base.model.norm.weight.asnumpy())


def test_left_padded_row_equals_unpadded_row():
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"))
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))[:1, :10]
    alone = model(ids_tensor(ids)).asnumpy()
    padded = np.concatenate([np.zeros((1, 3), ids.dtype), ids], 1)
    mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 10))], 1)
    out = model(ids_tensor(padded), ids_tensor(mask)).asnumpy()
    np.testing.assert_allclose(out[:, 3:], alone, atol=ATOL, rtol=0)


def test_smollm2_real_weights_equal_transformers(smollm2):
    """Float32 logits of SmolLM2-135M from the GGUF package vs transformers on the same file
    (reference made by tests/fixtures/smollm2/make_reference.py)."""
    ref = np.load(os.path.join(FIXTURES, "smollm2", "reference.npz"))
    logits = smollm2(ids_tensor(ref["input_ids"])).asnumpy()[0]
    np.testing.assert_allclose(logits[-1], ref["last_logits"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits[:, ref["columns"]], ref["logits_columns"], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(np.argsort(-logits, -1)[:, :5], ref["top5"])


def test_config_accepts_mindformers_and_hf_names_and_saves_hf(tmp_path):
    a = LlamaConfig(num_layers=3, num_heads=8, n_kv_heads=2, seq_length=512, hidden_size=64, theta=5e5)
    b = LlamaConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                    max_position_embeddings=512, hidden_size=64, rope_theta=5e5)
    assert a == b and a.head_dim == 8
    a.save_pretrained(str(tmp_path), architecture="LlamaForCausalLM")
    saved = json.loads((tmp_path / "config.json").read_text())
    for key, value in {"num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
                       "max_position_embeddings": 512, "rope_theta": 5e5, "model_type": "llama",
                       "architectures": ["LlamaForCausalLM"]}.items():
        assert saved[key] == value
    assert saved["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "default"}
    assert AutoConfig.from_pretrained(str(tmp_path)) == a


def test_transformers_v4_and_v5_config_json_give_the_same_model(tmp_path):
    v5_dir = os.path.join(INTEROP, "llama", "base")
    v5 = json.load(open(os.path.join(v5_dir, "config.json")))
    assert "rope_parameters" in v5 and "dtype" in v5
    v4 = dict(v5)
    v4["rope_theta"] = v4.pop("rope_parameters")["rope_theta"]
    v4["torch_dtype"] = v4.pop("dtype")
    v4["transformers_version"] = "4.44.0"
    shutil.copy(os.path.join(v5_dir, "model.safetensors"), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(v4))
    assert AutoConfig.from_pretrained(str(tmp_path)) == AutoConfig.from_pretrained(v5_dir)
    ids = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
    np.testing.assert_array_equal(AutoModel.from_pretrained(str(tmp_path))(ids).asnumpy(),
                                  AutoModel.from_pretrained(v5_dir)(ids).asnumpy())


def test_float16_runs_close_to_float32_and_bfloat16_is_refused_on_cpu():
    ids = np.load(os.path.join(INTEROP, "llama", "input_ids.npy"))
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"), dtype="float16")
    logits = model(ids_tensor(ids)).asnumpy().astype(np.float32)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == ms.float16
    np.testing.assert_allclose(logits, np.load(os.path.join(INTEROP, "llama", "logits_base.npy")), atol=0.1, rtol=0)
    with pytest.raises(ValueError, match="bfloat16 has no matmul kernel on MindSpore's CPU backend"):
        AutoModel.from_pretrained(os.path.join(INTEROP, "llama", "base"), dtype="bfloat16")
