"""Text classification: class labels and scores from a sequence-classification model."""
from typing import Any, Dict, List, Optional, Union

import numpy as np
import mindspore as ms

from ..auto import AutoModelForSequenceClassification
from ..registry import TASKS
from .base import Pipeline, pad_rows

FUNCTIONS = ("softmax", "sigmoid", "none")
_TOP1 = object()  # top_k not given: one dict per input (Hugging Face's default output shape)


class TextClassificationPipeline(Pipeline):
    """Classify texts: ``p("great movie")`` -> ``[{"label": "LABEL_1", "score": 0.73}]``.

    Scores are the softmax of the model's logits (sigmoid for multi-label or single-output models, the raw
    logits for regression, as in Hugging Face); labels come from ``config.id2label`` (``LABEL_<i>`` when it is unset).

    Output shapes follow Hugging Face: without ``top_k``, one ``{"label", "score"}`` dict per input (a list
    even for one string). With ``top_k=k`` (or ``top_k=None`` for all classes), each input gives a list
    of the k best dicts, highest score first; for a single string that list is returned itself.

    Texts of a batch are left-padded: the model pools the rightmost token that is not
    ``config.pad_token_id``, which with left padding is the last real token whatever id the tokenizer pads
    with; positions count real tokens only, so a padded row scores as it would alone.

    Per-call options: ``top_k`` and ``function_to_apply`` (``"softmax"``, ``"sigmoid"`` or ``"none"``).

    Args:
        model: a sequence-classification preset/path or model instance (there is no default).
        tokenizer: a name, path or tokenizer instance (default: the model's).
        defaults: default options, e.g. ``top_k=None``.
    """

    task = "text_classification"
    model_class = AutoModelForSequenceClassification
    model_task = "sequence_classification"
    options = ("top_k", "function_to_apply")

    def __call__(self, inputs: Union[str, List[str]], **kwargs: Any) -> List[Any]:
        """Classify one text or a list of texts.

        Args:
            inputs: a string or a non-empty list of strings.
            kwargs: ``top_k``, ``function_to_apply`` for this call.

        Returns:
            See the class docstring.
        """
        options = self._options(kwargs)
        top_k = options.get("top_k", _TOP1)
        scores = self.scores(inputs, options.get("function_to_apply"))
        single = isinstance(inputs, str)
        id2label = getattr(self.model.config, "id2label", None) or {}
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")
            labelled = [{"label": id2label.get(int(c), f"LABEL_{int(c)}"), "score": float(row[c])} for c in order]
            results.append(labelled[0] if top_k is _TOP1 else labelled[:top_k])  # top_k None: all
        if single and top_k is not _TOP1:
            return results[0]
        return results

    def scores(self, inputs: Union[str, List[str]], function_to_apply: Optional[str] = None) -> np.ndarray:
        """Class scores of each text, in class-index order.

        Args:
            inputs: a string or a list of strings.
            function_to_apply: ``"softmax"``, ``"sigmoid"`` or ``"none"`` (default: as in the class docstring).

        Returns:
            float64 array [batch, num_labels].
        """
        texts, _ = self._texts(inputs)
        input_ids, attention_mask = pad_rows(self._encode(texts), self._pad_token_id(), "left")
        logits = self.model(ms.Tensor(input_ids.astype(np.int32)), ms.Tensor(attention_mask.astype(np.int32)))
        logits = logits.asnumpy().astype(np.float64)  # [batch, num_labels]
        function = function_to_apply or self._default_function()
        if function == "softmax":
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            return shifted / shifted.sum(-1, keepdims=True)
        if function == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        return logits

    def _check_options(self, options: Dict[str, Any]) -> Dict[str, Any]:
        options = super()._check_options(options)
        top_k = options.get("top_k", 1)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None (all classes); got {top_k!r}")
        function = options.get("function_to_apply")
        if function is not None and function not in FUNCTIONS:
            raise ValueError(f"function_to_apply must be one of {FUNCTIONS}; got {function!r}")
        return options

    def _default_function(self) -> str:
        config = self.model.config
        if getattr(config, "problem_type", None) == "regression":
            return "none"
        if getattr(config, "problem_type", None) == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        return "softmax"


TASKS.register(TextClassificationPipeline, name=TextClassificationPipeline.task)
