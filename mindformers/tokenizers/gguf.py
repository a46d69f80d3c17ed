"""Tokenizers stored in GGUF files (llama.cpp's format), rebuilt so that they give llama.cpp's ids.

A GGUF file has no tokenizer.json: the vocabulary, merges, scores, token types and special-token ids are
metadata under ``tokenizer.ggml.*`` (spec: ggml/docs/gguf.md). ``tokenizer.ggml.model`` says which algorithm:

- ``llama``: a sentencepiece BPE vocabulary (pieces, scores, types). llama.cpp's SPM tokenizer is
  sentencepiece's BPE (merge the adjacent pair whose piece scores highest, byte fallback, "▁" for spaces, a
  space prefix per run of text), so the vocabulary is turned back into a sentencepiece ``ModelProto`` and
  encoded by the ``sentencepiece`` library, as a ``.model`` file is (:mod:`.sentencepiece`). On llama.cpp's
  Llama test vectors (tests/fixtures/llama_spm) the ids equal llama.cpp's for all 46 strings.
- ``gpt2``: byte-level BPE, rebuilt as a ``tokenizers.Tokenizer``.

For ``gpt2`` vocabularies ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer, which decides how text is
split before BPE. We rebuild the split each name stands for in llama.cpp (``llama-vocab.cpp``), so ids equal
llama.cpp's and the original tokenizer.json's:

- ``smollm`` (and ``starcoder``, ``refact``, ``command-r``, ``codeshell``, ``exaone``): llama.cpp splits every
  digit off (``\\p{N}``) and then applies the GPT-2 regex; as tokenizer.json that is
  ``Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]`` (SmolLM2's own file).
- ``gpt-2``, ``mpt``, ``olmo``, ``jais``: ``ByteLevel`` with the GPT-2 regex only.
- ``llama-bpe``/``llama3`` and ``qwen2``-style files: a ``Split`` on their regex, then byte-level mapping.

transformers 5.23 knows no ``smollm`` entry and falls back to plain ``ByteLevel``: its ids then differ from
llama.cpp's where spaces come before digits (``"  2024"``). We follow llama.cpp, which matches SmolLM2's
tokenizer.json. ``tests/fixtures/tokenizers/README.md`` has the measured disagreements.

The metadata comes from :func:`mindformers.checkpoint.gguf.read_gguf_metadata`.
"""

from typing import Any, Dict, Optional, Tuple, Union

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ..checkpoint.gguf import read_gguf_metadata
from ..utils import logger
from .sentencepiece import BPE, CONTROL, NORMAL, USER_DEFINED, SentencePieceTokenizer, model_proto_from_vocab

_GPT2_FAMILY = ("gpt-2", "mpt", "olmo", "jais")
_DIGITS_FAMILY = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_REGEX_FAMILY = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE vocabularies are written in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _byte_level_pre_tokenizer(pre: Optional[str]):
    if pre in _DIGITS_FAMILY:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _REGEX_FAMILY:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_REGEX_FAMILY[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre not in _GPT2_FAMILY:
        known = sorted(_GPT2_FAMILY + _DIGITS_FAMILY + tuple(_REGEX_FAMILY))
        logger.warning(
            "GGUF pre-tokenizer %r is not one this loader knows (%s); using GPT-2's byte-level split, so ids "
            "may differ from llama.cpp's around digits and whitespace",
            pre,
            ", ".join(known),
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def _byte_level_tokenizer(meta: Dict[str, Any]) -> Tokenizer:
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    alphabet_map = _bytes_to_unicode()
    alphabet = set(alphabet_map.values())

    def spell(token: str) -> str:
        # A token written outside the byte alphabet (a raw "\n" in some converters) is re-spelled in it.
        return token if set(token) <= alphabet else "".join(alphabet_map[b] for b in token.encode("utf-8"))

    vocab = {spell(token): index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|>) are special added tokens; user-defined ones are added but not special.
    # A "control" token spelled outside the byte alphabet is a converter mislabel: adding it would grow
    # the vocabulary past the model's embedding size, so it is skipped (transformers does the same).
    added = [
        AddedToken(token, special=kind == CONTROL, normalized=False)
        for token, kind in zip(tokens, types)
        if (kind == CONTROL and set(token) <= alphabet) or kind == USER_DEFINED
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def _sentencepiece_tokenizer(meta: Dict[str, Any], path: str) -> SentencePieceTokenizer:
    """llama.cpp's "llama" vocabulary as a sentencepiece model.

    llama.cpp reads a missing score as 0 and a missing type as normal, and ignores merges for this model;
    so do we. Its ``add_space_prefix`` and ``remove_extra_whitespaces`` are sentencepiece's normalizer flags.
    """
    tokens = meta["tokenizer.ggml.tokens"]
    special_ids = {
        name: meta[f"tokenizer.ggml.{key}_token_id"]
        for name, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
        if meta.get(f"tokenizer.ggml.{key}_token_id") is not None
    }
    proto = model_proto_from_vocab(
        tokens,
        meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens),
        meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens),
        model_type=BPE,
        special_ids=special_ids,
        add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
        remove_extra_whitespaces=bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False)),
    )
    return SentencePieceTokenizer(proto.SerializeToString(), where=f"the sentencepiece vocabulary of {path}")


def gguf_to_tokenizer(path: str) -> Tuple[Union[Tokenizer, SentencePieceTokenizer], Dict[str, Any]]:
    """Build the tokenizer a GGUF file describes.

    Args:
        path: the ``.gguf`` file.

    Returns:
        ``(tokenizer, config)``: the backend (a :class:`~.sentencepiece.SentencePieceTokenizer` for "llama"
        vocabularies, a ``tokenizers.Tokenizer`` for "gpt2" ones) and tokenizer settings from the metadata
        (``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``, ``add_bos_token``, ``add_eos_token``,
        ``chat_template``, ``model_max_length``), only those present.
    """
    meta = read_gguf_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path} has no tokenizer (no 'tokenizer.ggml.tokens' in its metadata)")
    if kind == "gpt2":
        tokenizer = _byte_level_tokenizer(meta)
    elif kind == "llama":
        tokenizer = _sentencepiece_tokenizer(meta, path)
    else:
        raise ValueError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' (byte-level BPE) and "
            "'llama' (sentencepiece BPE). Use the checkpoint's tokenizer.json instead."
        )

    tokens = meta["tokenizer.ggml.tokens"]
    config: Dict[str, Any] = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        if index is not None and 0 <= index < len(tokens):
            config[name] = tokenizer.id_to_token(index)
    # llama.cpp adds BOS to a sentencepiece vocabulary whose file does not say otherwise.
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    config["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    architecture = meta.get("general.architecture")
    if f"{architecture}.context_length" in meta:
        config["model_max_length"] = int(meta[f"{architecture}.context_length"])
    return tokenizer, config
