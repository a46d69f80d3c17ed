"""pipeline(): task lookup through the TASKS registry, aliases, defaults, model/tokenizer resolution."""
import pytest

from mindformers.pipeline import (
    FeatureExtractionPipeline,
    TextClassificationPipeline,
    TextGenerationPipeline,
    pad_rows,
    pipeline,
)
from mindformers.registry import TASKS
from tests.pipeline.conftest import FakeLM, word_tokenizer


def test_tasks_are_registered():
    assert TASKS.get("text_generation") is TextGenerationPipeline
    assert TASKS.get("text_classification") is TextClassificationPipeline
    assert TASKS.get("feature_extraction") is FeatureExtractionPipeline


def test_unknown_task_lists_the_tasks():
    with pytest.raises(KeyError) as raised:
        pipeline("summarization")
    message = str(raised.value)
    assert "unknown task 'summarization'" in message
    for name in ("feature_extraction", "text_classification", "text_generation"):
        assert name in message
    with pytest.raises(TypeError, match="task must be a task name"):
        pipeline(TextGenerationPipeline)


def test_dashed_alias_and_defaults():
    p = pipeline("text-generation", model=FakeLM(), tokenizer=word_tokenizer(384), max_new_tokens=1, seed=3)
    assert isinstance(p, TextGenerationPipeline) and p.defaults == {"max_new_tokens": 1, "seed": 3}
    assert p("t9") == [{"text_generation_text": ["t9 t100"]}]


def test_tokenizer_by_name(smollm2_tokenizer):
    p = pipeline("text_generation", model=FakeLM(), tokenizer="smollm2_135m_instruct")
    assert p.tokenizer.get_vocab() == smollm2_tokenizer.get_vocab()
    with pytest.raises(TypeError, match="tokenizer must be a preset name, a path or a tokenizer"):
        pipeline("text_generation", model=FakeLM(), tokenizer=3)


def test_pad_rows():
    ids, mask = pad_rows([[5, 6, 7], [8]], 0, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_rows([[5, 6, 7], [8]], 9, "right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
