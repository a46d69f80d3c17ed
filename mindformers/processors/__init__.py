"""Processors: a tokenizer plus the fixed settings a model's inputs need (``{"text": ids[batch, max_length]}``).

- :class:`BaseProcessor`, and the registered :class:`GPT2Processor` and :class:`LlamaProcessor`;
- :func:`load_processor`: from a YAML ``processor:`` section, a tokenizer path, or a processor.
"""

from .base import PROCESSOR_KEYS, BaseProcessor, load_processor
from .gpt2 import GPT2Processor
from .llama import LlamaProcessor

__all__ = ["BaseProcessor", "GPT2Processor", "LlamaProcessor", "PROCESSOR_KEYS", "load_processor"]
