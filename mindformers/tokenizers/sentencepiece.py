"""SentencePiece ``.model`` files turned into a ``tokenizers.Tokenizer`` that gives Hugging Face's ids.

A ``.model`` file is a serialized ``ModelProto`` (sentencepiece/src/sentencepiece_model.proto), read with the
``sentencepiece_model_pb2`` schema that the ``sentencepiece`` package ships.

The conversion follows transformers 5.x ``LlamaTokenizer`` (what ``AutoTokenizer.from_pretrained`` builds from
a folder holding a Llama/Mistral ``tokenizer.model``):

- model: ``BPE(vocab=piece->id, merges=generate_merges(vocab), fuse_unk=True, byte_fallback=True)``, no
  ``unk_token`` (with byte fallback every character has a spelling);
- no normalizer; pre-tokenizer ``Metaspace("▁", prepend_scheme, split=False)``;
- decoder ``Replace("▁", " ") -> ByteFallback -> Fuse -> Strip(left=1)``;
- control and unknown pieces (``<unk>``, ``<s>``, ``</s>``) become special added tokens, user-defined pieces
  plain added tokens.

Where this differs from raw ``sentencepiece`` (``SentencePieceProcessor.encode``), we follow Hugging Face.
On the test corpus (tests/fixtures/tokenizers) they disagree on 22 of 383 texts, all of these kinds:

- runs of spaces before a word: transformers ranks the recovered merges by piece id, not score. Mistral's
  whitespace pieces ``"▁▁"`` (id 259), ``"▁▁▁▁"`` have low ids but the lowest score (-1e9), so transformers
  merges them first: ``["▁▁", "We"]`` where sentencepiece gives ``["▁", "▁We"]`` (also indented code). A GGUF
  sentencepiece vocabulary without merges is ranked by score (as transformers' and llama.cpp's GGUF readers
  do), which agrees with sentencepiece here;
- text that already starts with a space gets no extra dummy prefix (``Metaspace`` only prepends "▁" when
  the text does not start with one): ``" hello"`` is ``["▁hell", "o"]``, sentencepiece ``["▁", "▁hell", "o"]``;
  decoding then drops that leading space (the decoder strips one);
- special-token strings typed in the text (``"<s>"``) are matched as the special token; sentencepiece
  spells them out as ordinary characters.

``prepend_scheme="first"`` (transformers' default ``legacy=False``) puts the dummy prefix before the start of
the text only, not after each special token; ``legacy=True`` gives ``"always"``: every piece of text between
special tokens gets one. sentencepiece's normalizer spec (``add_dummy_prefix``, ``remove_extra_whitespaces``,
charsmap) is not applied: Llama/Mistral models have the identity normalizer and no whitespace folding.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# SentencePiece.Type in sentencepiece_model.proto (GGUF's token_type uses the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2


@dataclasses.dataclass
class SentencePieceModel:
    """The parts of a sentencepiece ``ModelProto`` that the conversion uses."""

    pieces: List[str]
    scores: List[float]
    types: List[int]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True

    def piece(self, index: int) -> Optional[str]:
        """The piece at ``index``, or None for a negative (disabled) id such as ``pad_id=-1``."""
        return self.pieces[index] if 0 <= index < len(self.pieces) else None


def read_sentencepiece_model(path: str) -> SentencePieceModel:
    """Read a sentencepiece ``.model`` file with the protobuf schema that ships with ``sentencepiece``.

    Args:
        path: the ``.model`` file.

    Returns:
        A :class:`SentencePieceModel` with the pieces, scores, types and the trainer/normalizer fields used
        by :func:`sentencepiece_to_tokenizer`.
    """
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(
            f"{path} is not a sentencepiece model (could not parse it as a ModelProto: {exc}). "
            "Expected the tokenizer.model file of a Llama/Mistral-style checkpoint."
        ) from None
    if not proto.pieces:
        raise ValueError(f"{path} holds no sentencepiece pieces; expected a sentencepiece tokenizer.model file")
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    return SentencePieceModel(
        pieces=[p.piece for p in proto.pieces],
        scores=[p.score for p in proto.pieces],
        types=[p.type for p in proto.pieces],
        model_type=trainer.model_type,
        byte_fallback=trainer.byte_fallback,
        unk_id=trainer.unk_id,
        bos_id=trainer.bos_id,
        eos_id=trainer.eos_id,
        pad_id=trainer.pad_id,
        add_dummy_prefix=normalizer.add_dummy_prefix,
        remove_extra_whitespaces=normalizer.remove_extra_whitespaces,
    )


def generate_merges(vocab: Dict[str, int], scores: Optional[Dict[str, float]] = None) -> List[Tuple[str, str]]:
    """Recover BPE merges from a vocabulary, the way transformers' ``generate_merges`` does.

    Every split of a piece into two pieces that are both in the vocabulary is a merge. Merges are ranked by
    the id of the merged piece (or by its score, best first, when ``scores`` is given), then by the lengths
    of the two halves; splits of one piece are ordered by the ids of their halves. A sentencepiece BPE model
    lists pieces in merge order, so this reproduces it.

    Args:
        vocab: piece -> id.
        scores: optional piece -> score (GGUF sentencepiece vocabularies without merges use this).

    Returns:
        Merges as ``(left, right)`` pairs, highest priority first.
    """
    reverse = scores is not None
    rank = dict(scores) if reverse else vocab
    merges = []
    for merged, piece_rank in rank.items():
        local = [
            (merged[:i], merged[i:], piece_rank)
            for i in range(1, len(merged))
            if merged[:i] in vocab and merged[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=reverse)
    return [(left, right) for left, right, _ in merges]


def _prepend_scheme(add_prefix_space: bool, legacy: bool) -> str:
    # transformers' _get_prepend_scheme: "always" is sentencepiece's own behaviour around special tokens.
    if not add_prefix_space:
        return "never"
    return "always" if legacy else "first"


def sentencepiece_bpe_tokenizer(
    pieces: Sequence[str],
    types: Sequence[int],
    *,
    merges: Optional[Sequence[Tuple[str, str]]] = None,
    scores: Optional[Sequence[float]] = None,
    add_prefix_space: bool = True,
    legacy: bool = False,
) -> Tokenizer:
    """Build the Llama-style BPE ``tokenizers.Tokenizer`` for a sentencepiece vocabulary.

    Args:
        pieces: the pieces, in id order.
        types: sentencepiece piece types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
        merges: BPE merges if the source lists them (GGUF may); otherwise recovered with :func:`generate_merges`.
        scores: piece scores, used to rank recovered merges when given (GGUF); a ``.model`` uses id order.
        add_prefix_space: put the "▁" dummy prefix before the text (sentencepiece's ``add_dummy_prefix``).
        legacy: ``True`` adds the prefix after every special token too (transformers' ``legacy=True``).

    Returns:
        A ``tokenizers.Tokenizer`` with the special/user-defined pieces registered as added tokens.
    """
    vocab = {piece: index for index, piece in enumerate(pieces)}
    if merges is None:
        merges = generate_merges(vocab, dict(zip(pieces, scores)) if scores is not None else None)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=_prepend_scheme(add_prefix_space, legacy), split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))  # drop the dummy prefix again
    tokenizer.decoder = decoders.Sequence(steps)
    added = [
        AddedToken(piece, special=kind in (UNKNOWN, CONTROL), normalized=False)
        for piece, kind in zip(pieces, types)
        if kind in (UNKNOWN, CONTROL, USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def sentencepiece_to_tokenizer(
    path: str, *, add_prefix_space: bool = True, legacy: bool = False
) -> Tuple[Tokenizer, Dict[str, Optional[str]]]:
    """Convert a sentencepiece BPE ``.model`` file (Llama, Mistral) to a ``tokenizers.Tokenizer``.

    Args:
        path: the ``tokenizer.model`` file.
        add_prefix_space, legacy: see :func:`sentencepiece_bpe_tokenizer`.

    Returns:
        ``(tokenizer, special_tokens)`` where ``special_tokens`` maps ``bos_token``/``eos_token``/``unk_token``/
        ``pad_token`` to the pieces the trainer spec names (None when the model has no such id).
    """
    model = read_sentencepiece_model(path)
    if model.model_type != BPE:
        kind = {UNIGRAM: "Unigram", 3: "Word", 4: "Char"}.get(model.model_type, str(model.model_type))
        raise ValueError(
            f"{path} is a sentencepiece {kind} model; only BPE models (Llama, Mistral) can be converted. "
            "Use the checkpoint's tokenizer.json instead."
        )
    tokenizer = sentencepiece_bpe_tokenizer(model.pieces, model.types, add_prefix_space=add_prefix_space, legacy=legacy)
    special = {
        "bos_token": model.piece(model.bos_id),
        "eos_token": model.piece(model.eos_id),
        "unk_token": model.piece(model.unk_id),
        "pad_token": model.piece(model.pad_id),
    }
    return tokenizer, special
