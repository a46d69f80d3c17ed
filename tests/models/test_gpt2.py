"""GPT-2: logits equal Hugging Face transformers' on the same weights; configs in both spellings."""
import json
import os

import numpy as np

from mindformers import AutoModel, GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from tests.conftest import HF_MODELS, INTEROP, ids_tensor

ATOL = 1e-4


def test_interop_gpt2_logits_equal_transformers():
    model = AutoModel.from_pretrained(os.path.join(INTEROP, "gpt2", "base"))
    assert isinstance(model, GPT2LMHeadModel) and model.lm_head is None  # tied to transformer.wte
    ids = np.load(os.path.join(INTEROP, "gpt2", "input_ids.npy"))
    logits = model(ids_tensor(ids)).asnumpy()
    np.testing.assert_allclose(logits, np.load(os.path.join(INTEROP, "gpt2", "logits_base.npy")), atol=ATOL, rtol=0)


def test_gpt2_sequence_classification_equals_transformers():
    directory = os.path.join(HF_MODELS, "gpt2_seqcls")
    ref = np.load(os.path.join(directory, "reference.npz"))
    model = AutoModel.from_pretrained(directory)
    assert isinstance(model, GPT2ForSequenceClassification)
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    loss, logits = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]), labels=ids_tensor(ref["labels"]))
    np.testing.assert_allclose(logits.asnumpy(), ref["logits"], atol=ATOL, rtol=0)
    assert abs(float(loss.asnumpy()) - float(ref["loss"])) < 1e-5


def test_gpt2_config_spellings_and_hf_names(tmp_path):
    ours = GPT2Config(hidden_size=768, num_layers=12)
    hf = GPT2Config(n_embd=768, n_layer=12)
    assert ours == hf and ours.intermediate_size == 3072 and ours.num_attention_heads == 12
    ours.save_pretrained(str(tmp_path), architecture="GPT2LMHeadModel")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["n_embd"] == 768 and saved["n_layer"] == 12 and saved["n_head"] == 12
    assert saved["n_positions"] == 1024 and "hidden_size" not in saved and "num_hidden_layers" not in saved


def test_gpt2_from_config_shapes_and_init():
    model = GPT2LMHeadModel.from_config(GPT2Config(hidden_size=64, num_layers=2, num_heads=4, vocab_size=100,
                                                   seq_length=32), seed=0)
    params = dict(model.parameters_and_names())
    assert params["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: [in, out]
    std = params["transformer.h.0.mlp.c_fc.weight"].asnumpy().std()
    assert 0.015 < std < 0.025  # normal(0, initializer_range=0.02)
    proj_std = params["transformer.h.0.mlp.c_proj.weight"].asnumpy().std()
    assert 0.006 < proj_std < 0.0125  # scaled by 1/sqrt(2 * n_layer)
    assert model.num_parameters() == sum(int(np.prod(p.shape)) for p in params.values())
    logits = model(ids_tensor(np.arange(10).reshape(1, 10))).asnumpy()
    assert logits.shape == (1, 10, 100) and np.isfinite(logits).all()
