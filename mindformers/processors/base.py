"""``BaseProcessor``: text in, a fixed-size ``[batch, max_length]`` id tensor out (MindFormers' processors).

A processor wraps a tokenizer with the settings a model's inputs need, so pipelines and datasets can call
``processor(texts)["text"]`` without repeating them: ids padded (or cut) to ``max_length``, as a MindSpore
int32 Tensor by default.
"""

import copy
import os
from typing import Any, Dict, Optional, Sequence, Union

from ..registry import PROCESSORS
from ..tokenizers import PreTrainedTokenizer, load_tokenizer
from ..tokenizers.base import RETURN_TENSORS, _padding_strategy, is_preset_name
from ..utils import logger, resolve_resource

# Options of a processor besides its tokenizer; YAML sections are checked against these.
PROCESSOR_KEYS = (
    "max_length",
    "padding",
    "truncation",
    "return_tensors",
    "padding_side",
    "add_special_tokens",
    "return_attention_mask",
)


class BaseProcessor:
    """Tokenize text into a fixed-length batch of ids.

    Args:
        tokenizer: a :class:`PreTrainedTokenizer`, or what :func:`load_tokenizer` accepts (directory, file,
            YAML section).
        max_length: length of every output row.
        padding: ``"max_length"`` (every row ``max_length`` long), ``True``/``"longest"`` or ``False``.
        truncation: cut longer texts to ``max_length`` (special tokens included).
        return_tensors: ``"ms"`` (MindSpore int32), ``"np"`` (int64) or ``None`` (lists).
        padding_side: ``"right"``/``"left"``; default the tokenizer's (left for ``LlamaTokenizer``).
        add_special_tokens: add BOS/EOS as the tokenizer is configured to.
        return_attention_mask: also return ``"attention_mask"`` beside ``"text"``.

    A tokenizer without a pad token (GPT-2) pads with its EOS token; the processor then holds a copy of the
    tokenizer with ``pad_token = eos_token``, and the caller's tokenizer is left unchanged.
    """

    tokenizer_class = PreTrainedTokenizer  # what from_pretrained builds from a path

    def __init__(
        self,
        tokenizer: Union[PreTrainedTokenizer, str, Dict[str, Any]],
        max_length: int = 128,
        padding: Union[bool, str] = "max_length",
        truncation: bool = True,
        return_tensors: Optional[str] = "ms",
        padding_side: Optional[str] = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = False,
    ):
        if not isinstance(tokenizer, PreTrainedTokenizer):
            tokenizer = load_tokenizer(tokenizer)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {RETURN_TENSORS}, got {return_tensors!r}")
        if padding_side is not None:
            PreTrainedTokenizer._check_side("padding_side", padding_side)
        if _padding_strategy(padding) is not None and tokenizer.pad_token is None:  # also rejects bad values
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"{type(self).__name__} pads, but the tokenizer has neither a pad nor an eos token; set "
                    "tokenizer.pad_token (or tokenizer.add_special_tokens({'pad_token': '<pad>'})) or pass "
                    "padding=False"
                )
            logger.info(
                "%s: the tokenizer has no pad token; padding with its eos token %r",
                type(self).__name__,
                tokenizer.eos_token,
            )
            tokenizer = copy.copy(tokenizer)
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation
        self.return_tensors = return_tensors
        self.padding_side = padding_side
        self.add_special_tokens = add_special_tokens
        self.return_attention_mask = return_attention_mask

    def __call__(self, text: Union[str, Sequence[str]]) -> Dict[str, Any]:
        """Tokenize ``text`` (a string is a batch of one).

        Args:
            text: a string or a list of strings.

        Returns:
            ``{"text": ids}`` with ids of shape ``[batch, max_length]`` (with ``padding="max_length"``), plus
            ``"attention_mask"`` if the processor was built with ``return_attention_mask=True``.
        """
        if text is None:
            raise ValueError(f"{type(self).__name__} needs text: a string or a list of strings")
        batch = [text] if isinstance(text, str) else text
        out = self.tokenizer(
            batch,
            padding=self.padding,
            truncation=self.truncation,
            max_length=self.max_length,
            padding_side=self.padding_side,
            add_special_tokens=self.add_special_tokens,
            return_tensors=self.return_tensors,
            return_token_type_ids=False,
            return_attention_mask=self.return_attention_mask,
        )
        result = {"text": out["input_ids"]}
        if self.return_attention_mask:
            result["attention_mask"] = out["attention_mask"]
        return result

    @classmethod
    def from_pretrained(
        cls, path_or_tokenizer: Union[str, os.PathLike, PreTrainedTokenizer, Dict[str, Any]], **kwargs: Any
    ) -> "BaseProcessor":
        """Build the processor for a tokenizer, for the tokenizer at a path, or of a preset.

        Args:
            path_or_tokenizer: a tokenizer; a tokenizer directory or file (loaded as ``cls.tokenizer_class``;
                ``assets:``/``package:`` references are resolved); a YAML tokenizer section; or a preset name
                (``"gpt2"``): the preset's ``processor:`` section, which must be a ``cls`` (any processor for
                :class:`BaseProcessor`).
            kwargs: processor options (``max_length``, ``padding``, ...; see the class docstring), overriding a
                preset's.

        Returns:
            The processor.
        """
        unknown = sorted(set(kwargs) - set(PROCESSOR_KEYS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {list(PROCESSOR_KEYS)}")
        tokenizer = path_or_tokenizer
        if isinstance(tokenizer, (str, os.PathLike)):
            if is_preset_name(os.fspath(tokenizer)):
                return _preset_processor(os.fspath(tokenizer), cls, kwargs)
            tokenizer = cls.tokenizer_class.from_pretrained(resolve_resource(os.fspath(tokenizer)))
        return cls(tokenizer, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_length={self.max_length}, padding={self.padding!r}, "
            f"return_tensors={self.return_tensors!r}, tokenizer={self.tokenizer!r})"
        )


def _preset_processor(name: str, cls: type, options: Dict[str, Any]) -> BaseProcessor:
    """The processor of preset ``name`` (its YAML ``processor:`` section), which must be a ``cls``."""
    from ..presets import load_yaml, preset_path

    path = preset_path(name)  # a KeyError listing the presets when `name` is none
    section = load_yaml(path).get("processor")
    if not isinstance(section, dict) or not isinstance(section.get("type"), str):
        raise ValueError(f"preset {name!r} defines no processor ({path} has no `processor:` section with a `type`)")
    found = PROCESSORS.get(section["type"])
    if not issubclass(found, cls):
        raise TypeError(
            f"preset {name!r} has a {found.__name__}, not a {cls.__name__}; load it with "
            f"{found.__name__}.from_pretrained({name!r}) or AutoProcessor.from_pretrained({name!r})"
        )
    return load_processor(section, **options)


def load_processor(
    source: Union[Dict[str, Any], str, os.PathLike, BaseProcessor],
    tokenizer: Optional[PreTrainedTokenizer] = None,
    **kwargs: Any,
) -> BaseProcessor:
    """Build a processor from a YAML section, a tokenizer path, or return a built one.

    Args:
        source: ``{"type": "LlamaProcessor", "max_length": 2048, "tokenizer": {...}}`` (a registered
            processor, its options, and a tokenizer section or path); or a tokenizer directory/file, whose
            tokenizer class picks the processor (``GPT2Tokenizer`` -> ``GPT2Processor``, ``LlamaTokenizer`` ->
            ``LlamaProcessor``); or a processor (returned as it is).
        tokenizer: a tokenizer to use instead of the section's ``tokenizer``.
        kwargs: processor options overriding the section's.

    Returns:
        The processor.
    """
    if isinstance(source, BaseProcessor):
        if tokenizer is not None or kwargs:
            raise ValueError("a built processor cannot take a tokenizer or options; build a new one instead")
        return source
    if isinstance(source, dict):
        options = {**source, **kwargs}
        if "type" not in options:
            raise ValueError(
                f"a processor section needs `type`, one of {PROCESSORS.names()}; got keys {sorted(source)}"
            )
        cls = PROCESSORS.get(options.pop("type"))
        section_tokenizer = options.pop("tokenizer", None)
        unknown = sorted(set(options) - set(PROCESSOR_KEYS))
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in the {cls.__name__} section; valid keys: "
                f"{sorted(('type', 'tokenizer') + PROCESSOR_KEYS)}"
            )
        tokenizer = tokenizer if tokenizer is not None else section_tokenizer
        if tokenizer is None:
            raise ValueError(
                f"the {cls.__name__} section has no `tokenizer` (a section such as {{type: LlamaTokenizer, "
                "tokenizer_file: ...}} or a path) and none was passed"
            )
        return cls(load_tokenizer(tokenizer), **options)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load_processor takes a dict (YAML section), a path or a processor; found {type(source).__name__}"
        )
    tok = tokenizer if tokenizer is not None else load_tokenizer(source)
    by_tokenizer = {PROCESSORS.get(n).tokenizer_class: PROCESSORS.get(n) for n in PROCESSORS.names()}
    cls = by_tokenizer.get(type(tok))
    if cls is None:
        raise ValueError(
            f"no processor is registered for {type(tok).__name__}; use a section such as "
            f"{{'type': one of {PROCESSORS.names()}, 'tokenizer': {os.fspath(source)!r}}}"
        )
    return cls(tok, **kwargs)
