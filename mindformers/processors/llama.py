"""Llama's processor (also used for SmolLM2, Mistral and other Llama-family models)."""

from ..registry import PROCESSORS
from ..tokenizers import LlamaTokenizer
from .base import BaseProcessor


@PROCESSORS.register
class LlamaProcessor(BaseProcessor):
    """``{"text": ids[batch, max_length]}`` from text, with a :class:`LlamaTokenizer`.

    Padding follows the tokenizer's side (left for Llama) unless ``padding_side`` is given. See
    :class:`BaseProcessor`.
    """

    tokenizer_class = LlamaTokenizer
