"""GPT-2's processor."""

from ..registry import PROCESSORS
from ..tokenizers import GPT2Tokenizer
from .base import BaseProcessor


@PROCESSORS.register
class GPT2Processor(BaseProcessor):
    """``{"text": ids[batch, max_length]}`` from text, with a :class:`GPT2Tokenizer`.

    GPT-2 has no pad token, so rows are padded with ``<|endoftext|>`` (id 50256). See :class:`BaseProcessor`.
    """

    tokenizer_class = GPT2Tokenizer
