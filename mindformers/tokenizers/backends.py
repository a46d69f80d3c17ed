"""Build the backend that does the work, from whichever tokenizer files a checkpoint has.

| file(s)                        | backend                                                                      |
|--------------------------------|------------------------------------------------------------------------------|
| ``tokenizer.json``             | a ``tokenizers.Tokenizer``, loaded as it is: Hugging Face's behaviour         |
| ``vocab.json`` + ``merges.txt``| a ``tokenizers.Tokenizer``: byte-level BPE as transformers' ``GPT2Tokenizer`` |
| ``*.model`` (sentencepiece)    | a :class:`~.sentencepiece.SentencePieceTokenizer`: sentencepiece's own ids    |
| ``*.gguf``                     | the tokenizer in the GGUF metadata (:mod:`.gguf`); sentencepiece vocabularies |
|                                | ("llama") as for a ``.model``, byte-level BPE ("gpt2") as llama.cpp splits it |
"""

import os
from typing import Any, Dict, Optional, Tuple, Union

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .gguf import gguf_to_tokenizer
from .sentencepiece import SentencePieceTokenizer, sentencepiece_to_tokenizer

Backend = Union[Tokenizer, SentencePieceTokenizer]


def byte_level_bpe_tokenizer(vocab_file: str, merges_file: str, *, add_prefix_space: bool = False) -> Tokenizer:
    """GPT-2's byte-level BPE from ``vocab.json`` and ``merges.txt``.

    Same model, pre-tokenizer and decoder as transformers' ``GPT2Tokenizer``: ``BPE`` with no subword
    prefix/suffix, ``ByteLevel`` pre-tokenizer (GPT-2 regex, ``trim_offsets``) and ``ByteLevel`` decoder.

    Args:
        vocab_file: ``vocab.json`` (token -> id).
        merges_file: ``merges.txt`` (one merge per line, an optional ``#version`` header).
        add_prefix_space: add a space before the text, so its first word is spelled like any other.

    Returns:
        The ``tokenizers.Tokenizer``.
    """
    vocab, merges = models.BPE.read_file(vocab_file, merges_file)
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_backend(
    *,
    tokenizer_file: Optional[str] = None,
    vocab_file: Optional[str] = None,
    merges_file: Optional[str] = None,
    add_prefix_space: Optional[bool] = None,
    legacy: Optional[bool] = None,
) -> Tuple[Backend, Dict[str, Any]]:
    """Build the backend tokenizer from tokenizer files (see the module docstring for which file gives what).

    Args:
        tokenizer_file: ``tokenizer.json``, a sentencepiece ``.model`` or a ``.gguf`` file.
        vocab_file: ``vocab.json`` (with ``merges_file``) or a sentencepiece ``.model``.
        merges_file: ``merges.txt`` for ``vocab_file``.
        add_prefix_space: byte-level BPE: add a leading space (default False); sentencepiece: the "▁" dummy
            prefix (default: as the model says, ``add_dummy_prefix``).
        legacy: sentencepiece only: ``False`` leaves the dummy prefix off text that follows a special token
            (transformers' ``legacy=False``); by default every run of text is encoded as sentencepiece does.

    Returns:
        ``(tokenizer, config)``: ``config`` holds the settings the file itself states (special tokens,
        ``add_bos_token``, ``chat_template``, ``model_max_length``), to be overridden by the caller's.
    """
    path = tokenizer_file or vocab_file
    if path is None:
        raise ValueError(
            "no tokenizer file given: pass tokenizer_file= (tokenizer.json, *.model or *.gguf) or "
            "vocab_file= and merges_file= (GPT-2 style vocab.json + merges.txt)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    if tokenizer_file is not None and vocab_file is not None:
        raise ValueError(f"pass either tokenizer_file ({tokenizer_file}) or vocab_file ({vocab_file}), not both")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".gguf":
        return gguf_to_tokenizer(path)
    if ext == ".model":
        tokenizer, special = sentencepiece_to_tokenizer(path, add_prefix_space=add_prefix_space, legacy=legacy)
        return tokenizer, {k: v for k, v in special.items() if v is not None}
    if ext == ".json" and vocab_file is not None:
        if merges_file is None:
            raise ValueError(
                f"vocab_file {vocab_file} is a BPE vocabulary and needs its merges: pass merges_file= "
                "(merges.txt beside it)"
            )
        if not os.path.isfile(merges_file):
            raise FileNotFoundError(f"merges file not found: {merges_file}")
        return byte_level_bpe_tokenizer(vocab_file, merges_file, add_prefix_space=bool(add_prefix_space)), {}
    if ext == ".json":
        try:
            return Tokenizer.from_file(path), {}
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
            raise ValueError(
                f"{path} is not a tokenizers serialization (tokenizer.json) that this version of the "
                f"`tokenizers` library can read: {exc}"
            ) from None
    raise ValueError(
        f"don't know how to read tokenizer file {path}: expected tokenizer.json, a sentencepiece .model, "
        "a .gguf, or vocab_file=vocab.json with merges_file=merges.txt"
    )


def add_tokens_at_ids(tokenizer: Backend, added_tokens_decoder: Dict[Any, Any], where: str = "") -> None:
    """Register the added tokens listed in a tokenizer_config.json ``added_tokens_decoder`` at their ids.

    A token already in the vocabulary keeps its id there (it just becomes an added token, matched whole in
    text); a new token must come next in line, so the ids the file states are the ids it gets.

    Args:
        tokenizer: the backend to add to.
        added_tokens_decoder: ``{"<id>": {"content": ..., "special": ..., "lstrip": ..., ...}}``.
        where: the file the mapping came from, for error messages.
    """
    present = {index: token.content for index, token in tokenizer.get_added_tokens_decoder().items()}
    for index, spec in sorted(((int(i), s) for i, s in added_tokens_decoder.items()), key=lambda item: item[0]):
        spec = {"content": spec} if isinstance(spec, str) else dict(spec)
        content = spec.pop("content")
        if present.get(index) == content:
            continue
        token = AddedToken(
            content,
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", not spec.get("special", False)),
            special=spec.get("special", False),
        )
        existing = tokenizer.token_to_id(content)
        if existing is None and index != tokenizer.get_vocab_size(with_added_tokens=True):
            raise ValueError(
                f"{where or 'added_tokens_decoder'}: token {content!r} should have id {index}, but the next "
                f"free id is {tokenizer.get_vocab_size(with_added_tokens=True)}; the added tokens do not fit "
                "this vocabulary (was the file written for another tokenizer?)"
            )
        if existing is not None and existing != index:
            raise ValueError(
                f"{where or 'added_tokens_decoder'}: token {content!r} should have id {index}, but the "
                f"vocabulary has it at id {existing}; the file was written for another vocabulary"
            )
        tokenizer.add_tokens([token])
