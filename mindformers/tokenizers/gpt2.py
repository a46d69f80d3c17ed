"""GPT-2's tokenizer: byte-level BPE from ``vocab.json`` + ``merges.txt`` (or any file :mod:`.backends` reads)."""

from ..registry import TOKENIZERS
from .base import PreTrainedTokenizer


@TOKENIZERS.register
class GPT2Tokenizer(PreTrainedTokenizer):
    """GPT-2 byte-level BPE tokenizer (transformers' ``GPT2Tokenizer``).

    From a Hugging Face folder it behaves as transformers' does: ``<|endoftext|>`` is BOS, EOS and UNK; there is
    no pad token (set ``tokenizer.pad_token = tokenizer.eos_token`` to pad); no BOS is added to sequences. The
    ``gpt2`` preset (``GPT2Tokenizer.from_pretrained("gpt2")``) is MindFormers' GPT-2 tokenizer: its YAML adds
    ``<|endoftext|>`` before and after each text, returns ``token_type_ids`` and pads with ``<|endoftext|>``.
    Build it with ``GPT2Tokenizer.from_pretrained(dir or preset)`` or ``GPT2Tokenizer.from_files(vocab_file=...,
    merges_file=...)``; see :class:`PreTrainedTokenizer` for the API.
    """

    default_special_tokens = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    padding_side = "right"
