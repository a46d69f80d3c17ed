"""Text-classification pipeline: scores equal the softmax of transformers' logits on the tiny fixture
classifiers, padded batches score as single texts, labels come from id2label, top_k shapes the output."""
import os

import numpy as np
import pytest

from mindformers import LlamaConfig, LlamaForSequenceClassification
from mindformers.pipeline import TextClassificationPipeline, pipeline
from tests.conftest import HF_MODELS, ids_tensor
from tests.pipeline.conftest import word_tokenizer, words


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ["llama_seqcls", "gpt2_seqcls"])
def test_scores_equal_softmax_of_transformers_logits(name):
    """The reference batch holds a right-padded row; the pipeline pads left, which must not matter."""
    path = os.path.join(HF_MODELS, name)
    ref = np.load(os.path.join(path, "reference.npz"))
    texts = [words(ids[mask == 1]) for ids, mask in zip(ref["input_ids"], ref["attention_mask"])]
    p = pipeline("text-classification", model=path, tokenizer=word_tokenizer(128))
    expected = softmax(ref["logits"].astype(np.float64))
    np.testing.assert_allclose(p.scores(texts), expected, atol=2e-6)
    out = p(texts)
    assert [d["label"] for d in out] == [f"LABEL_{i}" for i in expected.argmax(-1)]
    np.testing.assert_allclose([d["score"] for d in out], expected.max(-1), atol=2e-6)


@pytest.fixture(scope="module")
def classifier():
    """A small random Llama classifier over SmolLM2's vocabulary, with named labels."""
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, pad_token_id=2,
                         id2label={0: "negative", 1: "neutral", 2: "positive"})
    return LlamaForSequenceClassification.from_config(config, seed=0)


TEXTS = ["great movie", "Le film était très bon 😀, mais un peu long.", "这部电影很好看"]


def test_batch_equals_each_text_alone(classifier, smollm2_tokenizer):
    p = TextClassificationPipeline(classifier, smollm2_tokenizer)
    alone = np.stack([
        softmax(classifier(ids_tensor([smollm2_tokenizer(t)["input_ids"]])).asnumpy()[0].astype(np.float64))
        for t in TEXTS
    ])
    np.testing.assert_allclose(p.scores(TEXTS), alone, atol=1e-5)
    out = p(TEXTS)
    names = ["negative", "neutral", "positive"]
    assert out == [{"label": names[int(row.argmax())], "score": pytest.approx(row.max(), abs=1e-5)} for row in alone]
    single = p(TEXTS[1])
    assert single == [{"label": out[1]["label"], "score": pytest.approx(out[1]["score"], abs=1e-6)}]


def test_top_k_and_function_to_apply(classifier, smollm2_tokenizer):
    p = pipeline("text_classification", model=classifier, tokenizer=smollm2_tokenizer, top_k=None)
    every = p("great movie")  # one string with top_k set: the list of label dicts itself
    assert len(every) == 3
    assert sorted(d["label"] for d in every) == ["negative", "neutral", "positive"]
    scores = [d["score"] for d in every]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    two = p(["great movie", "bad"], top_k=2)
    assert [len(x) for x in two] == [2, 2]
    assert two[0] == [{"label": d["label"], "score": pytest.approx(d["score"], abs=1e-6)} for d in every[:2]]
    logits = classifier(ids_tensor([smollm2_tokenizer("great movie")["input_ids"]])).asnumpy()[0]
    raw = p("great movie", top_k=1, function_to_apply="none")
    assert raw[0]["score"] == pytest.approx(float(logits.max()), abs=1e-5)
    sigmoid = p("great movie", function_to_apply="sigmoid")
    assert [d["score"] for d in sigmoid] == pytest.approx(sorted(1 / (1 + np.exp(-logits)), reverse=True), abs=1e-5)


def test_option_and_model_errors(classifier, smollm2_tokenizer):
    p = TextClassificationPipeline(classifier, smollm2_tokenizer)
    expected = r"unknown option\(s\) \['max_length'\].*valid options: \['top_k', 'function_to_apply'\]"
    with pytest.raises(ValueError, match=expected):
        p("great", max_length=3)
    with pytest.raises(ValueError, match="top_k must be a positive integer or None"):
        p("great", top_k=0)
    with pytest.raises(ValueError, match="function_to_apply must be one of"):
        p("great", function_to_apply="relu")
    with pytest.raises(ValueError, match="no default model"):
        pipeline("text_classification")
    with pytest.raises(FileNotFoundError, match="could not load a tokenizer .*Pass tokenizer="):
        pipeline("text_classification", model=os.path.join(HF_MODELS, "llama_seqcls"))
