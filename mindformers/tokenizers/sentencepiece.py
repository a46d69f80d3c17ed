"""SentencePiece models (``.model`` files, GGUF "llama" vocabularies), tokenized by the ``sentencepiece`` library.

A ``.model`` file is a serialized ``ModelProto`` (sentencepiece/src/sentencepiece_model.proto). Its ids and
text are sentencepiece's own: ``SentencePieceProcessor.encode`` and ``decode`` do the work, so every model
type (BPE as in Llama and Mistral, Unigram as in T5), normalizer, user-defined symbol and byte fallback
behaves as in sentencepiece, in llama.cpp and in Meta's and Mistral's reference code.

Why not convert the model to a ``tokenizers`` BPE, as transformers 5 does: its ``Metaspace`` pre-tokenizer
adds no dummy prefix to a text that already starts with a space, and merges recovered from the vocabulary
are ranked by piece id where sentencepiece ranks by score. ``" Hello world"`` then gives ``[15043, 3186]``
where sentencepiece and llama.cpp give ``[29871, 15043, 3186]``; 15 of llama.cpp's 46 Llama test strings
differ (tests/fixtures/llama_spm). Through the library itself all 46 are equal.

What a tokenizer adds on top of sentencepiece, as Hugging Face's tokenizers and llama.cpp do:

- special tokens (control and unknown pieces, tokens added later) written in the text are matched whole;
  each run of text between them is encoded by sentencepiece on its own, so each run gets the dummy prefix
  "▁" (llama.cpp and transformers' ``legacy=True``; ``legacy=False`` leaves it off after a special token).
  User-defined pieces are left to sentencepiece, which matches them itself;
- BOS/EOS, truncation and padding: a ``tokenizers`` post-processor, truncation and padding applied to the ids,
  so they behave exactly as for a tokenizer.json;
- ``decode`` hands each run of sentencepiece ids to ``SentencePieceProcessor.decode`` and writes special
  tokens as their text. sentencepiece itself never shows control pieces; with ``skip_special_tokens=True``
  neither do we, and the text of a sentencepiece id sequence is then exactly sentencepiece's.

:class:`SentencePieceTokenizer` offers the part of the ``tokenizers.Tokenizer`` API that
:class:`~mindformers.tokenizers.PreTrainedTokenizer` and the dataset code use (``encode``/``encode_batch``
with ``ids``, ``tokens`` and character ``offsets``, ``decode``, the vocabulary and added tokens, the
post-processor, truncation and padding), so they need not know which backend they hold.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from tokenizers import AddedToken, Tokenizer, models

# SentencePiece.Type in sentencepiece_model.proto (GGUF's token_type uses the same numbers).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2

Offsets = List[Tuple[int, int]]


def _model_pb2():
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def read_sentencepiece_model(path: str):
    """Read a sentencepiece ``.model`` file into its ``ModelProto`` (the schema ``sentencepiece`` ships).

    Args:
        path: the ``.model`` file.

    Returns:
        The ``sentencepiece_model_pb2.ModelProto``: ``pieces`` (``piece``, ``score``, ``type``),
        ``trainer_spec`` (``model_type``, ``byte_fallback``, ``unk_id``, ...) and ``normalizer_spec``
        (``add_dummy_prefix``, ``remove_extra_whitespaces``, ...).
    """
    from google.protobuf.message import DecodeError

    proto = _model_pb2().ModelProto()
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
    return proto


def model_proto_from_vocab(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    model_type: int = BPE,
    special_ids: Dict[str, int],
    add_dummy_prefix: bool = True,
    remove_extra_whitespaces: bool = False,
):
    """A ``ModelProto`` for a vocabulary stored elsewhere (a GGUF file's ``tokenizer.ggml.*`` metadata).

    Encoding reads only the pieces, scores and types, the model type, ``byte_fallback`` and the normalizer
    settings; the rest of the trainer spec is for training. Byte fallback is on when the vocabulary has
    byte pieces (``<0x00>`` ... ``<0xFF>``); the normalizer is the identity (no NFKC), as in llama.cpp.

    Args:
        pieces, scores, types: one entry per id.
        model_type: ``BPE`` (llama.cpp's "llama" vocabularies) or ``UNIGRAM``.
        special_ids: ``{"unk": id, "bos": id, "eos": id, "pad": id}`` (-1 or absent: none).
        add_dummy_prefix: put "▁" before the text (llama.cpp's ``add_space_prefix``).
        remove_extra_whitespaces: fold runs of whitespace and strip the ends.

    Returns:
        The ``ModelProto``.
    """
    pb2 = _model_pb2()
    proto = pb2.ModelProto()
    for piece, score, kind in zip(pieces, scores, types):
        proto.pieces.add(piece=piece, score=float(score), type=int(kind))
    trainer = proto.trainer_spec
    trainer.model_type = model_type
    trainer.vocab_size = len(pieces)
    trainer.byte_fallback = BYTE in set(types)
    trainer.unk_id = special_ids.get("unk", 0)
    trainer.bos_id = special_ids.get("bos", -1)
    trainer.eos_id = special_ids.get("eos", -1)
    trainer.pad_id = special_ids.get("pad", -1)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = add_dummy_prefix
    normalizer.remove_extra_whitespaces = remove_extra_whitespaces
    normalizer.escape_whitespaces = True
    return proto


def _load_processor(model: bytes, where: str, add_dummy_prefix: Optional[bool] = None):
    """A ``SentencePieceProcessor`` for a serialized ``ModelProto``, optionally with ``add_dummy_prefix`` set.

    The flag is set by appending a ``ModelProto`` that holds only it: protobuf merges concatenated messages,
    a later scalar field winning (protobuf encoding spec, "Last One Wins"). This avoids parsing the model in
    Python, which is slow with the pure-Python protobuf that MindSpore selects.
    """
    import sentencepiece

    if add_dummy_prefix is not None:
        override = _model_pb2().ModelProto()
        override.normalizer_spec.add_dummy_prefix = add_dummy_prefix
        model = model + override.SerializeToString()
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model)
    except (RuntimeError, OSError) as exc:  # sentencepiece reports a bad model as RuntimeError("INTERNAL: ...")
        detail = str(exc).strip()
        if "ParseFromArray" in detail:
            detail = "not a serialized ModelProto"
        raise ValueError(
            f"sentencepiece cannot load the model from {where}: {detail}. Expected a sentencepiece tokenizer.model "
            "(such as a Llama or Mistral checkpoint's)"
        ) from None
    return processor


# How one text was split: (start, end, processor) per segment, processor None for an added token (one id).
Segments = List[Tuple[int, int, Any]]
# What the post-processor puts around one sequence: (head ids, tail ids, head type ids, type id of the
# sequence, tail type ids).
Template = Tuple[List[int], List[int], List[int], int, List[int]]


def _text_offsets(text: str, segments: Segments) -> Offsets:
    """Character offsets of the ids of one text, from how it was split (sentencepiece's offset mapping)."""
    offsets: Offsets = []
    for start, end, processor in segments:
        if processor is None:
            offsets.append((start, end))
            continue
        run = text[start:end]
        encoded = processor.encode(run, return_type="offset_mapping")
        spans = encoded["offsets"]
        if not run.isascii():
            # sentencepiece gives the last byte-fallback piece of a (multi-byte) character the character's span
            # and the others an empty one at its start; like tokenizers' ByteFallback, give each the character.
            for k in range(len(spans) - 2, -1, -1):
                if spans[k][0] == spans[k][1] == spans[k + 1][0] and processor.is_byte(encoded["ids"][k]):
                    spans[k] = spans[k + 1]
        offsets.extend(spans if start == 0 else [(start + begin, start + stop) for begin, stop in spans])
    return offsets


class _AroundOneSequence:
    """The fields of a ``tokenizers.Encoding`` for one sequence with the post-processor's tokens around it,
    built without the id pipeline (equal to what it gives when nothing is truncated or padded)."""

    __slots__ = ("ids", "type_ids", "attention_mask", "special_tokens_mask", "sequence_ids", "word_ids")

    def __init__(self, ids: List[int], template: Template):
        head, tail, head_types, body_type, tail_types = template
        n, outside = len(ids), [None] * len(head)
        self.ids = head + ids + tail
        self.type_ids = head_types + [body_type] * n + tail_types
        self.attention_mask = [1] * len(self.ids)
        self.special_tokens_mask = [1] * len(head) + [0] * n + [1] * len(tail)
        self.sequence_ids = outside + [0] * n + [None] * len(tail)
        self.word_ids = outside + list(range(n)) + [None] * len(tail)


class SentencePieceEncoding:
    """One encoded sequence (or pair), with the fields of ``tokenizers.Encoding`` that callers read.

    ``offsets`` are character positions in the input text as sentencepiece reports them (the dummy-prefix "▁"
    has an empty span; ``(0, 0)`` for added BOS/EOS and padding), except that each byte-fallback piece of a
    character gets the character's span, as in ``tokenizers``. ``tokens`` and ``offsets`` are worked out when
    first asked for.
    """

    def __init__(self, fields, sources: Sequence[Tuple[str, Segments]], vocab: Tokenizer):
        # `fields`: a tokenizers.Encoding from the id pipeline (one "word" per id, so word_ids index the ids
        # of a sequence) or an _AroundOneSequence.
        self._fields = fields
        self._sources = sources
        self._vocab = vocab
        self._tokens: Optional[List[str]] = None
        self._offsets: Optional[Offsets] = None

    @property
    def ids(self) -> List[int]:
        return self._fields.ids

    @property
    def type_ids(self) -> List[int]:
        return self._fields.type_ids

    @property
    def attention_mask(self) -> List[int]:
        return self._fields.attention_mask

    @property
    def special_tokens_mask(self) -> List[int]:
        return self._fields.special_tokens_mask

    @property
    def sequence_ids(self) -> List[Optional[int]]:
        return self._fields.sequence_ids

    @property
    def tokens(self) -> List[str]:
        if self._tokens is None:
            self._tokens = [self._vocab.id_to_token(i) for i in self.ids]
        return self._tokens

    @property
    def offsets(self) -> Offsets:
        if self._offsets is None:
            per_sequence = [_text_offsets(text, segments) for text, segments in self._sources]
            self._offsets = [
                (0, 0) if word is None or seq is None else per_sequence[seq][word]
                for seq, word in zip(self._fields.sequence_ids, self._fields.word_ids)
            ]
        return self._offsets

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        more = "..." if len(self.ids) > 8 else ""
        return f"SentencePieceEncoding(num_tokens={len(self.ids)}, ids={self.ids[:8]}{more})"


class SentencePieceTokenizer:
    """A sentencepiece model behind the ``tokenizers.Tokenizer`` API (see the module docstring).

    Three parts: ``SentencePieceProcessor`` splits runs of text into pieces; a ``tokenizers.Tokenizer``
    holding the vocabulary and the added tokens finds the special tokens in a text (its model is a
    ``WordLevel`` that maps a whole run to one token, so only the added-token matching matters); a second
    one, whose vocabulary is the ids themselves, applies the post-processor, truncation and padding. When
    there is nothing to truncate or pad, the post-processor's tokens are put around the ids directly (the
    same result; the pipeline costs about 2 microseconds a token).

    Args:
        model: the serialized ``ModelProto`` (a ``.model`` file's bytes).
        add_prefix_space: override the model's ``add_dummy_prefix`` (None: as the model says).
        legacy: ``False`` leaves the dummy prefix off a run of text that follows a special token
            (transformers' ``legacy=False``); None or True encode every run as sentencepiece does.
        where: the source, for error messages.
    """

    def __init__(
        self,
        model: bytes,
        *,
        add_prefix_space: Optional[bool] = None,
        legacy: Optional[bool] = None,
        where: str = "a ModelProto",
    ):
        if not model:
            raise ValueError(f"{where} is empty; expected a sentencepiece tokenizer.model")
        self.add_prefix_space = add_prefix_space
        self.legacy = legacy
        self._model = bytes(model)
        self._processor = _load_processor(self._model, where, add_prefix_space)
        self._processor_after_special = (
            _load_processor(self._model, where, False) if legacy is False else self._processor
        )
        processor = self._processor
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        vocab = {piece: index for index, piece in enumerate(pieces)}
        self._vocab = Tokenizer(models.WordLevel(vocab, unk_token=pieces[processor.unk_id()]))
        self._vocab.add_special_tokens(
            [
                AddedToken(piece, special=True, normalized=False)
                for i, piece in enumerate(pieces)
                if processor.is_control(i) or processor.is_unknown(i)
            ]
        )
        self._pipeline = self._id_pipeline(len(pieces))
        self._template_cache: Optional[Template] = None
        self._added: Optional[Dict[int, AddedToken]] = None

    @staticmethod
    def _id_pipeline(size: int) -> Tokenizer:
        # Words are ids written as decimal strings, each its own token: the pipeline only adds BOS/EOS,
        # truncates and pads, with the Rust library's exact semantics.
        return Tokenizer(models.WordLevel({str(i): i for i in range(size)}, unk_token="0"))

    # ------------------------------------------------------------------ the sentencepiece model

    @property
    def processor(self):
        """The ``sentencepiece.SentencePieceProcessor`` that encodes runs of text."""
        return self._processor

    def serialized_model_proto(self) -> bytes:
        """The model as read (before ``add_prefix_space`` was applied): what ``tokenizer.model`` holds."""
        return self._model

    # ------------------------------------------------------------------ encoding

    def encode(
        self, sequence: str, pair: Optional[str] = None, add_special_tokens: bool = True
    ) -> SentencePieceEncoding:
        """Encode one text (or a pair); see :meth:`encode_batch`."""
        return self.encode_batch([sequence if pair is None else (sequence, pair)], add_special_tokens)[0]

    def encode_batch(
        self, inputs: Sequence[Union[str, Tuple[str, str]]], add_special_tokens: bool = True
    ) -> List[SentencePieceEncoding]:
        """Encode texts (or ``(text, pair)`` tuples) with the current post-processor, truncation and padding.

        Args:
            inputs: strings or pairs of strings.
            add_special_tokens: apply the post-processor (BOS/EOS).

        Returns:
            One :class:`SentencePieceEncoding` per input.
        """
        sources, sequences = [], []
        for item in inputs:
            texts = item if isinstance(item, tuple) else (item,)
            split = [self._segment(text) for text in texts]
            sources.append([(text, segments) for text, (_, segments) in zip(texts, split)])
            sequences.append([ids for ids, _ in split])
        pipeline = self._current_pipeline()
        if pipeline.truncation is None and pipeline.padding is None and all(len(seqs) == 1 for seqs in sequences):
            # Nothing to cut or pad: put the post-processor's tokens around each sequence here. The id pipeline
            # would give the same, at about 2 microseconds per token.
            template = self._template() if add_special_tokens else ([], [], [], 0, [])
            fields = [_AroundOneSequence(seqs[0], template) for seqs in sequences]
        else:
            words = [
                tuple([str(i) for i in ids] for ids in seqs) if len(seqs) == 2 else [str(i) for i in seqs[0]]
                for seqs in sequences
            ]
            fields = pipeline.encode_batch(words, is_pretokenized=True, add_special_tokens=add_special_tokens)
        return [SentencePieceEncoding(f, src, self._vocab) for f, src in zip(fields, sources)]

    def _segment(self, text: str) -> Tuple[List[int], Segments]:
        """Ids of one text and how it was split: added tokens matched whole, sentencepiece on each run between."""
        if not isinstance(text, str):
            raise TypeError(f"sentencepiece encodes strings, found {type(text).__name__}: {text!r}")
        added = self._added_tokens()
        split = self._vocab.encode(text, add_special_tokens=False)
        ids: List[int] = []
        segments: Segments = []
        after_special = False
        for index, (start, end) in zip(split.ids, split.offsets):
            # An added token, or a whole run of text (which the WordLevel model maps to some id, often unk's:
            # the run cannot hold an added token's text, or that would have been matched).
            if index in added and added[index].content in text[start:end]:
                ids.append(index)
                segments.append((start, end, None))
                after_special = True
                continue
            processor = self._processor_after_special if after_special else self._processor
            ids.extend(processor.encode(text[start:end]))
            segments.append((start, end, processor))
            after_special = False
        return ids, segments

    def _template(self) -> Template:
        """What the post-processor puts around one sequence, read off the id pipeline once."""
        if self._template_cache is None:
            probe = self._pipeline.encode(["0"], is_pretokenized=True, add_special_tokens=True)
            k = probe.word_ids.index(0)
            ids, types = probe.ids, probe.type_ids
            self._template_cache = (ids[:k], ids[k + 1 :], types[:k], types[k], types[k + 1 :])
        return self._template_cache

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ids: runs of sentencepiece ids through ``SentencePieceProcessor.decode``, added tokens as their
        text (special ones left out with ``skip_special_tokens``)."""
        added = self._added_tokens()
        parts: List[str] = []
        run: List[int] = []
        for index in ids:
            token = added.get(index)
            if token is None:
                run.append(index)
                continue
            if token.special and skip_special_tokens:
                continue  # the runs on both sides join, as sentencepiece would decode them
            if run:
                parts.append(self._processor.decode(run))
                run = []
            parts.append(token.content)
        if run:
            parts.append(self._processor.decode(run))
        return "".join(parts)

    def decode_batch(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> List[str]:
        """:meth:`decode` for each sequence."""
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    # ------------------------------------------------------------------ vocabulary and added tokens

    def token_to_id(self, token: str) -> Optional[int]:
        return self._vocab.token_to_id(token)

    def id_to_token(self, index: int) -> Optional[str]:
        return self._vocab.id_to_token(index)

    def get_vocab(self, with_added_tokens: bool = True) -> Dict[str, int]:
        return self._vocab.get_vocab(with_added_tokens=with_added_tokens)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self._vocab.get_vocab_size(with_added_tokens=with_added_tokens)

    def get_added_tokens_decoder(self) -> Dict[int, AddedToken]:
        return self._vocab.get_added_tokens_decoder()

    def add_tokens(self, tokens: Sequence[Union[str, AddedToken]]) -> int:
        self._added = None
        return self._vocab.add_tokens(tokens)

    def add_special_tokens(self, tokens: Sequence[Union[str, AddedToken]]) -> int:
        self._added = None
        return self._vocab.add_special_tokens(tokens)

    def _added_tokens(self) -> Dict[int, AddedToken]:
        if self._added is None:
            self._added = self._vocab.get_added_tokens_decoder()
        return self._added

    # ------------------------------------------------------------------ post-processor, truncation, padding

    def _current_pipeline(self) -> Tokenizer:
        size = self._vocab.get_vocab_size(with_added_tokens=True)
        if self._pipeline.get_vocab_size() < size:  # tokens were added: rebuild, keeping the settings
            old, self._pipeline = self._pipeline, self._id_pipeline(size)
            self._pipeline.post_processor = old.post_processor
            if old.truncation:
                self._pipeline.enable_truncation(**old.truncation)
            if old.padding:
                self._pipeline.enable_padding(**old.padding)
        return self._pipeline

    @property
    def post_processor(self):
        return self._pipeline.post_processor

    @post_processor.setter
    def post_processor(self, value) -> None:
        self._pipeline.post_processor = value
        self._template_cache = None

    def num_special_tokens_to_add(self, is_pair: bool) -> int:
        return self._pipeline.num_special_tokens_to_add(is_pair)

    @property
    def truncation(self) -> Optional[Dict[str, Any]]:
        return self._pipeline.truncation

    @property
    def padding(self) -> Optional[Dict[str, Any]]:
        return self._pipeline.padding

    def enable_truncation(self, max_length: int, **kwargs: Any) -> None:
        self._pipeline.enable_truncation(max_length, **kwargs)

    def no_truncation(self) -> None:
        self._pipeline.no_truncation()

    def enable_padding(self, **kwargs: Any) -> None:
        self._pipeline.enable_padding(**kwargs)

    def no_padding(self) -> None:
        self._pipeline.no_padding()

    # ------------------------------------------------------------------ copies

    def __copy__(self) -> "SentencePieceTokenizer":
        # The processors are read-only and shared; the vocabulary (added tokens) and the pipeline (settings)
        # are copied, so adding tokens to a copy leaves the original as it was.
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._vocab = Tokenizer.from_str(self._vocab.to_str())
        new._pipeline = Tokenizer.from_str(self._pipeline.to_str())
        new._added = None
        return new

    def __deepcopy__(self, memo: Dict[int, Any]) -> "SentencePieceTokenizer":
        return self.__copy__()

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(pieces={self._processor.get_piece_size()}, added={len(self._added_tokens())})"


def sentencepiece_to_tokenizer(
    path: str, *, add_prefix_space: Optional[bool] = None, legacy: Optional[bool] = None
) -> Tuple[SentencePieceTokenizer, Dict[str, Optional[str]]]:
    """The backend for a sentencepiece ``.model`` file, and the special tokens its trainer spec names.

    Args:
        path: the ``tokenizer.model`` file.
        add_prefix_space, legacy: see :class:`SentencePieceTokenizer`.

    Returns:
        ``(tokenizer, special_tokens)`` where ``special_tokens`` maps ``bos_token``/``eos_token``/``unk_token``/
        ``pad_token`` to the pieces the model names (None when it has no such id).
    """
    with open(path, "rb") as f:
        model = f.read()
    tokenizer = SentencePieceTokenizer(model, add_prefix_space=add_prefix_space, legacy=legacy, where=path)
    processor = tokenizer.processor
    special = {
        name: processor.id_to_piece(index) if 0 <= index < processor.get_piece_size() else None
        for name, index in (
            ("bos_token", processor.bos_id()),
            ("eos_token", processor.eos_id()),
            ("unk_token", processor.unk_id()),
            ("pad_token", processor.pad_id()),
        )
    }
    return tokenizer, special
