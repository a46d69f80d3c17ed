"""``Pipeline``: the shared part of every task pipeline (loading the model and tokenizer, per-call options,
input checks, padding).

A pipeline is built from a model (a preset name, a path, or a model instance) and a tokenizer (a name, a
path or an instance; by default the model's own). Keyword arguments given at construction are defaults
for every call, and a call may override them::

    p = TextGenerationPipeline("smollm2_135m_instruct", max_new_tokens=20)
    p("Hello", max_new_tokens=5)
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..auto import AutoModel, AutoTokenizer


class Pipeline:
    """Base class of the task pipelines; subclasses implement :meth:`__call__`.

    Subclasses set:
        task: the name the pipeline is registered under in ``TASKS``.
        model_class: the Auto class that loads a model given by name or path.
        model_task: the ``task`` a model instance must have (``"causal_lm"``, ...), or None for any.
        default_model: the model used when none is given, or None (then a model is required).
        options: names of the per-call options the pipeline itself takes; None lets any name through
            (text generation forwards them to ``generate``, which checks them).

    Args:
        model: a preset name, a path (Hugging Face directory, YAML or GGUF file), or a model instance.
            ``None`` uses the task's ``default_model``.
        tokenizer: a preset name, a path or a tokenizer instance. ``None`` loads the tokenizer of ``model``
            when ``model`` is a name or path.
        defaults: per-call options applied to every call unless the call overrides them.
    """

    task: str = ""
    model_class = AutoModel
    model_task: Optional[str] = None
    default_model: Optional[str] = None
    options: Optional[Tuple[str, ...]] = ()

    def __init__(self, model: Any = None, tokenizer: Any = None, **defaults: Any):
        if model is None:
            if self.default_model is None:
                raise ValueError(
                    f"the {self.task} pipeline has no default model; pass model=<preset name, path or model "
                    "instance>"
                )
            model = self.default_model
        self.defaults = self._check_options(defaults)
        source = model if isinstance(model, (str, os.PathLike)) else None
        self.tokenizer = _load_tokenizer(tokenizer, source, self.task)  # first: it fails faster than a model load
        self.model = self.model_class.from_pretrained(os.fspath(source)) if source is not None else model
        self._check_model(self.model)
        if hasattr(self.model, "set_train"):
            self.model.set_train(False)  # inference: no dropout

    def __call__(self, inputs: Any, **kwargs: Any) -> List[Any]:
        """Run the task on one input or a list of inputs (see the subclass)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, model={type(self.model).__name__}, "
            f"tokenizer={type(self.tokenizer).__name__}, defaults={self.defaults})"
        )

    # ------------------------------------------------------------------ helpers for subclasses

    def _check_model(self, model: Any) -> None:
        """Raise if ``model`` cannot do this pipeline's task."""
        task = getattr(model, "task", None)
        if self.model_task is not None and task is not None and task != self.model_task:
            raise ValueError(
                f"the {self.task} pipeline needs a {self.model_task} model; got {type(model).__name__}, a "
                f"{task} model. Load one with {self.model_class.__name__}.from_pretrained(...)"
            )

    def _check_options(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """Return ``options`` after checking their names against :attr:`options`."""
        if self.options is not None:
            unknown = sorted(set(options) - set(self.options))
            if unknown:
                raise ValueError(
                    f"unknown option(s) {unknown} for the {self.task} pipeline; valid options: "
                    f"{list(self.options) or 'none'}"
                )
        return dict(options)

    def _options(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The options of one call: the pipeline's defaults overridden by ``kwargs``."""
        return {**self.defaults, **self._check_options(kwargs)}

    def _texts(self, inputs: Any) -> Tuple[List[str], bool]:
        """``(texts, single)``: the input as a list of strings, and whether it was one string."""
        if isinstance(inputs, str):
            return [inputs], True
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise ValueError(
                    f"the {self.task} pipeline got an empty list; pass a string or a non-empty list of strings"
                )
            for index, item in enumerate(inputs):
                if not isinstance(item, str):
                    raise TypeError(
                        f"the {self.task} pipeline takes a string or a list of strings; item {index} is a "
                        f"{type(item).__name__}: {item!r}"
                    )
            return list(inputs), False
        raise TypeError(
            f"the {self.task} pipeline takes a string or a list of strings; got a {type(inputs).__name__}"
        )

    def _pad_token_id(self) -> int:
        """The id to pad with: the tokenizer's pad token, else the model's, else EOS, else 0.

        The value only fills positions that the attention mask hides, so any id in the vocabulary works; a
        tokenizer without a pad token (GPT-2) is not modified.
        """
        for value in (
            getattr(self.tokenizer, "pad_token_id", None),
            getattr(getattr(self.model, "config", None), "pad_token_id", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            if value is not None:
                return int(value)
        return 0

    def _encode(self, texts: Sequence[str], prompts: bool = False) -> List[List[int]]:
        """Token ids of each text (special tokens as the tokenizer adds them; generation ``prompts`` get no
        closing EOS); an empty result is an error."""
        rows = self.tokenizer.encode_prompts(texts) if prompts else self.tokenizer(list(texts))["input_ids"]
        for index, row in enumerate(rows):
            if not row:
                raise ValueError(f"input {index} ({texts[index]!r}) gives no tokens; pass a non-empty text")
        return rows


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> Tuple[np.ndarray, np.ndarray]:
    """Pad token id rows to the longest one.

    Args:
        rows: token ids, one list per sequence (at least one).
        pad_id: the id written into padding positions.
        side: ``"left"`` or ``"right"``.

    Returns:
        ``(input_ids, attention_mask)``: int64 arrays [batch, longest]; the mask is 1 on real tokens.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def _load_tokenizer(tokenizer: Any, model_source: Optional[Any], task: str) -> Any:
    """The tokenizer instance for ``tokenizer`` (name, path or instance), by default the model's own."""
    if tokenizer is None:
        if model_source is None:
            raise ValueError(
                f"the {task} pipeline got a model instance but no tokenizer; pass tokenizer=<preset name, "
                "directory, tokenizer file or tokenizer instance> (e.g. the preset the model was loaded from)"
            )
        try:
            return AutoTokenizer.from_pretrained(os.fspath(model_source))
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(
                f"could not load a tokenizer from the model source {os.fspath(model_source)!r}: {err}. Pass "
                "tokenizer=<preset name, directory, tokenizer file or tokenizer instance>"
            ) from err
    if isinstance(tokenizer, (str, os.PathLike)):
        return AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    if not (callable(tokenizer) and callable(getattr(tokenizer, "decode", None))):
        raise TypeError(
            f"tokenizer must be a preset name, a path or a tokenizer (callable, with decode()); got "
            f"{type(tokenizer).__name__}"
        )
    return tokenizer
