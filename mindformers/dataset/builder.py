"""``build_dataset``: from a file or a list of records to a :class:`TokenizedDataset`.

Choices (the tests pin each one):

- ``.txt`` files: documents are blocks separated by blank lines (see :mod:`.readers`).
- Plain text is packed by default: documents, each followed by EOS (and preceded by BOS when the tokenizer
  adds one), are concatenated into one stream cut into rows of ``seq_length`` tokens; the last, shorter row
  is kept (the batcher pads it, labels -100 on the padding) unless it is a single token, which has no next
  token to predict. ``labels == input_ids``. With ``packing=False`` each document is one row (truncated).
- ``packing=True`` for Alpaca/chat records concatenates whole examples (each truncated to ``seq_length``
  first) into rows of at most ``seq_length`` tokens, in order, keeping their label masks. Attention is not
  reset at example boundaries (no per-document mask): later examples in a row see earlier ones.
- Records longer than ``seq_length`` keep their first ``seq_length`` tokens; one warning gives the count.
  A supervised example whose answer lies entirely past ``seq_length`` has no label left and is dropped
  (counted in the same warning): it would only add a row without any loss.
- Padding uses the tokenizer's pad id, or its EOS id when it has no pad token.
"""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..utils import logger
from . import formats
from .formats import IGNORE_INDEX, Example
from .readers import Record, Source, read_records
from .tokenized import TASKS, TokenizedDataset

LabelNames = Union[Sequence[str], Dict[Any, str], None]


