"""Feature-extraction pipeline: the backbone's last hidden states, checked through the tiny fixture models'
heads against transformers' logits, and unchanged by padding."""
import os

import numpy as np
import pytest

from mindformers import AutoModel
from mindformers.pipeline import FeatureExtractionPipeline, pipeline
from tests.conftest import INTEROP
from tests.pipeline.conftest import word_tokenizer, words

HEAD = {"llama": "lm_head.weight", "gpt2": "transformer.wte.weight"}  # GPT-2's head is tied to wte


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_features_times_head_equal_transformers_logits(family):
    """hidden @ head.T is the LM's logits, so the features are checked against transformers' logits."""
    path = os.path.join(INTEROP, family)
    model = AutoModel.from_pretrained(os.path.join(path, "base"))
    ids = np.load(os.path.join(path, "input_ids.npy"))
    p = pipeline("feature-extraction", model=model, tokenizer=word_tokenizer(384))
    features = p([words(row) for row in ids], return_tensors=True)
    assert [f.shape for f in features] == [(ids.shape[1], model.config.hidden_size)] * len(ids)
    head = model.state_dict()[HEAD[family]]  # [vocab, hidden]
    expected = np.load(os.path.join(path, "logits_base.npy"))
    np.testing.assert_allclose(np.stack(features) @ head.T, expected, atol=2e-4)


def test_padded_batch_equals_single_texts_and_nested_lists():
    path = os.path.join(INTEROP, "llama")
    ids = np.load(os.path.join(path, "input_ids.npy"))
    p = FeatureExtractionPipeline(os.path.join(path, "base"), word_tokenizer(384))
    texts = [words(ids[0]), words(ids[1, :5])]
    batch = p(texts)  # nested lists [batch][seq][hidden]
    assert [len(rows) for rows in batch] == [16, 5] and len(batch[1][0]) == 64
    assert isinstance(batch[1][0][0], float)
    for text, rows in zip(texts, batch):
        alone = p(text, return_tensors=True)
        assert len(alone) == 1  # one string -> [1][seq][hidden]
        np.testing.assert_allclose(np.array(rows), alone[0], atol=1e-5)


def test_errors():
    p = FeatureExtractionPipeline(os.path.join(INTEROP, "gpt2", "base"), word_tokenizer(384), return_tensors=True)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['top_k'\]"):
        p("t1", top_k=2)
    with pytest.raises(TypeError, match="backbone"):
        FeatureExtractionPipeline(object(), word_tokenizer(8))
