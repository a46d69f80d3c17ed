"""Llama's tokenizer: a sentencepiece ``tokenizer.model`` (encoded by the sentencepiece library, so ids are
sentencepiece's and llama.cpp's), or any file :mod:`.backends` reads (tokenizer.json, a GGUF such as SmolLM2's)."""

from ..registry import TOKENIZERS
from .base import PreTrainedTokenizer


@TOKENIZERS.register
class LlamaTokenizer(PreTrainedTokenizer):
    """Llama / Mistral tokenizer (transformers' ``LlamaTokenizer``).

    Defaults, used when the files name no others and the vocabulary has them: ``<s>`` (BOS), ``</s>`` (EOS),
    ``<unk>``; padding on the left (transformers' default for Llama, so batched generation continues from the
    last real token). Whether BOS is added comes from the files: tokenizer_config.json's ``add_bos_token``
    (Llama and Mistral checkpoints set it) or the GGUF metadata. A bare ``tokenizer.model`` with no config adds
    none, as transformers 5 does; pass ``add_bos_token=True`` then. See :class:`PreTrainedTokenizer` for the API.
    """

    default_special_tokens = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    padding_side = "left"
