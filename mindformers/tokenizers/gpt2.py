"""GPT-2's tokenizer: byte-level BPE from ``vocab.json`` + ``merges.txt`` (or any file :mod:`.backends` reads)."""

from ..registry import TOKENIZERS
from .base import PreTrainedTokenizer


@TOKENIZERS.register
class GPT2Tokenizer(PreTrainedTokenizer):
    """GPT-2 byte-level BPE tokenizer (transformers' ``GPT2Tokenizer``).

    ``<|endoftext|>`` is BOS, EOS and UNK; there is no pad token (set ``tokenizer.pad_token =
    tokenizer.eos_token`` to pad). No BOS is added to sequences. Build it with
    ``GPT2Tokenizer.from_pretrained(dir)`` or ``GPT2Tokenizer.from_files(vocab_file=..., merges_file=...)``;
    see :class:`PreTrainedTokenizer` for the API.
    """

    default_special_tokens = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    padding_side = "right"
