"""Pipelines: a model and its tokenizer behind one call, per task.

``pipeline(task, model, tokenizer, **defaults)`` builds the pipeline registered in ``TASKS`` under the task
name:

- ``text_generation``: :class:`TextGenerationPipeline` (prompts or chats -> generated text),
- ``text_classification``: :class:`TextClassificationPipeline` (texts -> labels and scores),
- ``feature_extraction``: :class:`FeatureExtractionPipeline` (texts -> per-token hidden states).

A new task is one module with a :class:`Pipeline` subclass and one ``TASKS.register`` call, imported here.
"""
from .base import Pipeline, pad_rows
from .factory import pipeline
from .feature_extraction import FeatureExtractionPipeline
from .text_classification import TextClassificationPipeline
from .text_generation import TextGenerationPipeline

__all__ = [
    "FeatureExtractionPipeline",
    "Pipeline",
    "TextClassificationPipeline",
    "TextGenerationPipeline",
    "pad_rows",
    "pipeline",
]
