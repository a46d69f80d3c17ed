"""Feature extraction: the last hidden state of every token, from a model's backbone (no task head)."""
from typing import Any, List, Union

import numpy as np
import mindspore as ms

from ..auto import AutoModel
from ..registry import TASKS
from .base import Pipeline, pad_rows


class FeatureExtractionPipeline(Pipeline):
    """Per-token features: the final hidden states of the model's backbone (after its final norm).

    The backbone is the model's ``base_model_prefix`` attribute: ``model.model`` for Llama and Qwen2,
    ``model.transformer`` for GPT-2, whichever head (LM or classifier) the model has.

    Output: one entry per input (a list even for one string), each ``[seq][hidden]`` nested lists of floats
    over that input's own tokens (padding removed); with ``return_tensors=True`` each entry is a float32
    numpy array ``[seq, hidden]``. A single string thus gives ``[1][seq][hidden]``, as in Hugging Face.

    Texts of a batch are right-padded: with causal attention real tokens never attend to the padding that
    follows them, so a padded row gives the same features as the row alone.

    Per-call option: ``return_tensors``.

    Args:
        model: a preset/path or model instance (default: SmolLM2-135M-Instruct).
        tokenizer: a name, path or tokenizer instance (default: the model's).
        defaults: default options, e.g. ``return_tensors=True``.
    """

    task = "feature_extraction"
    model_class = AutoModel
    default_model = "smollm2_135m_instruct"
    options = ("return_tensors",)

    def _check_model(self, model: Any) -> None:
        super()._check_model(model)
        prefix = getattr(model, "base_model_prefix", "")
        if not prefix or getattr(model, prefix, None) is None:
            raise TypeError(
                f"the {self.task} pipeline needs a model with a backbone named by its base_model_prefix "
                f"(model.model for Llama, model.transformer for GPT-2); {type(model).__name__} has none"
            )

    @property
    def backbone(self) -> Any:
        """The model without its head: ids -> hidden states [batch, seq, hidden]."""
        return getattr(self.model, self.model.base_model_prefix)

    def __call__(self, inputs: Union[str, List[str]], **kwargs: Any) -> List[Any]:
        """Features of one text or a list of texts.

        Args:
            inputs: a string or a non-empty list of strings.
            kwargs: ``return_tensors`` for this call.

        Returns:
            One ``[seq][hidden]`` entry per input (see the class docstring).
        """
        options = self._options(kwargs)
        texts, _ = self._texts(inputs)
        input_ids, attention_mask = pad_rows(self._encode(texts), self._pad_token_id(), "right")
        hidden = self.backbone(ms.Tensor(input_ids.astype(np.int32)), ms.Tensor(attention_mask.astype(np.int32)))
        hidden = hidden.asnumpy().astype(np.float32)  # [batch, seq, hidden]
        features = [hidden[i, mask.astype(bool)] for i, mask in enumerate(attention_mask)]
        if options.get("return_tensors", False):
            return features
        return [f.tolist() for f in features]


TASKS.register(FeatureExtractionPipeline, name=FeatureExtractionPipeline.task)
