"""Tokenizers with the Hugging Face API, backed by the ``tokenizers`` library or the ``sentencepiece`` library.

- :class:`PreTrainedTokenizer`: the one tokenizer class; :class:`GPT2Tokenizer` and :class:`LlamaTokenizer`
  change only defaults.
- :func:`load_tokenizer`: from a directory, a tokenizer.json / sentencepiece .model / .gguf file, a YAML
  section or a preset name (``from_pretrained("gpt2")`` on any class too).
- Backends: ``tokenizer.json`` (Hugging Face's behaviour), GPT-2 ``vocab.json`` + ``merges.txt``, sentencepiece
  ``.model`` (:class:`SentencePieceTokenizer`: sentencepiece's own ids and text), GGUF metadata (llama.cpp's
  pre-tokenizers; sentencepiece vocabularies through sentencepiece).
"""

from .backends import build_backend, byte_level_bpe_tokenizer
from .base import VERY_LARGE_INTEGER, PreTrainedTokenizer, read_pretrained_dir
from .chat_template import render_chat_template
from .gguf import gguf_to_tokenizer
from .gpt2 import GPT2Tokenizer
from .llama import LlamaTokenizer
from .loading import load_tokenizer, tokenizer_class_for
from .sentencepiece import SentencePieceTokenizer, read_sentencepiece_model, sentencepiece_to_tokenizer

__all__ = [
    "GPT2Tokenizer",
    "LlamaTokenizer",
    "PreTrainedTokenizer",
    "SentencePieceTokenizer",
    "VERY_LARGE_INTEGER",
    "build_backend",
    "byte_level_bpe_tokenizer",
    "gguf_to_tokenizer",
    "load_tokenizer",
    "read_pretrained_dir",
    "read_sentencepiece_model",
    "render_chat_template",
    "sentencepiece_to_tokenizer",
    "tokenizer_class_for",
]