def build_dataset(
    source: Source,
    tokenizer,
    task: str = "text_generation",
    seq_length: int = 512,
    data_format: Optional[str] = None,
    packing: Optional[bool] = None,
    label_names: LabelNames = None,
) -> TokenizedDataset:
    """Read, check and tokenize a dataset.

    Args:
        source: a ``.json`` (array of records), ``.jsonl`` (one record per line) or ``.txt`` (plain text,
            blank-line-separated documents) file, or a list of dicts.
        tokenizer: a :class:`~mindformers.tokenizers.PreTrainedTokenizer`, or a name/path for
            ``AutoTokenizer.from_pretrained``.
        task: ``"text_generation"`` (causal LM: ``input_ids`` + ``labels``) or ``"text_classification"``
            (``{"text", "label"}`` records).
        seq_length: the longest row, in tokens (longer records are truncated; packed rows have this length).
        data_format: one of ``"alpaca"``, ``"chat"``, ``"sharegpt"``, ``"text"``, ``"classification"``; None
            detects it from the first record's keys (and logs which one it picked).
        packing: pack examples into rows of ``seq_length`` (see the module docstring); None means on for
            plain text, off otherwise.
        label_names: classification: the class names, as a list (index = class id) or ``{id: name}``; then a
            record's label may be a name. Without it labels must be ints.

    Returns:
        The :class:`TokenizedDataset`.

    Raises:
        ValueError: a malformed record (the message names the file and 1-based line, what was expected and
            what was found), an empty source, unknown options, or a chat dataset with a tokenizer that has
            no chat template.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; build_dataset supports {list(TASKS)}")
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 2:
        raise ValueError(f"seq_length must be an int >= 2, found {seq_length!r}")
    if data_format is not None and data_format not in formats.FORMATS:
        raise ValueError(
            f"unknown data_format {data_format!r}; expected one of {list(formats.FORMATS)} or None (detect it)"
        )
    if label_names is not None and task != "text_classification":
        raise ValueError("label_names is only used with task='text_classification'; remove it or change the task")
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..auto import AutoTokenizer  # imported here: reading data must not load the model registry

        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))

    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the given list of records"
    records = read_records(source)
    if data_format is None:
        data_format = formats.detect_format(records[0], task)
        keys = sorted(records[0].data)
        logger.info("%s: detected data format %r from the first record's keys %s", name, data_format, keys)
    if (data_format == "classification") != (task == "text_classification"):
        raise ValueError(
            f"data_format={data_format!r} does not fit task={task!r}: 'classification' records go with "
            "task='text_classification', every other format with task='text_generation'"
        )
    if packing is None:
        packing = data_format == "text"
    if packing and data_format == "classification":
        raise ValueError("packing=True does not apply to classification (one label per row); use packing=False")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError(
            f"the tokenizer has neither a pad nor an EOS token, so batches cannot be padded; set "
            f"tokenizer.pad_token (found special tokens {tokenizer.special_tokens_map})"
        )
    common = dict(pad_token_id=pad_id, task=task, data_format=data_format, seq_length=seq_length)

    if data_format == "classification":
        names, label_ids = _label_names(label_names)
        fields = [formats.classification_fields(r, label_ids, len(names) if names else None) for r in records]
        rows = formats.encode_with_special_tokens(tokenizer, [text for text, _ in fields])
        truncated = sum(len(row) > seq_length for row in rows)
        _warn_truncated(name, truncated, len(rows), seq_length, 0)
        return TokenizedDataset(
            [row[:seq_length] for row in rows], [label for _, label in fields],
            label_names=names, num_truncated=truncated, **common,
        )

    if data_format == "text":
        documents = formats.encode_documents(tokenizer, [formats.text_field(r) for r in records], name)
        if packing:
            rows = _pack_stream(documents, seq_length)
            logger.info("%s: packed %d documents (%d tokens) into %d rows of up to %d tokens",
                        name, len(documents), sum(map(len, documents)), len(rows), seq_length)
            return TokenizedDataset(rows, rows, **common)
        truncated = sum(len(doc) > seq_length for doc in documents)
        _warn_truncated(name, truncated, len(documents), seq_length, 0)
        rows = [doc[:seq_length] for doc in documents]
        return TokenizedDataset(rows, rows, num_truncated=truncated, **common)

    examples = _supervised_examples(records, tokenizer, data_format, name)
    truncated = sum(len(ids) > seq_length for ids, _ in examples)
    examples = [(ids[:seq_length], labels[:seq_length]) for ids, labels in examples]
    kept = [ex for ex in examples if any(label != IGNORE_INDEX for label in ex[1])]
    _warn_truncated(name, truncated, len(examples), seq_length, len(examples) - len(kept))
    if not kept:
        raise ValueError(
            f"{name}: no example has any answer token within seq_length={seq_length}; use a larger seq_length"
        )
    if packing:
        kept = _pack_examples(kept, seq_length)
    return TokenizedDataset([ids for ids, _ in kept], [labels for _, labels in kept], num_truncated=truncated, **common)


def _supervised_examples(records: List[Record], tokenizer, data_format: str, name: str) -> List[Example]:
    """``(input_ids, labels)`` of Alpaca, chat or ShareGPT records."""
    if data_format == "alpaca":
        fields = [formats.alpaca_fields(r) for r in records]
        if not formats.has_chat_template(tokenizer):
            return formats.encode_alpaca_prompts(tokenizer, fields, name)
        conversations = [(r, formats.alpaca_messages(*f)) for r, f in zip(records, fields)]
    else:
        conversations = [(r, formats.chat_messages(r, data_format)) for r in records]
    return formats.encode_chats(tokenizer, conversations)


def _pack_stream(documents: List[List[int]], seq_length: int) -> List[List[int]]:
    """Concatenate documents and cut the stream into rows of ``seq_length`` (the last one may be shorter)."""
    stream = [token for doc in documents for token in doc]
    rows = [stream[i:i + seq_length] for i in range(0, len(stream), seq_length)]
    if len(rows) > 1 and len(rows[-1]) < 2:  # a lone last token predicts nothing
        rows.pop()
    return rows


def _pack_examples(examples: List[Example], seq_length: int) -> List[Example]:
    """Greedily put whole examples, in order, into rows of at most ``seq_length`` tokens."""
    packed: List[Example] = []
    ids: List[int] = []
    labels: List[int] = []
    for example_ids, example_labels in examples:
        if ids and len(ids) + len(example_ids) > seq_length:
            packed.append((ids, labels))
            ids, labels = [], []
        ids = ids + list(example_ids)
        labels = labels + list(example_labels)
    if ids:
        packed.append((ids, labels))
    return packed


def _label_names(label_names: LabelNames) -> Tuple[Optional[List[str]], Optional[Dict[str, int]]]:
    """``(names indexed by id, name -> id)`` from a list or an ``{id: name}`` dict."""
    if label_names is None:
        return None, None
    if isinstance(label_names, dict):
        try:
            by_id = {int(k): v for k, v in label_names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"label_names as a dict maps class ids to names ({{0: 'neg', 1: 'pos'}}); "
                             f"found keys {list(label_names)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"label_names ids must be 0..{len(by_id) - 1}, found {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(label_names, (list, tuple)):
        names = list(label_names)
    else:
        raise ValueError(
            f"label_names must be a list of names or an {{id: name}} dict, found {type(label_names).__name__}"
        )
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"label_names must be distinct, non-empty strings; found {names}")
    return names, {n: i for i, n in enumerate(names)}


def _warn_truncated(name: str, truncated: int, total: int, seq_length: int, dropped: int) -> None:
    if truncated:
        extra = f"; {dropped} of them had no answer token left and were dropped" if dropped else ""
        logger.warning(
            "%s: %d of %d records were longer than seq_length=%d tokens and were truncated%s",
            name, truncated, total, seq_length, extra,
        )
