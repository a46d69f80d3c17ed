"""Llama's token-classification, question-answering and bare (feature-extraction) models: outputs and losses
equal transformers' on the same weights (references made by tests/fixtures/hf_models/make_task_heads.py)."""
import os

import numpy as np
import pytest

from mindformers import (
    AutoModel,
    AutoModelForFeatureExtraction,
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    LlamaForCausalLM,
    LlamaForQuestionAnswering,
    LlamaForTokenClassification,
    LlamaModel,
)
from mindformers.models.common.layers import question_answering_output
from tests.conftest import HF_MODELS, INTEROP, ids_tensor

ATOL = 1e-4


def reference(name):
    return os.path.join(HF_MODELS, name), np.load(os.path.join(HF_MODELS, name, "reference.npz"))


def test_token_classification_equals_transformers():
    directory, ref = reference("llama_tokcls")
    model = AutoModel.from_pretrained(directory)  # the architecture config.json names
    assert isinstance(model, LlamaForTokenClassification) and model.score.bias.shape == (5,)
    model.set_train(False)  # dropout off, as transformers' eval()
    loss, logits = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]), labels=ids_tensor(ref["labels"]))
    mask = ref["attention_mask"].astype(bool)  # padding positions differ (their positions are ours) and are unused
    np.testing.assert_allclose(logits.asnumpy()[mask], ref["logits"][mask], atol=ATOL, rtol=0)
    assert abs(float(loss.asnumpy()) - float(ref["loss"])) < 1e-5
    # the loss is the mean cross entropy over the labels that are not -100, recomputed in numpy
    z = ref["logits"].reshape(-1, 5).astype(np.float64)
    labels = ref["labels"].reshape(-1)
    logp = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    keep = labels != -100
    assert abs(-logp[keep, labels[keep]].mean() - float(loss.asnumpy())) < 1e-5


def test_token_classification_dropout_only_in_training():
    directory, ref = reference("llama_tokcls")
    model = LlamaForTokenClassification.from_pretrained(directory)
    ids = ids_tensor(ref["input_ids"])
    model.set_train(True)
    trained = model(ids).asnumpy()
    model.set_train(False)
    np.testing.assert_allclose(model(ids).asnumpy()[[0, 2]], ref["logits"][[0, 2]], atol=ATOL, rtol=0)  # unpadded rows
    assert np.abs(trained - model(ids).asnumpy()).max() > 1e-3  # transformers' default classifier dropout 0.1


def test_question_answering_equals_transformers():
    directory, ref = reference("llama_qa")
    model = AutoModelForQuestionAnswering.from_pretrained(directory)
    assert isinstance(model, LlamaForQuestionAnswering)
    assert "transformer.layers.0.self_attn.q_proj.weight" in dict(model.parameters_and_names())
    start, end = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]))
    mask = ref["attention_mask"].astype(bool)  # padding positions differ and are unused
    np.testing.assert_allclose(start.asnumpy()[mask], ref["start_logits"][mask], atol=ATOL, rtol=0)
    np.testing.assert_allclose(end.asnumpy()[mask], ref["end_logits"][mask], atol=ATOL, rtol=0)
    # transformers' softmax over the span runs over the padding positions too, which it numbers 9, 10, 11
    # (we number them after the last real token): with its position ids every logit and the loss agree
    positions = ids_tensor(np.broadcast_to(np.arange(12), (3, 12)))
    loss, start, end = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"]), positions,
                             start_positions=ids_tensor(ref["start_positions"]), end_positions=ids_tensor(ref["end_positions"]))
    np.testing.assert_allclose(start.asnumpy(), ref["start_logits"], atol=ATOL, rtol=0)
    assert abs(float(loss.asnumpy()) - float(ref["loss"])) < 1e-5


def test_question_answering_loss_clamps_and_ignores_positions_past_the_input():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 2)).astype(np.float32)
    start, end = np.array([2, 9, 0]), np.array([5, 3, 6])  # 9 -> clamped to 6 (ignored); 6 is ignored too

    def ce(z, positions):
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        keep = np.clip(positions, 0, 6) != 6
        return -logp[np.arange(3)[keep], positions[keep]].mean()

    expected = (ce(logits[..., 0], start) + ce(logits[..., 1], end)) / 2
    loss, s, e = question_answering_output(_tensor(logits),
                                           ids_tensor(start), ids_tensor(end))
    assert abs(float(loss.asnumpy()) - expected) < 1e-5
    np.testing.assert_array_equal(s.asnumpy(), logits[..., 0])


def _tensor(array):
    from mindspore import Tensor

    return Tensor(array)


def test_bare_model_equals_transformers_and_is_seeded_by_a_causal_checkpoint():
    directory, ref = reference("llama_bare")
    model = AutoModel.from_pretrained(directory)
    assert isinstance(model, LlamaModel) and "embed_tokens.weight" in dict(model.parameters_and_names())
    hidden = model(ids_tensor(ref["input_ids"]), ids_tensor(ref["attention_mask"])).asnumpy()
    mask = ref["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[mask], ref["last_hidden_state"][mask], atol=ATOL, rtol=0)
    # a causal-LM checkpoint: the backbone's weights without their "model." prefix; lm_head unused
    base = os.path.join(INTEROP, "llama", "base")
    bare = AutoModelForFeatureExtraction.from_pretrained(base)
    causal = LlamaForCausalLM.from_pretrained(base)
    ids = ids_tensor(np.load(os.path.join(INTEROP, "llama", "input_ids.npy")))
    np.testing.assert_allclose(bare(ids).asnumpy(), causal.model(ids).asnumpy(), atol=1e-6, rtol=0)


def test_heads_seeded_by_a_causal_checkpoint_and_unknown_tasks_named():
    base = os.path.join(INTEROP, "llama", "base")
    qa = LlamaForQuestionAnswering.from_pretrained(base)  # model.* keys land in transformer.*
    causal = LlamaForCausalLM.from_pretrained(base)
    np.testing.assert_array_equal(qa.transformer.norm.weight.asnumpy(), causal.model.norm.weight.asnumpy())
    tok = AutoModelForTokenClassification.from_pretrained(base, num_labels=7)
    assert tok.score.weight.shape == (7, 64) and np.abs(tok.score.weight.asnumpy()).sum() > 0
    with pytest.raises(ValueError, match="no token_classification model is registered for model_type 'gpt2'"):
        AutoModelForTokenClassification.from_pretrained(os.path.join(INTEROP, "gpt2", "base"))
