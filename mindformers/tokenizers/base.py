"""``PreTrainedTokenizer``: one tokenizer class, backed by a ``tokenizers.Tokenizer`` (the Rust library) or, for
sentencepiece models, by a :class:`~.sentencepiece.SentencePieceTokenizer` (the ``sentencepiece`` library
behind the same API).

The backend does all the splitting, BPE merging, special-token matching, truncation, padding and decoding;
this class adds the Hugging Face API around it (names and semantics of transformers 5.x
``TokenizersBackend``): ``__call__``, ``encode``/``decode``, special tokens, ``apply_chat_template``,
``from_pretrained``/``save_pretrained``. Subclasses (``GPT2Tokenizer``, ``LlamaTokenizer``) only change
defaults, so a tokenizer behaves the same whatever class loaded it: the backend is the whole truth.

Which backend follows from the files (:mod:`.backends`): a Hugging Face ``tokenizer.json`` behaves as in
Hugging Face; a sentencepiece ``.model`` (or a GGUF sentencepiece vocabulary) gives sentencepiece's ids.
What a MindFormers preset adds (BOS/EOS, ``token_type_ids``) is stated in its YAML ``tokenizer:`` section as
options (``add_bos_token``, ``add_eos_token``, ``return_token_type_ids``), so the files themselves keep the
behaviour of the library that wrote them.

Ids for ``return_tensors="ms"`` are int32: MindSpore's ``ops.gather`` and ``nn.Embedding`` take int32 or
int64 indices on CPU, GPU and Ascend alike, int32 is what Ascend kernels and MindSpore datasets use and what
this suite's models cast labels and masks to, and vocabularies are far below 2**31. ``"np"`` gives int64
like transformers.
"""

import copy
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from tokenizers import AddedToken, Tokenizer, processors

from ..registry import TOKENIZERS
from ..utils import atomic_path, atomic_write_text, logger
from .backends import Backend, add_tokens_at_ids, build_backend
from .chat_template import compile_chat_template, render_chat_template
from .sentencepiece import SentencePieceTokenizer

VERY_LARGE_INTEGER = int(1e30)  # transformers' "no limit" model_max_length
LARGE_INTEGER = int(1e20)  # a model_max_length above this means "no limit" (transformers' test, too)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
RETURN_TENSORS = (None, "np", "ms")

TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE_SUFFIXES = (".json", ".model", ".gguf", ".txt", ".yaml", ".yml")
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

# Keyword arguments the constructors accept; YAML sections and from_pretrained overrides are checked
# against these (tokenizer_config.json files from other tools carry many more keys, which are ignored).
INIT_KEYS = (
    *SPECIAL_TOKEN_NAMES,
    "additional_special_tokens",
    "add_bos_token",
    "add_eos_token",
    "return_token_type_ids",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "chat_template",
    "name_or_path",
)
FILE_KEYS = ("tokenizer_file", "vocab_file", "merges_file")
BUILD_KEYS = ("add_prefix_space", "legacy", "added_tokens_decoder")
CONFIG_KEYS = INIT_KEYS + FILE_KEYS + BUILD_KEYS

TextInput = Union[str, Sequence[str]]


