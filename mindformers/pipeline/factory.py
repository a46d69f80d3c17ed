"""``pipeline(task, model, tokenizer, **defaults)``: build the registered pipeline of a task."""
from typing import Any

from ..registry import TASKS
from .base import Pipeline


def pipeline(task: str, model: Any = None, tokenizer: Any = None, **defaults: Any) -> Pipeline:
    """Build the pipeline registered for ``task``.

    Example::

        generator = pipeline("text_generation", model="smollm2_135m_instruct", max_new_tokens=20)
        generator("I love Beijing, because", do_sample=True, top_k=3)
        # [{'text_generation_text': ['I love Beijing, because ...']}]

    Args:
        task: a task name from the ``TASKS`` registry (``"text_generation"``, ``"text_classification"``,
            ``"feature_extraction"``); Hugging Face's dashed spelling (``"text-generation"``) works too.
        model: a preset name, a path (Hugging Face directory, YAML or GGUF file) or a model instance; ``None``
            uses the task's default model if it has one.
        tokenizer: a preset name, a path or a tokenizer instance; ``None`` loads the tokenizer of ``model``
            (a model instance then needs an explicit tokenizer).
        defaults: options applied to every call (e.g. ``max_new_tokens=50``); a call may override them.

    Returns:
        The pipeline; call it on a text or a list of texts.
    """
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name (a string) such as 'text_generation'; got {type(task).__name__}")
    entry = TASKS.get(task.replace("-", "_"))  # an unknown name raises, listing the registered tasks
    if not _is_pipeline(entry):
        pipelines = [name for name in TASKS.names() if _is_pipeline(TASKS.get(name))]
        raise ValueError(f"task {task!r} has no pipeline; tasks with a pipeline: {pipelines}")
    return entry(model=model, tokenizer=tokenizer, **defaults)


def _is_pipeline(entry: Any) -> bool:
    return isinstance(entry, type) and issubclass(entry, Pipeline)