def _token_text(value: Any) -> Optional[str]:
    """A special token as written in a config: a string, an AddedToken or ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    raise TypeError(f"a special token must be a string, found {type(value).__name__}: {value!r}")


def _special_token_property(name: str) -> property:
    def get(self) -> Optional[str]:
        return self._special_tokens[name]

    def set_(self, value: Optional[str]) -> None:
        self._set_special_token(name, _token_text(value))

    return property(get, set_, doc=f"The {name.replace('_', ' ')} string, or None.")


def _special_id_property(name: str) -> property:
    def get(self) -> Optional[int]:
        token = self._special_tokens[name]
        return None if token is None else self._tokenizer.token_to_id(token)

    def set_(self, value: Optional[int]) -> None:
        self._set_special_token(name, None if value is None else self.convert_ids_to_tokens(int(value)))

    return property(get, set_, doc=f"The id of the {name.replace('_', ' ')}, or None.")


class PreTrainedTokenizer:
    """A tokenizer with the Hugging Face API, backed by a ``tokenizers.Tokenizer``.

    Build one with :meth:`from_pretrained` (a directory or a tokenizer file) or :meth:`from_files`; the
    constructor takes a ready backend.

    Args:
        tokenizer_object: the backend to use (used as it is, not copied): a ``tokenizers.Tokenizer`` or a
            :class:`~.sentencepiece.SentencePieceTokenizer`.
        bos_token, eos_token, unk_token, pad_token: special tokens (strings in the vocabulary); a string
            that is not yet an added token becomes a special added token. Unset ones fall back to the class's
            ``default_special_tokens`` when the vocabulary has them.
        additional_special_tokens: more special tokens (skipped by ``decode(skip_special_tokens=True)``).
        add_bos_token, add_eos_token: add BOS/EOS around each sequence. ``None`` keeps the backend's own
            post-processor (from tokenizer.json) if it has one, else adds neither.
        return_token_type_ids: ``__call__`` also returns ``token_type_ids`` (0 for the first sequence and its
            special tokens, 1 for a pair's second), as MindFormers' GPT-2 tokenizer does; default False.
        model_max_length: longest input the model takes; the default for ``truncation``/``max_length``.
        padding_side: ``"right"`` or ``"left"`` (default: the class's ``padding_side``).
        truncation_side: ``"right"`` (default) or ``"left"``.
        chat_template: a Jinja2 chat template, or a dict of named templates (``"default"`` is used).
        name_or_path: where the tokenizer came from (informational).
    """

    default_special_tokens: Dict[str, str] = {}
    padding_side: str = "right"

    def __init__(
        self,
        tokenizer_object: Backend,
        *,
        bos_token: Optional[str] = None,
        eos_token: Optional[str] = None,
        unk_token: Optional[str] = None,
        pad_token: Optional[str] = None,
        additional_special_tokens: Optional[Iterable[str]] = None,
        add_bos_token: Optional[bool] = None,
        add_eos_token: Optional[bool] = None,
        return_token_type_ids: bool = False,
        model_max_length: Optional[int] = None,
        padding_side: Optional[str] = None,
        truncation_side: Optional[str] = None,
        chat_template: Union[str, Dict[str, str], None] = None,
        name_or_path: str = "",
    ):
        if not isinstance(tokenizer_object, (Tokenizer, SentencePieceTokenizer)):
            raise TypeError(
                "tokenizer_object must be a tokenizers.Tokenizer or a SentencePieceTokenizer, found "
                f"{type(tokenizer_object).__name__}; to load files use {type(self).__name__}.from_pretrained(path) "
                "or .from_files(...)"
            )
        self._tokenizer = tokenizer_object
        # A tokenizer.json may carry its own truncation/padding settings; like transformers we take the pad
        # token from them and otherwise configure truncation and padding per call.
        saved_padding = tokenizer_object.padding
        tokenizer_object.no_truncation()
        tokenizer_object.no_padding()
        if pad_token is None and saved_padding:
            pad_token = saved_padding.get("pad_token")

        given = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token)
        self._special_tokens: Dict[str, Optional[str]] = {}
        for name in SPECIAL_TOKEN_NAMES:
            token = _token_text(given[name])
            default = self.default_special_tokens.get(name)
            if token is None and default is not None and tokenizer_object.token_to_id(default) is not None:
                token = default
            self._special_tokens[name] = token
        self.additional_special_tokens: List[str] = [_token_text(t) for t in additional_special_tokens or ()]
        self._register_special_tokens([*self._special_tokens.values(), *self.additional_special_tokens])

        self.model_max_length = VERY_LARGE_INTEGER if model_max_length is None else int(model_max_length)
        self.padding_side = self._check_side("padding_side", padding_side or type(self).padding_side)
        self.truncation_side = self._check_side("truncation_side", truncation_side or "right")
        self.chat_template = chat_template
        self.name_or_path = name_or_path
        self.return_token_type_ids = bool(return_token_type_ids)

        if add_bos_token is None and add_eos_token is None and tokenizer_object.post_processor is not None:
            # Keep the post-processor the file came with; report what it actually adds.
            self._add_bos_token, self._add_eos_token = self._detect_bos_eos()
        else:
            self._add_bos_token, self._add_eos_token = bool(add_bos_token), bool(add_eos_token)
            self._update_post_processor()

    # ------------------------------------------------------------------ construction from files

    @classmethod
    def from_files(
        cls,
        *,
        tokenizer_file: Optional[str] = None,
        vocab_file: Optional[str] = None,
        merges_file: Optional[str] = None,
        add_prefix_space: Optional[bool] = None,
        legacy: Optional[bool] = None,
        added_tokens_decoder: Optional[Dict[str, Any]] = None,
        added_tokens_source: Optional[str] = None,
        **kwargs: Any,
    ) -> "PreTrainedTokenizer":
        """Build a tokenizer from tokenizer files (the form a YAML ``tokenizer:`` section uses).

        Args:
            tokenizer_file: ``tokenizer.json``, a sentencepiece ``.model`` or a ``.gguf`` file.
            vocab_file, merges_file: GPT-2 style ``vocab.json`` + ``merges.txt`` (or a ``.model`` as vocab_file).
            add_prefix_space: byte-level BPE: add a leading space; sentencepiece: the "▁" dummy prefix
                (default: the model's ``add_dummy_prefix``).
            legacy: sentencepiece: ``False`` puts no dummy prefix on text after a special token
                (transformers' ``legacy=False``); default: as sentencepiece and llama.cpp (see :mod:`.sentencepiece`).
            added_tokens_decoder: extra added tokens at fixed ids (tokenizer_config.json's field).
            added_tokens_source: the file ``added_tokens_decoder`` was read from, for error messages.
            kwargs: constructor arguments (special tokens, ``model_max_length``, ...); they override what
                the file states (a GGUF's special tokens and chat template, a .model's BOS/EOS pieces).

        Returns:
            The tokenizer.
        """
        unknown = sorted(set(kwargs) - set(INIT_KEYS))
        if unknown:
            raise ValueError(
                f"unknown tokenizer option(s) {unknown} for {cls.__name__}; valid options: {sorted(CONFIG_KEYS)}"
            )
        backend, file_config = build_backend(
            tokenizer_file=tokenizer_file,
            vocab_file=vocab_file,
            merges_file=merges_file,
            add_prefix_space=add_prefix_space,
            legacy=legacy,
        )
        if added_tokens_decoder:
            where = f"added_tokens_decoder of {added_tokens_source or 'the tokenizer options'} (vocabulary: " \
                    f"{tokenizer_file or vocab_file})"
            add_tokens_at_ids(backend, added_tokens_decoder, where=where)
        kwargs.setdefault("name_or_path", tokenizer_file or vocab_file)
        return cls(backend, **{**file_config, **kwargs})

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **kwargs: Any) -> "PreTrainedTokenizer":
        """Load a tokenizer from a directory, a single tokenizer file or a preset name.

        A directory in Hugging Face layout holds one of (looked for in this order) ``tokenizer.json``,
        ``tokenizer.model`` (sentencepiece), ``vocab.json`` + ``merges.txt``, or one ``*.gguf`` (choose with
        ``gguf_file=`` when there are several), plus optional ``tokenizer_config.json``,
        ``special_tokens_map.json`` and ``chat_template.jinja``. A file is ``tokenizer.json``, a
        sentencepiece ``*.model`` or a ``*.gguf``. A name that is no local path is a preset
        (:func:`mindformers.list_presets`): ``GPT2Tokenizer.from_pretrained("gpt2")`` builds what the preset's
        YAML ``processor.tokenizer`` section says, and fails if that is not a ``GPT2Tokenizer``.

        Args:
            path: the directory, file or preset name.
            kwargs: options overriding the files' (see :meth:`from_files`), and ``gguf_file``.

        Returns:
            The tokenizer.
        """
        path = os.fspath(path)
        if is_preset_name(path):
            from .loading import load_preset_tokenizer  # loading.py imports this module

            return load_preset_tokenizer(path, cls, **kwargs)
        gguf_file = kwargs.pop("gguf_file", None)
        if os.path.isdir(path):
            files, config, _ = read_pretrained_dir(path, gguf_file=gguf_file)
        elif os.path.isfile(path):
            files, config = {"tokenizer_file": path}, {}
        else:
            raise FileNotFoundError(f"no tokenizer directory or file at {path}")
        config.update(kwargs)
        config.setdefault("name_or_path", path)
        return cls.from_files(**files, **config)

    # ------------------------------------------------------------------ special tokens

    bos_token = _special_token_property("bos_token")
    eos_token = _special_token_property("eos_token")
    unk_token = _special_token_property("unk_token")
    pad_token = _special_token_property("pad_token")
    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    pad_token_id = _special_id_property("pad_token")

    def _set_special_token(self, name: str, token: Optional[str]) -> None:
        if token is not None and self._tokenizer.token_to_id(token) is None:
            raise ValueError(
                f"{token!r} is not in the vocabulary, so it cannot be the {name}; use an existing token "
                f"(e.g. tokenizer.{name} = tokenizer.eos_token) or add it with "
                f"tokenizer.add_special_tokens({{{name!r}: {token!r}}})"
            )
        self._special_tokens[name] = token
        if name in ("bos_token", "eos_token") and (self._add_bos_token or self._add_eos_token):
            self._update_post_processor()

    def _register_special_tokens(self, tokens: Iterable[Optional[str]]) -> int:
        """Make each token a special added token of the backend (new ids for ones not in the vocabulary)."""
        present = {t.content for t in self._tokenizer.get_added_tokens_decoder().values()}
        new = [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(tokens) if t and t not in present]
        return self._tokenizer.add_special_tokens(new) if new else 0

    @property
    def special_tokens_map(self) -> Dict[str, Any]:
        """The set special tokens by name (``additional_special_tokens`` as a list), as chat templates see them."""
        named: Dict[str, Any] = {k: v for k, v in self._special_tokens.items() if v is not None}
        if self.additional_special_tokens:
            named["additional_special_tokens"] = list(self.additional_special_tokens)
        return named

    @property
    def all_special_tokens(self) -> List[str]:
        """Every special token: the named ones, then the additional ones, without repeats."""
        return list(dict.fromkeys(t for t in [*self._special_tokens.values(), *self.additional_special_tokens] if t))

    @property
    def all_special_ids(self) -> List[int]:
        """Ids of :attr:`all_special_tokens`."""
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    def add_special_tokens(self, special_tokens_dict: Dict[str, Any]) -> int:
        """Set (and add to the vocabulary if new) named special tokens.

        Args:
            special_tokens_dict: keys among ``bos_token``, ``eos_token``, ``unk_token``, ``pad_token`` and
                ``additional_special_tokens`` (a list, appended).

        Returns:
            How many tokens were new to the vocabulary.
        """
        valid = (*SPECIAL_TOKEN_NAMES, "additional_special_tokens")
        unknown = sorted(set(special_tokens_dict) - set(valid))
        if unknown:
            raise ValueError(f"unknown special token name(s) {unknown}; valid names: {list(valid)}")
        added = 0
        for name, value in special_tokens_dict.items():
            if name == "additional_special_tokens":
                tokens = [_token_text(t) for t in value]
                added += self._register_special_tokens(tokens)
                self.additional_special_tokens = list(dict.fromkeys([*self.additional_special_tokens, *tokens]))
            else:
                token = _token_text(value)
                added += self._register_special_tokens([token])
                self._set_special_token(name, token)
        return added

    def add_tokens(
        self, new_tokens: Union[str, AddedToken, Sequence[Union[str, AddedToken]]], special_tokens: bool = False
    ) -> int:
        """Add tokens to the vocabulary (matched whole in text, given the next free ids).

        Args:
            new_tokens: a token or a list of tokens (strings or ``tokenizers.AddedToken``).
            special_tokens: mark string tokens special (not normalized, skipped when decoding with
                ``skip_special_tokens=True``).

        Returns:
            How many tokens became added tokens (as transformers counts: a token already in the base
            vocabulary counts too, it keeps its id and is now matched whole).
        """
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        tokens = [
            t if isinstance(t, AddedToken) else AddedToken(t, normalized=not special_tokens, special=special_tokens)
            for t in new_tokens
        ]
        return self._tokenizer.add_tokens(tokens)

    # ------------------------------------------------------------------ BOS / EOS post-processing

    @property
    def add_bos_token(self) -> bool:
        """Whether BOS is put before each sequence (setting it rebuilds the post-processor)."""
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = bool(value)
        self._update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        """Whether EOS is put after each sequence (setting it rebuilds the post-processor)."""
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = bool(value)
        self._update_post_processor()

    def encode_prompts(self, texts: Sequence[str]) -> List[List[int]]:
        """Token ids of generation prompts: the special tokens the tokenizer adds, except a closing EOS (a
        prompt goes on; MindFormers' GPT-2 tokenizer puts EOS after every text)."""
        rows = self(list(texts), return_attention_mask=False)["input_ids"]
        eos = self.eos_token_id
        if self.add_eos_token and eos is not None:
            rows = [row[:-1] if row and row[-1] == eos else row for row in rows]
        return rows

    def _update_post_processor(self) -> None:
        # transformers' TokenizersBackend.update_post_processor: "<bos>:0 $A:0 <eos>:0" for one sequence.
        bos, eos = self.bos_token, self.eos_token
        if self._add_bos_token and bos is None:
            raise ValueError("add_bos_token=True needs a bos_token, but this tokenizer has none; set bos_token=...")
        if self._add_eos_token and eos is None:
            raise ValueError("add_eos_token=True needs an eos_token, but this tokenizer has none; set eos_token=...")
        head = f"{bos}:0 " if self._add_bos_token else ""
        tail = f" {eos}:0" if self._add_eos_token else ""
        single = f"{head}$A:0{tail}"
        pair = f"{single}{f' {bos}:1' if self._add_bos_token else ''} $B:1{f' {eos}:1' if self._add_eos_token else ''}"
        special = []
        if self._add_bos_token:
            special.append((bos, self.bos_token_id))
        if self._add_eos_token and eos != bos:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)

    def _detect_bos_eos(self) -> Tuple[bool, bool]:
        """What the backend's own post-processor adds, found by post-processing an empty sequence."""
        ids = self._tokenizer.encode("", add_special_tokens=True).ids
        adds_bos = bool(ids) and self.bos_token_id is not None and ids[0] == self.bos_token_id
        rest = ids[1:] if adds_bos else ids
        adds_eos = bool(rest) and self.eos_token_id is not None and rest[-1] == self.eos_token_id
        return adds_bos, adds_eos

    @property
    def model_input_names(self) -> Tuple[str, ...]:
        """The keys ``__call__`` returns by default (with ``token_type_ids`` if ``return_token_type_ids``)."""
        if self.return_token_type_ids:
            return ("input_ids", "token_type_ids", "attention_mask")
        return ("input_ids", "attention_mask")

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without tokens added on top of it."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> Dict[str, int]:
        """token -> id for the full vocabulary, added tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> Dict[int, AddedToken]:
        """id -> ``AddedToken`` for every added token (special ones included)."""
        return self._tokenizer.get_added_tokens_decoder()

    @property
    def backend_tokenizer(self) -> Backend:
        """The backend doing the work: a ``tokenizers.Tokenizer``, or for a sentencepiece model a
        :class:`~.sentencepiece.SentencePieceTokenizer` (same ``encode``/``encode_batch``/``decode`` API)."""
        return self._tokenizer

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[Optional[int], List[Optional[int]]]:
        """Id of a token (or ids of a list of tokens); a token not in the vocabulary gives ``unk_token_id``."""
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = False
    ) -> Union[str, List[str]]:
        """Token of an id (or tokens of a list of ids, optionally without special tokens)."""
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(self._check_ids([int(ids)])[0])
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(i) for i in self._check_ids(self._as_id_list(ids)) if i not in special]

    def tokenize(self, text: str, pair: Optional[str] = None, add_special_tokens: bool = False) -> List[str]:
        """The tokens ``text`` is split into (``["Hello", "Ġworld"]``)."""
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    # ------------------------------------------------------------------ encoding

    def __call__(
        self,
        text: TextInput,
        text_pair: Optional[TextInput] = None,
        *,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        pad_to_multiple_of: Optional[int] = None,
        padding_side: Optional[str] = None,
        return_tensors: Optional[str] = None,
        return_token_type_ids: Optional[bool] = None,
        return_attention_mask: bool = True,
    ) -> Dict[str, Any]:
        """Tokenize a text or a batch of texts.

        Args:
            text: a string, or a list of strings (a batch).
            text_pair: an optional second sequence (or list of them) for pair inputs.
            add_special_tokens: add BOS/EOS as the tokenizer is configured to.
            padding: ``False``/``"do_not_pad"``; ``True``/``"longest"`` (to the longest in the batch);
                ``"max_length"`` (to ``max_length``, default ``model_max_length``). Needs a pad token.
            truncation: ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"`` or ``False``. Cuts to
                ``max_length`` (default ``model_max_length``), special tokens included. ``None`` (default)
                truncates only when ``max_length`` is given and ``padding`` is off, as transformers does.
            max_length: length to truncate or pad to.
            pad_to_multiple_of: round padded lengths up to a multiple of this.
            padding_side: ``"right"`` or ``"left"`` for this call (default ``self.padding_side``).
            return_tensors: ``None`` (Python lists), ``"np"`` (int64 arrays) or ``"ms"`` (MindSpore int32
                Tensors; see the module docstring). Tensors always have a batch axis: ``[batch, length]``.
            return_token_type_ids: also return ``token_type_ids`` (0 for the first sequence, 1 for the pair's
                second); default: the tokenizer's ``return_token_type_ids``.
            return_attention_mask: also return ``attention_mask`` (1 for tokens, 0 for padding).

        Returns:
            ``{"input_ids": ..., "token_type_ids": ..., "attention_mask": ...}`` (the keys asked for): lists for
            one string, lists of lists for a batch, or ``[batch, length]`` arrays/Tensors.
        """
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(
                f"return_tensors must be one of {RETURN_TENSORS} (None: lists, 'np': numpy int64, 'ms': MindSpore "
                f"int32); got {return_tensors!r}"
            )
        texts, batched = self._as_batch("text", text)
        pairs = None
        if text_pair is not None:
            pairs, pair_batched = self._as_batch("text_pair", text_pair)
            if pair_batched != batched or len(pairs) != len(texts):
                raise ValueError(
                    f"text_pair must match text: a string for a string, a list of the same length for a list; "
                    f"got {len(texts)} text(s) and {len(pairs)} pair(s)"
                )
        encodings = self._encode_batch(
            texts,
            pairs,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
        )
        output = {"input_ids": [e.ids for e in encodings]}
        if self.return_token_type_ids if return_token_type_ids is None else return_token_type_ids:
            output["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            output["attention_mask"] = [e.attention_mask for e in encodings]
        if return_tensors is not None:
            return {key: _to_tensor(value, return_tensors, key) for key, value in output.items()}
        return output if batched else {key: value[0] for key, value in output.items()}

    def encode(
        self,
        text: str,
        text_pair: Optional[str] = None,
        *,
        add_special_tokens: bool = True,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
    ):
        """Token ids of one text (``[batch=1, length]`` tensor if ``return_tensors`` is set); see ``__call__``."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes one string, found {type(text).__name__}; for a batch call tokenizer(texts)")
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
            return_token_type_ids=False,
            return_attention_mask=False,
        )["input_ids"]

    @staticmethod
    def _as_batch(name: str, text: Any) -> Tuple[List[str], bool]:
        if isinstance(text, str):
            return [text], False
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return list(text), True
        found = type(text).__name__
        if isinstance(text, (list, tuple)):
            found = f"a list holding {sorted({type(t).__name__ for t in text})}"
        raise TypeError(f"{name} must be a string or a list of strings, found {found}")

    def _encode_batch(
        self,
        texts: List[str],
        pairs: Optional[List[str]],
        *,
        add_special_tokens: bool,
        padding: Union[bool, str],
        truncation: Union[bool, str, None],
        max_length: Optional[int],
        pad_to_multiple_of: Optional[int],
        padding_side: Optional[str],
    ):
        padding = _padding_strategy(padding)
        truncation = _truncation_strategy(truncation, max_length, padding)
        if padding is not None and self.pad_token_id is None:
            raise ValueError(
                f"padding={padding!r} needs a pad token, but this tokenizer has none. Set one: "
                f"tokenizer.pad_token = tokenizer.eos_token (here {self.eos_token!r}), or add a new one with "
                "tokenizer.add_special_tokens({'pad_token': '<pad>'})"
            )
        if max_length is None and self.model_max_length < LARGE_INTEGER:
            max_length = self.model_max_length if (truncation or padding == "max_length") else None
        if padding == "max_length" and max_length is None:
            raise ValueError(
                "padding='max_length' needs a length: pass max_length=... (this tokenizer's model_max_length is unset)"
            )
        backend = self._tokenizer
        if truncation and max_length is not None:
            needed = backend.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
            if max_length < needed:
                raise ValueError(
                    f"max_length={max_length} is shorter than the {needed} special token(s) added to each "
                    "sequence; use a larger max_length or add_special_tokens=False"
                )
        inputs = texts if pairs is None else list(zip(texts, pairs))
        # Truncation and padding are settings of the Rust tokenizer; they are set for this call only and
        # cleared again, so calls do not leak settings into each other (one tokenizer is not meant to be
        # shared by threads that pass different settings).
        try:
            if truncation and max_length is not None:
                backend.enable_truncation(max_length, strategy=truncation, direction=self.truncation_side)
            if padding is not None:
                backend.enable_padding(
                    direction=self._check_side("padding_side", padding_side or self.padding_side),
                    pad_id=self.pad_token_id,
                    pad_token=self.pad_token,
                    length=max_length if padding == "max_length" else None,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            return backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            backend.no_truncation()
            backend.no_padding()

    # ------------------------------------------------------------------ decoding

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids.

        Args:
            token_ids: an int, a list of ints, a 1-D numpy array or MindSpore Tensor.
            skip_special_tokens: leave out special tokens (BOS, EOS, padding, chat markers).

        Returns:
            The decoded string.
        """
        ids = self._check_ids(self._as_id_list(token_ids))
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> List[str]:
        """Texts of a batch of id sequences (a list of lists, or a 2-D array/Tensor); see :meth:`decode`."""
        if hasattr(sequences, "asnumpy"):
            sequences = sequences.asnumpy()
        batch = [self._check_ids(self._as_id_list(s)) for s in sequences]
        return self._tokenizer.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    @staticmethod
    def _as_id_list(ids: Any) -> List[int]:
        if hasattr(ids, "asnumpy"):  # mindspore.Tensor
            ids = ids.asnumpy()
        if isinstance(ids, (int, np.integer)):
            return [int(ids)]
        array = np.asarray(ids)
        if array.ndim > 1:
            raise ValueError(
                f"decode takes one sequence of ids, found shape {array.shape}; use batch_decode for a batch"
            )
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"token ids must be integers, found {array.dtype}")
        return [int(i) for i in array.reshape(-1)]

    def _check_ids(self, ids: List[int]) -> List[int]:
        size = len(self)
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise ValueError(
                f"token id(s) {bad[:5]} are outside the vocabulary [0, {size}); remove padding or label "
                "placeholders (such as -100) before decoding"
            )
        return ids

    # ------------------------------------------------------------------ chat templates

    def get_chat_template(self, chat_template: Optional[str] = None) -> str:
        """The template to render: ``chat_template`` itself, one of this tokenizer's named templates, or its
        default; raises ``ValueError`` if there is none."""
        templates = self.chat_template
        if isinstance(templates, dict):
            if chat_template is not None and chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if "default" not in templates:
                    raise ValueError(
                        f"this tokenizer has several chat templates {sorted(templates)} and none is 'default'; "
                        "pass chat_template=<name>"
                    )
                return templates["default"]
        if chat_template is not None:
            return chat_template
        if templates is None:
            raise ValueError(
                f"tokenizer {self.name_or_path or type(self).__name__!r} has no chat template (none in its "
                "tokenizer_config.json, chat_template.jinja or GGUF metadata); pass chat_template='...' or set "
                "tokenizer.chat_template"
            )
        return templates

    def apply_chat_template(
        self,
        conversation: Union[List[Dict[str, Any]], List[List[Dict[str, Any]]]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        return_tensors: Optional[str] = None,
        chat_template: Optional[str] = None,
        *,
        return_dict: bool = True,
        padding: Union[bool, str] = False,
        truncation: bool = False,
        max_length: Optional[int] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        documents: Optional[List[Dict[str, Any]]] = None,
        **template_kwargs: Any,
    ):
        """Render a conversation (or a batch of them) with the chat template, and tokenize it.

        Rendering matches transformers (see :mod:`.chat_template`); the special tokens (``bos_token``, ...) are
        template variables. The rendered text is tokenized with ``add_special_tokens=False``: the template
        writes any BOS itself.

        Args:
            conversation: a list of ``{"role", "content"}`` messages, or a list of such lists (a batch).
            tokenize: return token ids; ``False`` returns the rendered string(s).
            add_generation_prompt: end with the header of an assistant turn, for generation.
            return_tensors: ``None``, ``"np"`` or ``"ms"`` (as in ``__call__``).
            chat_template: a template string or the name of one of this tokenizer's templates.
            return_dict: with ``tokenize``, return ``{"input_ids", "attention_mask"}`` (transformers 5 default);
                ``False`` returns the ids alone.
            padding, truncation, max_length: as in ``__call__``, for batches.
            tools, documents: passed to the template.
            template_kwargs: more template variables.

        Returns:
            The rendered string(s), or the tokenized output (see ``return_dict``).
        """
        template = self.get_chat_template(chat_template)
        if not isinstance(conversation, (list, tuple)) or not conversation:
            raise ValueError("conversation must be a non-empty list of messages (or a list of conversations)")
        batched = isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        for index, chat in enumerate(conversations):
            if not isinstance(chat, (list, tuple)) or not chat:
                raise ValueError(f"conversation {index} is empty or not a list of messages: {chat!r}")
        rendered = render_chat_template(
            template,
            conversations,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            **{**self.special_tokens_map, **template_kwargs},
        )
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(
            rendered if batched else rendered[0],
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
        )
        return out if return_dict else out["input_ids"]

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory: Union[str, os.PathLike]) -> Tuple[str, ...]:
        """Write the backend's file, ``tokenizer_config.json``, ``special_tokens_map.json`` (and
        ``chat_template.jinja``) so that this class loads the same ids back.

        A ``tokenizers`` backend is written as ``tokenizer.json`` with ``tokenizer_class`` ``"TokenizersBackend"``:
        transformers then loads tokenizer.json as it is (a model class such as its ``LlamaTokenizer`` would
        rebuild the pre-tokenizer from defaults), so it gives the same ids too. A sentencepiece backend is
        written as the ``tokenizer.model`` it was read from, with this class's name; transformers converts such
        a file its own way (see :mod:`.sentencepiece` for where that differs). Each file is written atomically.

        Args:
            save_directory: the directory (created if missing).

        Returns:
            The paths written.
        """
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            raise NotADirectoryError(f"save_pretrained needs a directory, {save_directory} is a file")
        sentencepiece = isinstance(self._tokenizer, SentencePieceTokenizer)
        if sentencepiece and os.path.exists(os.path.join(save_directory, TOKENIZER_FILE)):
            raise FileExistsError(
                f"{save_directory} holds a {TOKENIZER_FILE}, which loaders read before the {SENTENCEPIECE_FILE} "
                "this sentencepiece tokenizer writes, so the folder would load another tokenizer; save into a "
                f"folder without {TOKENIZER_FILE}"
            )
        os.makedirs(save_directory, exist_ok=True)
        config: Dict[str, Any] = {
            "tokenizer_class": type(self).__name__ if sentencepiece else "TokenizersBackend",
            **self._special_tokens,
            "additional_special_tokens": list(self.additional_special_tokens),
            "add_bos_token": self._add_bos_token,
            "add_eos_token": self._add_eos_token,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "model_input_names": list(self.model_input_names),
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {
                str(index): {
                    "content": token.content,
                    "lstrip": token.lstrip,
                    "normalized": token.normalized,
                    "rstrip": token.rstrip,
                    "single_word": token.single_word,
                    "special": token.special,
                }
                for index, token in sorted(self.added_tokens_decoder.items())
            },
        }
        if sentencepiece:
            options = {"add_prefix_space": self._tokenizer.add_prefix_space, "legacy": self._tokenizer.legacy}
            config.update({key: value for key, value in options.items() if value is not None})
            backend_file = {SENTENCEPIECE_FILE: self._tokenizer.serialized_model_proto()}
        else:
            backend_file = {TOKENIZER_FILE: self._tokenizer.to_str(pretty=True)}
        files: Dict[str, Union[str, bytes]] = {
            **backend_file,
            TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            SPECIAL_TOKENS_MAP_FILE: json.dumps(self.special_tokens_map, indent=2, ensure_ascii=False) + "\n",
        }
        if isinstance(self.chat_template, str):
            files[CHAT_TEMPLATE_FILE] = self.chat_template
        elif isinstance(self.chat_template, dict):  # named templates: the older list form of tokenizer_config
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
            files[TOKENIZER_CONFIG_FILE] = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        written = []
        for name, content in files.items():
            path = os.path.join(save_directory, name)
            if isinstance(content, bytes):
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    f.write(content)
            else:
                atomic_write_text(path, content)
            written.append(path)
        return tuple(written)

    # ------------------------------------------------------------------ misc

    @staticmethod
    def _check_side(name: str, side: str) -> str:
        if side not in ("left", "right"):
            raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        return side

    def __repr__(self) -> str:
        special = ", ".join(f"{k}={v!r}" for k, v in self._special_tokens.items() if v is not None)
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"len={len(self)}, {special}, add_bos_token={self._add_bos_token}, padding_side={self.padding_side!r}, "
            f"model_max_length={self.model_max_length})"
        )

    def __copy__(self) -> "PreTrainedTokenizer":
        # A copy shares nothing mutable with the original (the Rust backend is copied too), so setting a
        # pad token or adding tokens to the copy leaves the original as it was.
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        if isinstance(self._tokenizer, SentencePieceTokenizer):
            new._tokenizer = copy.copy(self._tokenizer)
        else:
            new._tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
        new._special_tokens = dict(self._special_tokens)
        new.additional_special_tokens = list(self.additional_special_tokens)
        new.chat_template = copy.deepcopy(self.chat_template)
        return new

    def __deepcopy__(self, memo: Dict[int, Any]) -> "PreTrainedTokenizer":
        return self.__copy__()


TOKENIZERS.register(PreTrainedTokenizer)


def is_preset_name(source: str) -> bool:
    """Whether ``source`` can only mean a preset: no such path, and nothing that marks a path (a separator,
    an ``assets:``/``package:`` prefix, a file extension)."""
    return (
        not os.path.exists(source)
        and os.sep not in source
        and ":" not in source
        and not source.endswith(TOKENIZER_FILE_SUFFIXES)
    )


def _padding_strategy(padding: Union[bool, str, None]) -> Optional[str]:
    if padding is None or padding is False or padding == "do_not_pad":
        return None
    if padding is True or padding == "longest":
        return "longest"
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding must be False/'do_not_pad', True/'longest' or 'max_length'; got {padding!r}")


def _truncation_strategy(
    truncation: Union[bool, str, None], max_length: Optional[int], padding: Optional[str]
) -> Optional[str]:
    if truncation is None:
        # transformers: a max_length without padding means "truncate to it".
        return "longest_first" if max_length is not None and padding is None else None
    if truncation is False or truncation == "do_not_truncate":
        return None
    if truncation is True:
        return "longest_first"
    if truncation in ("longest_first", "only_first", "only_second"):
        return truncation
    raise ValueError(
        "truncation must be True/'longest_first', 'only_first', 'only_second' or False/'do_not_truncate'; "
        f"got {truncation!r}"
    )


def _to_tensor(rows: List[List[int]], kind: str, key: str):
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"cannot make a tensor of {key}: the sequences have different lengths {lengths}; pass padding=True "
            "(pad to the longest) or padding='max_length' with max_length=..."
        )
    array = np.asarray(rows, dtype=np.int64).reshape(len(rows), lengths[0] if lengths else 0)
    if kind == "np":
        return array
    import mindspore  # imported here: `import mindformers.tokenizers` must not pay for MindSpore

    return mindspore.Tensor(array.astype(np.int32))


def _checked_chat_template(template: Any, where: str) -> Union[str, Dict[str, str]]:
    """A chat template read from ``where``: a string, or named templates (a ``{name: template}`` dict or
    tokenizer_config.json's list of ``{"name", "template"}``); each must compile, so a broken one is reported
    with its file when the tokenizer loads rather than at the first ``apply_chat_template``."""
    if isinstance(template, list):
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str) and "template" in t for t in template):
            raise ValueError(f"{where}: chat_template as a list must hold {{'name': ..., 'template': ...}} objects, "
                             f"found {str(template)[:120]}")
        template = {t["name"]: t["template"] for t in template}
    named = template if isinstance(template, dict) else {None: template}
    for name, text in named.items():
        label = "chat_template" if name is None else f"chat template {name!r}"
        if not isinstance(text, str):
            raise ValueError(f"{where}: {label} must be a string (a Jinja2 template), found {type(text).__name__} "
                             f"{text!r:.60}")
        try:
            compile_chat_template(text)
        except ValueError as err:
            raise ValueError(f"{where}: {label}: {err}; fix the template or remove it") from None
    return template


def read_pretrained_dir(
    path: str, gguf_file: Optional[str] = None
) -> Tuple[Dict[str, str], Dict[str, Any], Optional[str]]:
    """Find the tokenizer files of a Hugging Face style directory and read its settings.

    Args:
        path: the directory.
        gguf_file: the name of the GGUF file to use when the directory has several.

    Returns:
        ``(files, config, tokenizer_class)``: the file arguments for :meth:`PreTrainedTokenizer.from_files`,
        the settings from tokenizer_config.json / special_tokens_map.json / chat_template.jinja (only keys
        this package knows; others are ignored), and the ``tokenizer_class`` the config names (or None).
    """
    names = set(os.listdir(path))
    join = lambda name: os.path.join(path, name)  # noqa: E731
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if gguf_file is not None:
        if gguf_file not in names:
            raise FileNotFoundError(f"gguf_file={gguf_file!r} is not in {path}; GGUF files there: {ggufs or 'none'}")
        files = {"tokenizer_file": join(gguf_file)}
    elif TOKENIZER_FILE in names:
        files = {"tokenizer_file": join(TOKENIZER_FILE)}
    elif SENTENCEPIECE_FILE in names:
        files = {"tokenizer_file": join(SENTENCEPIECE_FILE)}
    elif VOCAB_FILE in names and MERGES_FILE in names:
        files = {"vocab_file": join(VOCAB_FILE), "merges_file": join(MERGES_FILE)}
    elif len(ggufs) == 1:
        files = {"tokenizer_file": join(ggufs[0])}
    else:
        looked_for = f"{TOKENIZER_FILE}, {SENTENCEPIECE_FILE}, {VOCAB_FILE} + {MERGES_FILE}, or one *.gguf"
        hint = f" (several GGUF files {ggufs}: choose one with gguf_file=...)" if len(ggufs) > 1 else ""
        raise FileNotFoundError(
            f"no tokenizer files in {path}: looked for {looked_for}; "
            f"found {sorted(names) or 'an empty directory'}{hint}"
        )

    raw: Dict[str, Any] = {}
    source: Dict[str, str] = {}  # key -> the file that set it, for error messages
    for name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):  # the second wins, as in transformers v4
        if name in names:
            try:
                with open(join(name), encoding="utf-8") as f:
                    data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{join(name)} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{join(name)}: expected a JSON object, found {type(data).__name__}")
            data = {k: v for k, v in data.items() if not (name == SPECIAL_TOKENS_MAP_FILE and v is None)}
            raw.update(data)
            source.update(dict.fromkeys(data, join(name)))
    if CHAT_TEMPLATE_FILE in names:
        with open(join(CHAT_TEMPLATE_FILE), encoding="utf-8") as f:
            raw["chat_template"] = f.read()
        source["chat_template"] = join(CHAT_TEMPLATE_FILE)

    tokenizer_class = raw.pop("tokenizer_class", None)
    # transformers 5 calls additional special tokens "extra_special_tokens" (a list, or a name -> token dict).
    extra = raw.pop("extra_special_tokens", None)
    if extra and not raw.get("additional_special_tokens"):
        raw["additional_special_tokens"] = list(extra.values()) if isinstance(extra, dict) else list(extra)
    if raw.get("chat_template") is not None:
        raw["chat_template"] = _checked_chat_template(raw["chat_template"], source["chat_template"])
    for key in (*SPECIAL_TOKEN_NAMES, "additional_special_tokens"):
        if key in raw and raw[key] is not None:
            try:
                raw[key] = (
                    [_token_text(t) for t in raw[key]] if key == "additional_special_tokens" else _token_text(raw[key])
                )
            except TypeError as err:
                raise ValueError(f"{source.get(key, path)}: {key}: {err}") from None
    if isinstance(raw.get("model_input_names"), list) and "return_token_type_ids" not in raw:
        raw["return_token_type_ids"] = "token_type_ids" in raw["model_input_names"]
    config = {k: v for k, v in raw.items() if k in CONFIG_KEYS and k not in FILE_KEYS and k != "name_or_path"}
    ignored = sorted(set(raw) - set(config))
    if ignored:
        logger.debug("tokenizer config keys not used by mindformers in %s: %s", path, ignored)
    if config.get("added_tokens_decoder"):
        config["added_tokens_source"] = source["added_tokens_decoder"]
    if "tokenizer_file" in files and files["tokenizer_file"].endswith(".json"):
        config.pop("legacy", None)  # tokenizer.json is used as it is; legacy only shapes a .model conversion
        config.pop("add_prefix_space", None)
    return files, config, tokenizer_class
